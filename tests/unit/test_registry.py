import json
import multiprocessing
import socket
import sqlite3
import time
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from dagster import DagsterEventType, asset, materialize

from assets.logic.serving import check_features
from resources.registry import ModelRegistry, RegistryUnavailable


def test_an_unreachable_registry_is_a_clear_error_not_a_missing_champion(tmp_path):
    registry = ModelRegistry(home=str(tmp_path), tracking_uri="http://127.0.0.1:9")  # nothing listens on port 9
    with pytest.raises(RegistryUnavailable, match=r"alias 'champion' of 'm'.* at http://127.0.0.1:9 did not answer"):
        registry.version_for_alias("m", "champion")


def test_a_model_trained_on_other_features_is_refused():
    frame = pd.DataFrame(np.random.default_rng(0).uniform(size=(200, 2)), columns=["a", "b"])
    booster = lgb.train({"objective": "binary", "verbosity": -1}, lgb.Dataset(frame, (frame["a"] > 0.5).astype(int)), 3)
    check_features(booster, ["a", "b"], "m v1")
    with pytest.raises(ValueError, match=r"m v1 expects other features .*'c'"):
        check_features(booster, ["a", "b", "c"], "m v1")


def _open_registry_behind(barrier, home: str, results) -> None:
    barrier.wait()
    try:
        ModelRegistry(home=home).version_for_alias("m", "champion")
        results.put("ok")
    except Exception as exc:  # reported to the test, which shows it
        results.put(f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")


def test_two_processes_opening_a_fresh_home_at_once_both_find_the_registry(tmp_path):
    # Both start MLflow's first-time migration of <home>/mlflow.db together (behind a barrier); without the lock
    # every try failed one of them with an alembic error. Three fresh homes, so a lucky order cannot hide it.
    context = multiprocessing.get_context("fork")
    for attempt in range(3):
        home = tmp_path / f"home{attempt}"
        barrier, results = context.Barrier(2), context.Queue()
        workers = [context.Process(target=_open_registry_behind, args=(barrier, str(home), results)) for _ in range(2)]
        for worker in workers:
            worker.start()
        outcomes = [results.get(timeout=120) for _ in workers]
        for worker in workers:
            worker.join(timeout=30)
        assert outcomes == ["ok", "ok"], (attempt, outcomes)
        assert (home / "mlflow.lock").exists()


def test_a_homes_store_is_created_ahead_and_a_store_that_cannot_be_is_one_clear_error(tmp_path):
    from workflows.cli import StageFailed, _create_mlflow_store

    registry = ModelRegistry(home=str(tmp_path / "home"))
    _create_mlflow_store(registry)  # what shopseq run does beside its daily stage
    tables = sqlite3.connect(tmp_path / "home" / "mlflow.db").execute("SELECT name FROM sqlite_master").fetchall()
    assert {("experiments",), ("registered_models",), ("model_versions",)} <= set(tables)
    (tmp_path / "a_file").write_text("not a folder")
    blocked = ModelRegistry(home=str(tmp_path / "home"), tracking_uri=f"sqlite:///{tmp_path}/a_file/mlflow.db")
    with pytest.raises(StageFailed, match=r"cannot create the MLflow store sqlite:///.*a_file/mlflow\.db"):
        _create_mlflow_store(blocked)


def test_a_rule_pickled_by_an_earlier_release_still_loads(tmp_path):
    """Rule versions were cloudpickled ``RuleModel`` objects holding their policy before they were logged from code."""
    import mlflow.pyfunc

    from assets.logic.policies import RulePolicy
    from resources.rule_model import RuleModel

    policy = RulePolicy("a_rule", ("a", "b"), (("a", 1.0),), intercept=0.25, slope=0.5)
    pickled = RuleModel()
    pickled.policy = policy  # what the earlier RuleModel(policy) held
    mlflow.pyfunc.save_model(tmp_path / "old", python_model=pickled, pip_requirements=["pandas"])
    assert list((tmp_path / "old").glob("*.pkl"))
    loaded = mlflow.pyfunc.load_model(str(tmp_path / "old"))
    assert loaded.unwrap_python_model().policy == policy
    frame = pd.DataFrame({"a": [1.0, 3.0], "b": [0.0, 0.0]})
    np.testing.assert_array_equal(loaded.predict(frame), policy.predict(frame))


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_unreachable_tracking_server_fails_a_step_within_seconds_naming_the_uri(tmp_path):
    # the registry as a run builds it (default retries): a server that is down fails the step in seconds
    @asset
    def reads_champion(registry: ModelRegistry):
        registry.version_for_alias("m", "champion")

    uri = f"http://127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    result = materialize(
        [reads_champion],
        resources={"registry": ModelRegistry(home=str(tmp_path), tracking_uri=uri)},
        raise_on_error=False,
    )
    elapsed = time.monotonic() - started
    failure = next(e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE)
    message = failure.event_specific_data.error.cause.message
    assert not result.success
    assert f"the MLflow registry at {uri} did not answer" in message and "gave up after 3 attempts" in message, message
    assert 1.0 + 2.0 <= elapsed < 15, elapsed  # two retries, after 1 s and 2 s


def test_versions_are_logged_and_loaded_through_the_registrys_own_uri_leaving_mlflow_and_the_environment_alone(
    tmp_path, monkeypatch
):
    """A learned and a rule version logged, registered and loaded back on a home's store: MLflow's process-wide
    tracking URI is never set, the environment is unchanged, and nothing is written outside the home."""
    import os

    import mlflow
    from matplotlib.figure import Figure

    from assets.logic.policies import RulePolicy

    monkeypatch.chdir(tmp_path)  # MLflow's default store would be ./mlflow.db here
    environment, global_uri = dict(os.environ), mlflow.get_tracking_uri()
    frame = pd.DataFrame(np.random.default_rng(1).uniform(size=(200, 2)), columns=["a", "b"])
    booster = lgb.train({"objective": "binary", "verbosity": -1}, lgb.Dataset(frame, (frame["a"] > 0.5).astype(int)), 3)
    figure = Figure()
    figure.subplots().plot([0, 1])
    registry = ModelRegistry(home=str(tmp_path / "home"))
    learned = registry.log_lightgbm(
        "m",
        booster,
        frame,
        {"rounds": 3},
        {"auc": 0.5},
        {"holdout_day": "2025-03-05"},
        tables={"holdout_evaluation": frame.head()},
        datasets={"training": (frame, "train split")},
        figures={"importance": figure},
    )
    # a calibrated two-term rule: its definition is the model's config, read back exactly (no pickle); numpy's
    # floats, as a fit leaves them, are written as the floats they are
    policy = RulePolicy(
        "a_rule",
        ("a", "b"),
        (("b", np.float64(0.1)), ("a", 1.0)),
        intercept=np.float64(-0.1 / 3),
        slope=2 / 3,
        logistic=True,
    )
    rule = registry.rule_version("m", policy, frame, {"auc": 0.4}, {})
    assert (learned.version, rule.version) == (1, 2)
    assert registry.version_for_alias("m", "challenger") == learned
    assert np.array_equal(registry.load_policy(learned).predict(frame), booster.predict(frame))
    assert registry.load_policy(rule) == policy
    assert np.array_equal(registry.load_policy(rule).predict(frame), policy.predict(frame))
    rule_files = Path(registry.client().get_model_version_download_uri("m", "2").removeprefix("file://"))
    assert not list(rule_files.rglob("*.pkl")) and (rule_files / "MLmodel").exists()
    run = registry.client().get_run(learned.run_id)
    assert run.info.status == "FINISHED" and run.data.metrics == {"auc": 0.5} and run.data.params == {"rounds": "3"}
    assert [i.dataset.name for i in run.inputs.dataset_inputs] == ["train split"]
    assert {a.path for a in registry.client().list_artifacts(learned.run_id)} == {
        "holdout_evaluation.json",
        "importance.png",
    }
    # the table as ``log_table`` writes it, listed where MLflow's UI looks for tables
    assert json.loads(run.data.tags["mlflow.loggedArtifacts"]) == [{"path": "holdout_evaluation.json", "type": "table"}]
    logged = registry.client().download_artifacts(learned.run_id, "holdout_evaluation.json", str(tmp_path / "home"))
    pd.testing.assert_frame_equal(pd.read_json(logged, orient="split"), frame.head())
    assert registry.client().get_model_version("m", "2").tags == {
        "policy": "a_rule",
        "policy_kind": "rule",
        "policy_sha256": policy.sha256(),
    }
    assert registry.client().get_model_version("m", "1").tags == {"policy": "lightgbm", "policy_kind": "learned"}
    assert mlflow.get_tracking_uri() == global_uri and dict(os.environ) == environment
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]


def test_a_dataset_input_counts_every_row_and_its_digest_reads_every_value():
    """The schema comes from the first rows (``SCHEMA_ROWS``), but the row count and the digest from all of them."""
    import json

    from resources.registry import SCHEMA_ROWS, _dataset_entity

    frame = pd.DataFrame({"a": np.arange(SCHEMA_ROWS * 3, dtype=float), "day": pd.Timestamp("2025-03-01")})
    entity = _dataset_entity(frame, "train split")
    assert json.loads(entity.profile)["num_rows"] == len(frame) and entity.name == "train split"
    assert [c["name"] for c in json.loads(entity.schema)["mlflow_colspec"]] == ["a", "day"]
    changed = frame.copy()
    changed.loc[len(frame) - 1, "a"] = -1.0  # a row past the schema's sample
    assert _dataset_entity(changed, "train split").digest != entity.digest
    assert _dataset_entity(frame.copy(), "train split").digest == entity.digest
