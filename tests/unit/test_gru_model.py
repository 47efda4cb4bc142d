import datetime as dt
import importlib.util

import numpy as np
import pandas as pd
import pytest

from assets.logic import gru_model as gm
from assets.logic import session_model as sm
from tests.unit.test_session_model import _random_log, _warehouse, _window

# The tests that train the model need the "deep" extra, which CI installs.
needs_jax = pytest.mark.skipif(
    importlib.util.find_spec("jax") is None, reason='the recurrent session model needs: pip install -e ".[deep]"'
)

PARAMS = gm.GRUParams(embedding=16, hidden=16, epochs=4, patience=2, batch_size=64, learning_rate=0.01)


def _days(conn, days=(1, 2)):
    return [gm.session_sequences(conn, *_window(day)) for day in days]


@pytest.fixture(scope="module")
def trained():
    """The ring log's warehouse and a GRU trained on its days 1 and 2 (the validation day), shared: each training
    compiles its steps again."""
    conn = _warehouse(_random_log())
    return conn, gm.train_gru(_days(conn), PARAMS)


@needs_jax
def test_sequences_hold_the_session_protocols_positions():
    conn = _warehouse(_random_log())
    start, end = _window(3)
    sequences = gm.session_sequences(conn, start, end)
    targets = sm.session_targets(conn, start, end)
    with_next = sequences[sequences["session_key"] == sequences["session_key"].shift(-1)]
    assert sorted(with_next["prefix_id"]) == sorted(targets["prefix_id"])
    following = sequences["item_id"].shift(-1)[with_next.index]
    assert dict(zip(with_next["prefix_id"], following)) == dict(zip(targets["prefix_id"], targets["item_id"]))


@needs_jax
def test_a_prefix_score_reads_no_event_after_the_prefix(trained):
    events = _random_log()
    conn, model = trained
    start, end = _window(3)
    before = model.prefix_scores(gm.session_sequences(conn, start, end))
    session = next(
        s for s in sorted({e[0] for e in events if e[0].startswith("3-")}) if sum(e[0] == s for e in events) >= 4
    )
    own = [e for e in events if e[0] == session]
    later = {id(e) for e in own[2:]}
    # the session's third event on is another item, an hour later; new sessions start after the cut-off
    altered = [
        (s, "i29" if id(e) in later else i, t + dt.timedelta(hours=1) if id(e) in later else t)
        for e in events
        for s, i, t in [e]
    ]
    altered += [(f"late-{n}", f"i{n % 30:02d}", start + dt.timedelta(hours=5, minutes=n)) for n in range(20)]
    after = model.prefix_scores(gm.session_sequences(_warehouse(altered), start, end))
    rows_before = dict(zip(before[0], before[1]))
    rows_after = dict(zip(after[0], after[1]))
    for position in (1, 2):
        prefix = f"s{session}/{session}/{position}"
        np.testing.assert_array_equal(rows_before[prefix], rows_after[prefix])
    # every other prefix that existed before is unchanged too; the altered session's later prefixes did change
    for prefix, row in rows_before.items():
        if not prefix.startswith(f"s{session}/"):
            np.testing.assert_array_equal(row, rows_after[prefix])
    assert not np.array_equal(rows_before[f"s{session}/{session}/3"], rows_after[f"s{session}/{session}/3"])


@needs_jax
def test_two_trainings_on_the_same_data_give_the_same_scores(trained):
    conn, first = trained
    second = gm.train_gru(_days(conn), PARAMS)
    assert first.epochs == second.epochs and first.curve == second.curve
    for name, weights in first.weights.items():
        np.testing.assert_array_equal(weights, second.weights[name])
    sequences = gm.session_sequences(conn, *_window(3))
    np.testing.assert_array_equal(first.prefix_scores(sequences)[1], second.prefix_scores(sequences)[1])
    other = gm.train_gru(_days(conn), gm.GRUParams(**{**PARAMS.__dict__, "seed": 7}))
    assert not np.array_equal(first.prefix_scores(sequences)[1], other.prefix_scores(sequences)[1])


@needs_jax
def test_early_stopping_picks_the_epochs_on_the_validation_day_then_refits_every_day(trained):
    conn, model = trained
    fit = [p for p in model.curve if p["phase"] == "fit"]
    refit = [p for p in model.curve if p["phase"] == "refit"]
    best = max(fit, key=lambda p: (p["valid_mrr@20"], -p["epoch"]))
    assert model.epochs == best["epoch"] and len(refit) == model.epochs
    assert all(np.isfinite(p["train_loss"]) for p in model.curve)
    # the refit's vocabulary holds the validation day's items
    assert set(_days(conn, (2,))[0]["item_id"]) <= set(model.items)


@needs_jax
def test_the_gru_learns_the_ring_and_ranks_candidates_through_the_session_protocol():
    """On sessions that mostly step one or two items on along a ring, the GRU beats popularity on the hold-out,
    measured by ``evaluate_sessions`` on the reranker's candidate rows."""
    conn = _warehouse(_random_log(sessions_per_day=120))
    model = gm.train_gru(_days(conn, (1, 2)), gm.GRUParams(**{**PARAMS.__dict__, "epochs": 8}))
    start, end = _window(3)
    holdout = sm.session_frame(conn, start, end, positives_only=False)
    targets = sm.session_targets(conn, start, end)
    policy = gm.GRUPrefixPolicy(model, gm.session_sequences(conn, start, end), holdout)
    evaluation = sm.evaluate_sessions(holdout, policy, targets).set_index(["method", "metric"])["value"]
    assert evaluation["model", "mrr@20"] > 1.5 * evaluation["popularity", "mrr@20"]
    assert evaluation["model", "hr@10"] > evaluation["popularity", "hr@10"]


@needs_jax
def test_no_session_to_learn_from_is_one_clear_error():
    conn = _warehouse(_random_log())
    empty = gm.session_sequences(conn, dt.datetime(2030, 1, 1), dt.datetime(2030, 1, 2))
    with pytest.raises(ValueError, match="no session of two or more known events"):
        gm.train_gru([empty], PARAMS)


@needs_jax
def test_the_catalogue_spec_trains_measures_and_records_the_gru_as_an_mlflow_pyfunc(tmp_path):
    """The GRU's training set, training, evaluation (the reranker's positions, beside the session rules) and its
    MLflow version: a pyfunc that scores sessions as the model does, with its training curve and parameters."""
    import mlflow

    from assets.logic import catalogue
    from assets.logic.training import LightGBMParams
    from assets.logic.warehouse_sql import replace_table
    from resources import ModelRegistry
    from resources.gru_pyfunc import log_gru, score_sessions

    conn = _warehouse(_random_log())
    cutoffs = [d.date() for d in (_window(0)[0], _window(1)[0], _window(2)[0])]
    spec = catalogue.CATALOGUE[catalogue.GRU_SESSION_MODEL]
    frame = catalogue.TRAINING_SETS[catalogue.GRU_TRAINING_SET].build(conn, cutoffs[:2], cutoffs[2], "UTC")
    replace_table(conn, catalogue.GRU_TRAINING_SET, frame)
    suite, per_day = catalogue.TRAINING_SETS[catalogue.GRU_TRAINING_SET].point_in_time(conn, frame)
    assert suite == "stage_reconciliation" and (per_day["expected"] == per_day["actual"]).all()
    assert spec.blocker(conn, "UTC") is None
    train = catalogue.read_training_set(conn, catalogue.GRU_TRAINING_SET, "train")
    model = spec.train(train, LightGBMParams(seed=3))
    evaluation, day = spec.evaluate(conn, model, spec.rules(conn), "UTC")
    assert day == cutoffs[2]
    assert set(evaluation["method"]) == {"model", *spec.baselines}
    # the same positions as the session model's evaluation of that day
    start, end = _window(3)
    assert evaluation["users"].iloc[0] == len(sm.session_targets(conn, start, end))

    registry = ModelRegistry(home=str(tmp_path))
    events = frame[frame["split"] == "holdout"].rename(columns={"session_key": "session_id"})
    events = events[["session_id", "item_id", "event_time"]]
    ref = log_gru(registry, spec.name, model, events.head(10), {"hr_at_20": 0.5}, {"holdout_day": str(day)})
    # loaded as a user of the registry loads it: through its files, asked of this home's client
    uri = registry.resolved_tracking_uri()
    files = registry.client().get_model_version_download_uri(ref.name, str(ref.version))
    loaded = mlflow.pyfunc.load_model(
        mlflow.artifacts.download_artifacts(
            files, dst_path=str(tmp_path / "served"), tracking_uri=uri, registry_uri=uri
        )
    )
    # logged from code with the model's files, nothing pickled; the model read back is the one trained
    assert not list((tmp_path / "served").rglob("*.pkl"))
    assert loaded.unwrap_python_model().policy.sha256() == model.sha256()
    served = loaded.predict(events)
    expected = score_sessions(model, events)
    np.testing.assert_array_equal(served["item_id"].to_numpy(), expected["item_id"].to_numpy())
    np.testing.assert_allclose(served["score"].to_numpy(), expected["score"].to_numpy())
    assert served.groupby("session_id").size().max() == 20
    run = registry.client().get_run(ref.run_id)
    assert run.data.params["chosen_epochs"] == str(model.epochs)
    history = registry.client().get_metric_history(ref.run_id, "refit_train_loss")
    assert [m.step for m in history] == list(range(1, model.epochs + 1))
    assert registry.run_tags(ref)["model_sha256"] == model.sha256()
    assert registry.version_for_alias(spec.name, "challenger").version == ref.version


def test_the_gru_saved_as_files_loads_equal_and_a_version_pickled_by_an_earlier_release_still_loads(tmp_path):
    """``GRUSessionModel.save`` / ``load`` give back the same settings, vocabulary, weights and curve; GRU versions
    were cloudpickled ``GRUSessionPyfunc`` objects holding their model before they were logged from code."""
    import mlflow.pyfunc

    from resources.gru_pyfunc import GRUSessionPyfunc

    rng = np.random.default_rng(5)
    weights = {"embed": rng.normal(size=(4, 3)).astype(np.float32), "out_b": rng.normal(size=4).astype(np.float32)}
    curve = [{"phase": "fit", "epoch": 1, "train_loss": 1.5, "valid_mrr@20": float("nan")}]
    items = np.array(["a", "b", "c"], dtype=object)
    model = gm.GRUSessionModel(gm.GRUParams(embedding=3, hidden=3), items, weights, 2, curve)
    model.save(tmp_path / "files")
    read = gm.GRUSessionModel.load(tmp_path / "files")
    assert read.sha256() == model.sha256() and read.params == model.params and read.epochs == 2
    assert list(read.items) == ["a", "b", "c"] and read.items.dtype == object
    assert all(read.weights[n].dtype == np.float32 for n in weights)
    assert read.curve[0]["train_loss"] == 1.5 and np.isnan(read.curve[0]["valid_mrr@20"])

    mlflow.pyfunc.save_model(tmp_path / "old", python_model=GRUSessionPyfunc(model), pip_requirements=["numpy"])
    assert list((tmp_path / "old").glob("*.pkl"))
    assert mlflow.pyfunc.load_model(str(tmp_path / "old")).unwrap_python_model().policy.sha256() == model.sha256()


def test_without_the_deep_extra_the_gru_is_skipped_with_the_install_command(monkeypatch):
    from assets.logic import catalogue

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "jax" else real(name, *a))
    assert catalogue.CATALOGUE[catalogue.GRU_SESSION_MODEL].blocker(_warehouse(_random_log()), "UTC") == (
        'the recurrent session model needs JAX: pip install -e ".[deep]"'
    )


def test_tied_embeddings_need_a_state_as_wide_as_the_embedding():
    with pytest.raises(ValueError, match="tied embeddings need hidden == embedding, got hidden 16 and embedding 8"):
        gm.GRUParams(embedding=8, hidden=16)


def test_the_gru_is_measured_on_the_candidates_the_session_training_set_made_once():
    """``_session_candidates`` reads the session reranker's hold-out rows instead of making them again: the same
    rows ``session_frame`` makes for that window."""
    from assets.logic import catalogue
    from assets.logic.warehouse_sql import replace_table

    conn = _warehouse(_random_log())
    cutoffs = [d.date() for d in (_window(0)[0], _window(1)[0], _window(2)[0])]
    frame = catalogue.TRAINING_SETS["session_training_set"].build(conn, cutoffs[:2], cutoffs[2], "UTC")
    replace_table(conn, "session_training_set", frame)
    start, end = _window(3)
    made = sm.session_frame(conn, start, end, positives_only=False)
    conn.execute("UPDATE session_training_set SET relevance = -1 WHERE split = 'holdout'")  # tells read from made
    read = catalogue._session_candidates(conn, start, end)
    assert (read["relevance"] == -1).all()
    pd.testing.assert_frame_equal(
        read.drop(columns="relevance")[made.columns.drop("relevance")],
        made.drop(columns="relevance"),
        check_dtype=False,
    )
    other = catalogue._session_candidates(conn, *_window(2))  # another window: made
    assert (other["relevance"] >= 0).all() and len(other)


@pytest.mark.parametrize("k", [1, 5, 40])
def test_top_columns_lists_what_a_stable_argsort_lists_first_ties_included(k):
    rng = np.random.default_rng(4)
    scores = np.round(rng.standard_normal((300, 40)), 1).astype(np.float32)  # many ties, some at each threshold
    scores[7] = 0.5  # a row of one value
    expected = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(gm.top_columns(scores, k), expected)
    assert gm.top_columns(scores[:0], k).shape == (0, k)
