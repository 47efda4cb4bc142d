"""In-process materialisation of the asset graph on a temporary home."""

import contextlib
import datetime as dt
import hashlib
import re
import shutil
from pathlib import Path
from urllib.parse import urlparse

import duckdb
import numpy as np
import pandas as pd
import pytest
from dagster import AssetKey, AssetSelection, DagsterInstance, materialize

from assets import ALL_ASSETS
from bench.run import DAILY_STAGES
from resources import LandingSource, Warehouse
from resources.transient import step_context
from tests.conftest import SMALL_SHOP, shop_days
from workflows.definitions import build_resources

pytestmark = pytest.mark.e2e

DAYS = shop_days(6)
RANGE = {
    "dagster/asset_partition_range_start": DAYS[0].isoformat(),
    "dagster/asset_partition_range_end": DAYS[-1].isoformat(),
}


def _materialize(resources, instance, groups, partition_key=None, tags=None):
    return materialize(
        ALL_ASSETS,
        selection=AssetSelection.groups(*groups),
        resources=resources,
        instance=instance,
        partition_key=partition_key,
        tags=tags or {},
        raise_on_error=False,
    )


def _count(home, sql):
    with duckdb.connect(f"{home}/warehouse.duckdb", read_only=True) as conn:
        return conn.execute(sql).fetchone()[0]


# The warehouse tables each asset's step read, seen by the statements it ran ({asset key: {table}}).
READS: dict[str, set[str]] = {}
_READ = re.compile(r"\b(?:FROM|JOIN)\s+([a-z_]+)\b", re.IGNORECASE)


class _TracedConnection:
    """A warehouse connection that records, per running asset, the tables its SQL reads."""

    def __init__(self, conn):
        self._conn = conn

    def _record(self, sql):
        context = step_context()
        if context is not None and isinstance(sql, str):
            for key in context.assets_def.keys:
                READS.setdefault(key.to_user_string(), set()).update(m.lower() for m in _READ.findall(sql))

    def execute(self, sql, *args, **kwargs):
        self._record(sql)
        return self._conn.execute(sql, *args, **kwargs)

    def sql(self, sql, *args, **kwargs):
        self._record(sql)
        return self._conn.sql(sql, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._conn, name)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    LandingSource(home=str(home)).save_shop(SMALL_SHOP)
    resources = build_resources(str(home))
    instance = DagsterInstance.ephemeral()
    connect = Warehouse.connect

    @contextlib.contextmanager
    def traced(self, *args, **kwargs):
        with connect(self, *args, **kwargs) as conn:
            yield _TracedConnection(conn)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Warehouse, "connect", traced)
        daily = _materialize(resources, instance, ("ingestion", "cleaning", "sequences", "features"), tags=RANGE)
        training = _materialize(resources, instance, ("training",))
        serving = _materialize(resources, instance, ("serving", "evaluation"), partition_key=DAYS[-1].isoformat())
    return home, resources, instance, daily, training, serving


def test_every_table_an_asset_reads_is_a_declared_dependency(built):
    """The graph in the UI is the true data flow: each asset table an asset's SQL reads is the asset itself or one
    of its declared upstream assets (seen on every step of the fixture's daily, training and publishing runs)."""
    from workflows.definitions import defs

    graph = defs.resolve_asset_graph()
    tables = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert {"cleaned_events", "ranking_candidates", "next_item_ranker", "recommendations"} <= set(READS)
    undeclared = {}
    for asset, read in READS.items():
        upstream = {key.to_user_string() for key in graph.get(AssetKey(asset)).parent_keys}
        missing = (read & tables) - upstream - {asset}
        if missing:
            undeclared[asset] = sorted(missing)
    assert undeclared == {}, "\n".join(f"{a}: {m}" for a, m in undeclared.items())


def test_daily_range_materialises_every_stage_with_passing_checks(built):
    home, _, _, daily, _, _ = built
    assert daily.success
    checks = daily.get_asset_check_evaluations()
    assert len(checks) >= 9 and all(c.passed for c in checks)
    for table in DAILY_STAGES:
        assert _count(home, f"SELECT count(*) FROM {table}") > 0, table
    days = _count(home, "SELECT count(DISTINCT CAST(event_time AS DATE)) FROM cleaned_events")
    assert days == len(DAYS)


def test_landing_rows_reconcile(built):
    home = built[0]
    landed = _count(home, f"SELECT count(*) FROM read_parquet('{home}/landing/*/events.parquet')")
    stored = _count(home, "SELECT (SELECT count(*) FROM raw_events) + (SELECT count(*) FROM raw_events_quarantine)")
    assert landed == stored
    assert _count(home, "SELECT count(DISTINCT reason) FROM raw_events_quarantine") >= 5


def run_experiment(registry, ref) -> str:
    return registry.client().get_run(ref.run_id).info.experiment_id


def test_training_registers_models_and_promotes_a_champion(built):
    home, resources, _, _, training, _ = built
    assert training.success, [e.message for e in training.all_events if e.is_failure]
    registry = resources["registry"]
    for model in ("shopseq_next_item_ranker", "shopseq_next_purchase"):
        assert registry.champion(model).version == 1
    # The cart and return models are promoted only if they beat their history rule on this small shop;
    # either way the promotion log says what happened and why.
    log = (
        duckdb.connect(f"{home}/warehouse.duckdb", read_only=True)
        .execute("SELECT model_name, decision, champion_version, reason FROM promotion_log")
        .df()
        .set_index("model_name")
    )
    for model in ("shopseq_next_cart", "shopseq_next_return"):
        has_champion = registry.version_for_alias(model, "champion") is not None
        assert (log.loc[model, "decision"] == "promoted") == has_champion, log.loc[model, "reason"]
    # The decision is written where the ML lead looks (the version's description and tags) and in the alias history.
    version = registry.client().get_model_version("shopseq_next_item_ranker", "1")
    assert version.tags["promotion_decision"] == "promoted" and version.description.startswith(
        "Promoted on the hold-out"
    )
    promoted = set(log[log["decision"] == "promoted"].index)
    assert _count(
        home, "SELECT list(model_name ORDER BY model_name) FROM alias_history WHERE from_version IS NULL"
    ) == sorted(promoted)
    # Complete runs: training data as a dataset input with its digest, the code version, figures.
    for model, figures in (
        ("shopseq_next_item_ranker", {"feature_importance.png", "metric_by_day.png"}),
        ("shopseq_next_purchase", {"feature_importance.png", "metric_by_day.png", "calibration.png"}),
    ):
        run = registry.client().get_run(registry.champion(model).run_id)
        assert run.data.tags["code_version"] and run.data.tags["dagster_run_id"]
        inputs = run.inputs.dataset_inputs
        assert len(inputs) == 1 and inputs[0].dataset.digest and inputs[0].tags[0].value == "training"
        assert figures <= {a.path for a in registry.client().list_artifacts(run.info.run_id)}
    # The asset's materialisation links its MLflow run and version; every training asset reports rows and a preview.
    ranker = registry.champion("shopseq_next_item_ranker")
    metadata = training.asset_materializations_for_node("next_item_ranker")[0].metadata
    assert metadata["mlflow_run"].value.endswith(
        f"/#/experiments/{run_experiment(registry, ranker)}/runs/{ranker.run_id}"
    )
    assert metadata["mlflow_model_version"].value.endswith("/#/models/shopseq_next_item_ranker/versions/1")
    # where the model asset's seconds went: steps that add up to them (assets.logic.profile)
    profile = metadata["profile"].value
    assert {"read", "rule", "boost", "evaluate", "bootstrap", "mlflow", "store", "other"} <= set(profile)
    assert abs(sum(profile.values()) - metadata["seconds"].value) < 0.05 and min(profile.values()) >= -0.01
    suites = {c.check_name: c for c in training.get_asset_check_evaluations()}
    for node in ("ranker_training_set", "next_action_training_set", "next_event_training_set"):
        metadata = training.asset_materializations_for_node(node)[0].metadata
        assert metadata["dagster/row_count"].value > 0 and "|" in metadata["preview"].value
        profile = metadata["profile"].value  # where its seconds went: building, storing, checking
        assert {"build", "store", "suite", "point_in_time", "other"} <= set(profile)
        assert abs(sum(profile.values()) - metadata["seconds"].value) < 0.05
        # its suite counts the row-wise expectations over every stored row in SQL, as a daily table's does
        suite = suites[f"{node}_suite"]
        assert suite.passed and suite.metadata["rows_validated"].value == metadata["dagster/row_count"].value
        assert "over every row in DuckDB" in suite.metadata["validated_by"].text
    ranker_metrics = registry.client().get_run(registry.champion("shopseq_next_item_ranker").run_id).data.metrics
    assert {"model.any.ndcg_at_20", "popularity.any.ndcg_at_20", "repeat_recent.any.recall_at_20"} <= set(
        ranker_metrics
    )
    purchase_metrics = registry.client().get_run(registry.champion("shopseq_next_purchase").run_id).data.metrics
    assert {"model.label_purchase.auc", "base_rate.label_purchase.brier"} <= set(purchase_metrics)
    evaluation = (
        duckdb.connect(f"{home}/warehouse.duckdb", read_only=True)
        .execute(
            """SELECT method, value FROM model_evaluations WHERE model_name = 'shopseq_next_item_ranker'
             AND policy_kind = 'learned' AND segment = 'all' AND target = 'any' AND metric = 'ndcg@20'"""
        )
        .df()
        .set_index("method")["value"]
    )
    assert evaluation["model"] > max(evaluation[b] for b in ("popularity", "markov", "covisitation"))
    # Each rule policy the ranker must beat is a registered version too, with the same evaluation stored once: its
    # own rows as ``model``, the numbers the learned model's evaluation gave it.
    rules = (
        duckdb.connect(f"{home}/warehouse.duckdb", read_only=True)
        .execute(
            """SELECT policy, any_value(model_version), any_value(value) FROM model_evaluations
           WHERE model_name = 'shopseq_next_item_ranker' AND policy_kind = 'rule' AND method = 'model'
             AND segment = 'all' AND target = 'any' AND metric = 'ndcg@20' GROUP BY policy ORDER BY policy"""
        )
        .fetchall()
    )
    assert [r[0] for r in rules] == ["covisitation", "popularity", "recent_covis_pop", "repeat_recent"]
    for policy, version, value in rules:
        assert value == pytest.approx(evaluation[policy], abs=1e-12)
        tags = registry.client().get_model_version("shopseq_next_item_ranker", str(version)).tags
        assert tags["policy"] == policy and tags["policy_kind"] == "rule"
        rule = registry.load_policy(registry.version("shopseq_next_item_ranker", version))
        assert rule.name == policy and rule.feature_name() == registry.load_policy(ranker).feature_name()


def test_recommendations_name_the_champion_version(built):
    home, _, _, _, _, serving = built
    assert serving.success
    rows = _count(home, "SELECT count(*) FROM recommendations")
    assert rows > 0
    assert _count(home, "SELECT count(*) FROM recommendations WHERE model_version IS NULL OR run_id IS NULL") == 0
    assert _count(home, "SELECT max(rank) FROM recommendations") == 20
    # Every row says why (from the ranker's contributions) and under which business rules.
    assert _count(home, "SELECT count(*) FROM recommendations WHERE reason IS NULL OR rules IS NULL") == 0
    assert _count(home, "SELECT count(DISTINCT rules) FROM recommendations") == 1
    assert _count(home, "SELECT count(*) FROM recommendations WHERE reason LIKE 'you %'") > 0
    assert (
        _count(
            home,
            """SELECT count(*) FROM recommendations r JOIN cleaned_events e
                           ON e.user_id = r.user_id AND e.item_id = r.item_id AND e.event_type = 'purchase'""",
        )
        == 0
    )
    assert (
        _count(
            home,
            """SELECT max(n) FROM (SELECT count(*) AS n FROM recommendations r
                           JOIN item_features i ON i.item_id = r.item_id AND i.as_of_date = r.as_of_date
                           WHERE r.source <> 'fallback' AND i.category_id IS NOT NULL
                           GROUP BY r.user_id, i.category_id)""",
        )
        <= 5
    )  # the default category cap
    active = _count(
        home,
        f"SELECT count(DISTINCT user_id) FROM cleaned_events WHERE CAST(event_time AS DATE) = DATE '{DAYS[-1]}' "
        "AND NOT is_bot",
    )
    assert _count(home, "SELECT count(DISTINCT user_id) FROM recommendations") == active
    served = _count(
        home,
        "SELECT count(*) FROM promotion_log WHERE model_name IN ('shopseq_next_purchase', "
        "'shopseq_next_cart', 'shopseq_next_return') AND decision = 'promoted'",
    )
    assert _count(home, "SELECT count(*) FROM next_action_predictions") == served * active
    assert "purchase" in _count(home, "SELECT list(DISTINCT action) FROM next_action_predictions")
    assert _count(home, "SELECT count(DISTINCT model_name) FROM next_action_predictions") == served


def test_the_evaluated_served_list_is_what_serving_writes_for_the_holdout_day(built):
    """The hold-out scores the served list (after the business rules) through the code that writes the
    recommendations: for every evaluated user of the hold-out day, the list ``evaluate_ranker`` scores as ``model``
    is the one ``recommend_day`` writes for that user and day, and the stored metric is that list's."""
    from assets.logic import training
    from assets.logic.catalogue import RANKER_MODEL, read_training_set
    from assets.logic.metrics import per_user_ranking
    from assets.logic.serving import recommend_day

    home, resources, *_ = built
    registry = resources["registry"]
    champion = registry.champion(RANKER_MODEL)
    booster = registry.load_policy(champion)
    with duckdb.connect(f"{home}/warehouse.duckdb", read_only=True) as conn:
        holdout = read_training_set(conn, "ranker_training_set", "holdout")
        day = pd.Timestamp(holdout["as_of_date"].iloc[0]).date()
        targets = training.holdout_targets(conn, day, "UTC")
        users = targets["user_id"].drop_duplicates().sort_values(ignore_index=True)
        lists = training.ranker_lists(holdout, booster, users, 20)
        written = pd.concat([b.to_pandas() for b in recommend_day(conn, booster, day, users=users)], ignore_index=True)
        stored = conn.execute(
            """SELECT value FROM model_evaluations WHERE model_name = ? AND model_version = ? AND method = 'model'
                 AND segment = 'all' AND target = 'any' AND metric = 'ndcg@20'""",
            [RANKER_MODEL, champion.version],
        ).fetchone()[0]
    key = ["user_id", "rank", "item_id"]
    served = lists["model"][key].sort_values(key, ignore_index=True)
    assert len(served) > 0 and served["user_id"].nunique() > 10
    pd.testing.assert_frame_equal(served, written[key].sort_values(key, ignore_index=True), check_dtype=False)
    # the raw ranked list is another one: the rules dropped bought items or capped a category somewhere
    assert not lists["model_raw"][key].sort_values(key, ignore_index=True).equals(served)
    per_user = per_user_ranking(written, targets[["user_id", "item_id"]].drop_duplicates(), 20)
    assert per_user["ndcg"].mean() == pytest.approx(stored, abs=1e-12)


def test_rematerialising_a_partition_replaces_it(built):
    home, resources, instance, *_ = built
    tables = [
        "raw_events",
        "raw_events_quarantine",
        "cleaned_events",
        "sessions",
        "user_features",
        "ranking_candidates",
    ]
    before = {t: _count(home, f"SELECT count(*) FROM {t}") for t in tables}
    again = _materialize(
        resources, instance, ("ingestion", "cleaning", "sequences", "features"), partition_key=DAYS[2].isoformat()
    )
    assert again.success
    assert {t: _count(home, f"SELECT count(*) FROM {t}") for t in tables} == before
    # The features of the days after it read the re-run day's events (their declared history window): stale now.
    from dagster._utils.test.data_versions import get_stale_status_resolver

    resolver = get_stale_status_resolver(instance, ALL_ASSETS)
    status = {day: resolver.get_status(AssetKey("user_features"), day.isoformat()).value for day in DAYS}
    assert status == {day: "STALE" if day > DAYS[2] else "FRESH" for day in DAYS}


def test_candidates_in_passes_over_users_are_the_rows_of_one_pass(built, tmp_path, monkeypatch):
    """The user side of the candidates runs in passes over disjoint users on big days; forced to several
    passes on the small shop it must give exactly the stored rows (built in one pass)."""
    from assets.logic import candidates

    home = built[0]
    copy = shutil.copy(f"{home}/warehouse.duckdb", tmp_path / "warehouse.duckdb")
    day = DAYS[-1]
    with duckdb.connect(str(copy)) as conn:
        one_pass = conn.execute(
            "SELECT * FROM ranking_candidates WHERE as_of_date = ? ORDER BY user_id, item_id", [day]
        ).df()
        history = conn.execute("SELECT count(*) FROM cleaned_events WHERE NOT is_bot").fetchone()[0]
        monkeypatch.setattr(candidates, "EVENTS_PER_PASS", history // 3)
        passes = []
        replace_window = candidates.replace_window
        monkeypatch.setattr(
            candidates, "replace_window", lambda conn, *a: passes.append(a[4]) or replace_window(conn, *a)
        )
        rows = candidates.build_candidates_day(conn, day)
        in_passes = conn.execute(
            "SELECT * FROM ranking_candidates WHERE as_of_date = ? ORDER BY user_id, item_id", [day]
        ).df()
        # the passes are ranges of users stored in the ranges' order (serving's batches of users rely on it): the
        # pass each stored row's user belongs to never steps back
        highs = [bound.get("high") for _, bound in passes[0]]
        assert highs[-1] is None and highs[:-1] == sorted(highs[:-1])
        stored_users = conn.execute(
            "SELECT user_id FROM ranking_candidates WHERE as_of_date = ? ORDER BY rowid", [day]
        ).fetchnumpy()["user_id"]
        pass_of_row = np.searchsorted(np.array(highs[:-1], dtype=object), stored_users, side="right")
    assert len(passes[0]) >= 3 and rows == len(one_pass) == len(in_passes) > 0
    pd.testing.assert_frame_equal(in_passes, one_pass, check_exact=True)
    assert (np.diff(pass_of_row) >= 0).all() and pass_of_row[-1] == len(highs) - 1


# Every table a model is trained or evaluated on, from the daily partitions to the training sets.
DERIVED_TABLES = (
    "cleaned_events",
    "sessions",
    "user_sequences",
    "user_features",
    "item_features",
    "ranking_candidates",
    "next_action_training_set",
    "ranker_training_set",
    "next_event_training_set",
)


def _differences(first: pd.DataFrame, second: pd.DataFrame) -> dict[str, str]:
    """Columns whose values differ between two frames of the same rows, with how many rows and by how much."""
    if len(first) != len(second):
        return {"rows": f"{len(first)} != {len(second)}"}
    found = {}
    for column in first.columns:
        a, b = first[column], second[column]
        if a.dtype.kind == "f":
            differ = ~((a.to_numpy() == b.to_numpy()) | (a.isna().to_numpy() & b.isna().to_numpy()))
            if differ.any():
                found[column] = f"{differ.sum()} rows, up to {np.nanmax(np.abs(a.to_numpy() - b.to_numpy())):.3g}"
        elif (differ := (a.astype(str) != b.astype(str))).any():
            found[column] = f"{differ.sum()} rows"
    return found


MODELS = (
    "shopseq_next_purchase",
    "shopseq_next_cart",
    "shopseq_next_return",
    "shopseq_next_item_ranker",
    "shopseq_next_event",
)


def _model_files(home) -> dict[str, list[tuple[str, str]]]:
    """Per model, in version order: the sha256 of each learned version's model file and the ``model_sha256`` its
    run logged, and the ``policy_sha256`` of each rule version."""
    registry = build_resources(str(home))["registry"]
    found = {}
    for model in MODELS:
        for ref, tags in registry.versions(model):
            if tags["policy_kind"] == "rule":
                found.setdefault(f"{model} rules", []).append(tags["policy_sha256"])
                continue
            folder = registry.client().get_model_version_download_uri(model, str(ref.version))  # a file:// URI
            path = Path(urlparse(folder).path, "model.lgb")
            found.setdefault(model, []).append(
                (hashlib.sha256(path.read_bytes()).hexdigest(), tags.get("model_sha256"))
            )
    return found


def test_the_same_landing_data_gives_the_same_tables_and_models_bit_for_bit(built, tmp_path):
    """A second home on a copy of the landing files, its warehouse run with another number of DuckDB threads (which
    adds a sum's rows in another order): every derived table is equal value for value (no tolerance) and every
    model file has the same sha256."""
    home = built[0]
    again = tmp_path / "again"
    shutil.copytree(home / "landing", again / "landing")
    resources = {**build_resources(str(again)), "warehouse": Warehouse(home=str(again), threads=4)}
    instance = DagsterInstance.ephemeral()
    assert _materialize(resources, instance, ("ingestion", "cleaning", "sequences", "features"), tags=RANGE).success
    assert _materialize(resources, instance, ("training",)).success
    differences = {}
    with (
        duckdb.connect(f"{home}/warehouse.duckdb", read_only=True) as first,
        duckdb.connect(f"{again}/warehouse.duckdb", read_only=True) as second,
    ):
        for table in DERIVED_TABLES:
            query = f"SELECT * FROM {table} ORDER BY ALL"
            if found := _differences(first.execute(query).df(), second.execute(query).df()):
                differences[table] = found
    assert differences == {}
    models, models_again = _model_files(home), _model_files(again)
    assert set(models) == set(models_again) and all(len(models[m]) == 1 for m in MODELS)
    for model in MODELS:
        [(file_hash, tag)] = models[model]
        assert file_hash == tag, f"{model}: the model_sha256 tag is not the hash of the model file"
    assert models_again == models


def test_a_second_training_on_unchanged_data_promotes_nothing(built, tmp_path):
    """The daily partitions re-materialised and the models trained again on the same data: every model gets a second
    version with the same model file as the first, none is promoted, and the decision says it is identical."""
    home = shutil.copytree(built[0], tmp_path / "home")  # MLflow keeps absolute artifact paths: the models load
    resources = build_resources(str(home))
    registry, instance = resources["registry"], DagsterInstance.ephemeral()
    champions = {model: registry.version_for_alias(model, "champion") for model in MODELS}
    assert _materialize(resources, instance, ("ingestion", "cleaning", "sequences", "features"), tags=RANGE).success
    assert _materialize(resources, instance, ("training",)).success
    with duckdb.connect(f"{home}/warehouse.duckdb", read_only=True) as conn:
        second = (
            conn.execute(
                "SELECT model_name, challenger_version, decision, reason FROM promotion_log "
                "QUALIFY row_number() OVER (PARTITION BY model_name ORDER BY decided_at DESC) = 1"
            )
            .df()
            .set_index("model_name")
        )
    files = _model_files(home)
    for model in MODELS:
        assert second.loc[model, "decision"] == "kept", second.loc[model]
        assert len(files[model]) == 2 and files[model][1] == files[model][0], f"{model}: retrained, another model file"
        rules = files.get(f"{model} rules", [])
        assert len(rules) == len(set(rules)), f"{model}: an unchanged rule was registered again"
        champion = champions[model]
        assert registry.version_for_alias(model, "champion") == champion
        if champion is not None:  # the learned copy is identical, or the champion rule is put forward again
            reason = second.loc[model, "reason"]
            assert reason.endswith(f"identical to the champion v{champion.version} (same sha256)") or reason.endswith(
                "it is already the champion"
            ), reason


def test_failing_check_stops_downstream_and_names_the_expectation(tmp_path):
    """A corrupted landing file (every row without a user) fails raw_events' suite; nothing downstream runs."""
    day = SMALL_SHOP.shop_start
    folder = tmp_path / "landing" / day.isoformat()
    folder.mkdir(parents=True)
    pd.DataFrame(
        {
            "event_time": [pd.Timestamp(day) + pd.Timedelta(minutes=i) for i in range(5)],
            "user_id": [None] * 5,
            "session_id": None,
            "event_type": "view",
            "item_id": "i1",
            "category_id": "c1",
            "price": 1.0,
            "query": None,
            "event_id": [f"e{i}" for i in range(5)],
        }
    ).to_parquet(folder / "events.parquet")
    result = _materialize(
        build_resources(str(tmp_path)),
        DagsterInstance.ephemeral(),
        ("ingestion", "cleaning"),
        partition_key=day.isoformat(),
    )
    assert not result.success
    suite = [c for c in result.get_asset_check_evaluations() if c.check_name == "raw_events_suite"][0]
    assert not suite.passed
    assert "expect_table_row_count_to_be_between" in suite.description
    materialized = {e.asset_key for e in result.get_asset_materialization_events()}
    assert AssetKey("raw_events") in materialized and AssetKey("cleaned_events") not in materialized
    assert _count(tmp_path, "SELECT count(*) FROM raw_events_quarantine WHERE reason = 'missing_user'") == 5


def test_replay_scores_later_days_with_the_models_trained_before_them(built, tmp_path):
    """Two more days land after training; replay scores them with version 1 (its data ended before them)
    and leaves the last trained-on day without rows: a model is never replayed on what it saw."""
    home, *_ = built
    later = shutil.copytree(home, tmp_path / "home")  # MLflow keeps absolute artifact paths: the models load
    resources = build_resources(str(later))
    instance = DagsterInstance.ephemeral()
    new_days = shop_days(8)[6:]
    tags = {
        "dagster/asset_partition_range_start": new_days[0].isoformat(),
        "dagster/asset_partition_range_end": new_days[-1].isoformat(),
    }
    assert _materialize(resources, instance, ("ingestion", "cleaning", "sequences", "features"), tags=tags).success
    replay = _materialize(
        resources, instance, ("evaluation",), tags={**tags, "dagster/asset_partition_range_start": DAYS[-1].isoformat()}
    )
    assert replay.success, [e.message for e in replay.all_events if e.is_failure]
    assert all(c.passed for c in replay.get_asset_check_evaluations())
    rows = (
        duckdb.connect(f"{later}/warehouse.duckdb", read_only=True)
        .execute(
            "SELECT day, model_name, model_version, holdout_day, method, value FROM model_replay "
            "WHERE segment = 'all' AND metric IN ('ndcg@20', 'auc') AND target IN ('any', 'label_purchase', "
            "'next_event_type')"
        )
        .df()
    )
    assert set(rows["day"].dt.date) == set(new_days)  # DAYS[-1] was the hold-out's label day: not replayed
    assert (rows["model_version"] == 1).all() and (rows["holdout_day"].dt.date == DAYS[-2]).all()
    assert {"shopseq_next_item_ranker", "shopseq_next_purchase", "shopseq_next_event"} <= set(rows["model_name"])
    ranker = rows[rows["model_name"] == "shopseq_next_item_ranker"]
    assert {"model", "repeat_recent", "popularity", "markov"} <= set(ranker["method"])


def test_a_version_is_replayed_only_on_days_after_its_data():
    from assets.replay import model_trained_before
    from resources.registry import ModelVersionRef

    versions = [
        (ModelVersionRef("m", 1, "r1"), {"holdout_day": "2025-03-05"}),
        (ModelVersionRef("m", 2, "r2"), {"holdout_day": "2025-03-09"}),
    ]
    assert model_trained_before(versions, dt.date(2025, 3, 6)) is None  # v1's hold-out labels are on 03-06
    assert model_trained_before(versions, dt.date(2025, 3, 7))[0].version == 1
    assert model_trained_before(versions, dt.date(2025, 3, 11))[0].version == 2


def test_a_moved_champion_alias_requests_a_re_scoring_of_the_latest_partition(built):
    import json

    from dagster import AssetMaterialization, RunRequest, SkipReason, build_sensor_context

    from workflows.sensors import champion_alias_sensor

    _, resources, instance, *_ = built
    first = build_sensor_context(instance=instance, resources={"registry": resources["registry"]})
    assert isinstance(champion_alias_sensor(first), SkipReason)  # the first look only records the champions
    champions = json.loads(first.cursor)
    assert champions["shopseq_next_item_ranker"] == 1
    same = build_sensor_context(instance=instance, cursor=first.cursor, resources={"registry": resources["registry"]})
    assert isinstance(champion_alias_sensor(same), SkipReason)
    # As if the ranker's champion had been v7 at the last look and someone moved it to v1 since.
    before = json.dumps({**champions, "shopseq_next_item_ranker": 7})
    moved = build_sensor_context(instance=instance, cursor=before, resources={"registry": resources["registry"]})
    request = champion_alias_sensor(moved)
    assert isinstance(request, RunRequest) and request.partition_key == DAYS[-1].isoformat()
    assert "shopseq_next_item_ranker 7->1" in request.tags["shopseq/reason"]
    # an engineer re-publishes an old day: the latest published day is still the one re-scored
    instance.report_runless_asset_event(AssetMaterialization("recommendations", partition=DAYS[0].isoformat()))
    again = build_sensor_context(instance=instance, cursor=before, resources={"registry": resources["registry"]})
    assert champion_alias_sensor(again).partition_key == DAYS[-1].isoformat()


def test_a_champion_evaluated_before_the_challenger_on_the_same_day_is_evaluated_again(built, tmp_path):
    """The same hold-out day's rows change when an ingest withdraws a day: promotion compares the challenger with the
    champion measured now, not with a figure stored before the challenger was evaluated (made stale here by hand)."""
    from dagster import RunConfig

    from assets.models import TrainingConfig

    home = shutil.copytree(built[0], tmp_path / "home")
    resources, ranker = build_resources(str(home)), "shopseq_next_item_ranker"
    champion = resources["registry"].champion(ranker).version
    with duckdb.connect(f"{home}/warehouse.duckdb") as conn:
        conn.execute(
            "UPDATE model_evaluations SET value = 0.99 WHERE model_name = ? AND model_version = ? AND method = 'model'",
            [ranker, champion],
        )
    result = materialize(
        [a for a in ALL_ASSETS if a.key.to_user_string() in ("next_item_ranker", "champion_promotion")],
        resources=resources,
        instance=DagsterInstance.ephemeral(),
        raise_on_error=False,
        run_config=RunConfig(ops={"next_item_ranker": TrainingConfig(num_boost_round=1, num_leaves=2)}),
    )
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    before, day = (
        duckdb.connect(f"{home}/warehouse.duckdb", read_only=True)
        .execute(
            "SELECT arg_max(champion_metric_before, decided_at), arg_max(holdout_day, decided_at) FROM promotion_log "
            "WHERE model_name = ?",
            [ranker],
        )
        .fetchone()
    )
    rescored = _count(
        home,
        f"""SELECT arg_max(value, evaluated_at) FROM model_evaluations WHERE model_name = '{ranker}'
            AND model_version = {champion} AND holdout_day = '{day}' AND method = 'model' AND segment = 'all'
            AND target = 'any' AND metric = 'ndcg@20'""",
    )
    assert before != 0.99 and before == pytest.approx(rescored) and rescored < 0.99


def test_champion_lifecycle_gates_manual_moves_rescoring_and_rollback(built, tmp_path, monkeypatch):
    """v1 is champion; a worse v2 stays challenger; a person promotes v2 and the sensor re-scores the latest day
    with it; a better v3 is promoted over v2; rollback restores v2; a move in the MLflow UI is re-scored too;
    the alias history holds every move, once."""
    import json

    from dagster import RunConfig, RunRequest, build_sensor_context

    from assets.models import TrainingConfig
    from workflows.cli import main
    from workflows.sensors import champion_alias_sensor

    home = shutil.copytree(built[0], tmp_path / "home")
    resources, instance = build_resources(str(home)), DagsterInstance.ephemeral()
    registry, ranker = resources["registry"], "shopseq_next_item_ranker"
    for variable in ("DAGSTER_HOME", "SHOPSEQ_HOME"):  # the CLI commands below set them for themselves
        monkeypatch.setenv(variable, str(tmp_path))

    def train(config: TrainingConfig):
        result = materialize(
            [a for a in ALL_ASSETS if a.key.to_user_string() in ("next_item_ranker", "champion_promotion")],
            resources=resources,
            instance=instance,
            raise_on_error=False,
            run_config=RunConfig(ops={"next_item_ranker": config}),
        )
        assert result.success, [e.message for e in result.all_events if e.is_failure]
        return _count(home, f"SELECT arg_max(decision, decided_at) FROM promotion_log WHERE model_name = '{ranker}'")

    assert train(TrainingConfig(num_boost_round=1, num_leaves=2)) == "kept"  # one stump
    stump = registry.version_for_alias(ranker, "challenger").version  # after v1 and the ranker's rule policies
    assert registry.champion(ranker).version == 1 and stump > 1

    published = _materialize(resources, instance, ("serving",), partition_key=DAYS[-1].isoformat())
    assert published.success
    look = build_sensor_context(instance=instance, resources={"registry": registry})
    champion_alias_sensor(look)  # records the champions
    assert (
        main(["promote", "--home", str(home), "--model", ranker, "--version", str(stump), "--reason", "manual test"])
        == 0
    )
    request = champion_alias_sensor(
        build_sensor_context(instance=instance, cursor=look.cursor, resources={"registry": registry})
    )
    assert isinstance(request, RunRequest) and request.partition_key == DAYS[-1].isoformat()
    assert _materialize(
        resources, instance, ("serving",), partition_key=request.partition_key, tags=request.tags
    ).success
    assert _count(
        home, f"SELECT list(DISTINCT model_version) FROM recommendations WHERE as_of_date = DATE '{DAYS[-1]}'"
    ) == [stump]

    assert train(TrainingConfig()) == "promoted"  # a full model beats the stump on the same hold-out
    better = registry.champion(ranker).version
    assert better > stump
    assert main(["rollback", "--home", str(home), "--model", ranker]) == 0
    assert registry.champion(ranker).version == stump
    # Someone moves the alias by hand in the MLflow UI: the sensor's publish run re-scores and records the move.
    look = build_sensor_context(instance=instance, resources={"registry": registry})
    champion_alias_sensor(look)
    registry.client().set_registered_model_alias(ranker, "champion", str(better))
    request = champion_alias_sensor(
        build_sensor_context(instance=instance, cursor=look.cursor, resources={"registry": registry})
    )
    assert _materialize(
        resources, instance, ("serving",), partition_key=request.partition_key, tags=request.tags
    ).success
    assert _count(
        home, f"SELECT list(DISTINCT model_version) FROM recommendations WHERE as_of_date = DATE '{DAYS[-1]}'"
    ) == [better]
    history = (
        duckdb.connect(f"{home}/warehouse.duckdb", read_only=True)
        .execute(
            f"SELECT from_version, to_version, changed_by FROM alias_history WHERE model_name = '{ranker}' ORDER "
            "BY changed_at"
        )
        .fetchall()
    )
    assert history == [
        (None, 1, "champion_promotion"),
        (1, stump, "shopseq promote"),
        (stump, better, "champion_promotion"),
        (better, stump, "shopseq rollback"),
        (stump, better, "MLflow UI (seen by champion_alias_sensor)"),
    ]
    assert json.loads(look.cursor)[ranker] == stump


def test_a_home_whose_learned_models_lose_to_their_rules_is_served_by_the_rules(built, tmp_path):
    """Learned models made weak on purpose (deep trees, full steps, no early stopping: they learn the training days
    by heart) lose to their rules on the hold-out of a fresh home. The first training promotes the best measured
    policy anyway, so every active user still gets recommendations and next-action probabilities, each row naming
    the rule that produced it; the learned versions stay challengers, and the decision says by how much."""
    from dagster import RunConfig

    from assets.logic.catalogue import CATALOGUE
    from assets.models import TrainingConfig

    home = tmp_path / "home"
    shutil.copytree(built[0] / "landing", home / "landing")
    resources, instance = build_resources(str(home)), DagsterInstance.ephemeral()
    registry = resources["registry"]
    assert _materialize(resources, instance, ("ingestion", "cleaning", "sequences", "features"), tags=RANGE).success
    memorise = TrainingConfig(
        learning_rate=1.0, num_leaves=63, min_data_in_leaf=1, early_stopping_rounds=0, num_boost_round=60
    )
    trained = materialize(
        ALL_ASSETS,
        selection=AssetSelection.groups("training"),
        resources=resources,
        instance=instance,
        raise_on_error=False,
        run_config=RunConfig(ops={spec.asset: memorise for spec in CATALOGUE.values()}),
    )
    assert trained.success
    decisions = (
        duckdb.connect(f"{home}/warehouse.duckdb", read_only=True)
        .execute("SELECT model_name, decision, policy, policy_kind, reason FROM promotion_log")
        .df()
        .set_index("model_name")
    )
    served = ["shopseq_next_item_ranker", "shopseq_next_purchase", "shopseq_next_cart", "shopseq_next_return"]
    for model in served:
        row = decisions.loc[model]
        assert row["decision"] == "promoted" and row["policy_kind"] == "rule", (model, decisions.to_dict("records"))
        assert "does not beat the best baseline" in row["reason"] and "the best rule policy is" in row["reason"]
        champion = registry.champion(model)
        assert registry.run_tags(champion)["policy"] == row["policy"]
        assert registry.version_for_alias(model, "challenger") != champion  # the learned version waits
        description = registry.client().get_model_version(model, str(champion.version)).description
        assert description.startswith("Promoted") and f"rule policy {row['policy']}" in description
    assert _materialize(resources, instance, ("serving",), partition_key=DAYS[-1].isoformat()).success
    active = _count(
        home,
        f"SELECT count(DISTINCT user_id) FROM cleaned_events WHERE CAST(event_time AS DATE) = DATE '{DAYS[-1]}' "
        "AND NOT is_bot",
    )
    assert _count(home, "SELECT count(DISTINCT user_id) FROM recommendations") == active > 0
    ranker_rule = decisions.loc["shopseq_next_item_ranker", "policy"]
    assert _count(home, "SELECT list(DISTINCT policy_kind || ' ' || policy) FROM recommendations") == [
        f"rule {ranker_rule}"
    ]
    assert _count(home, "SELECT count(*) FROM recommendations WHERE reason IS NULL") == 0
    assert _count(home, "SELECT count(*) FROM next_action_predictions WHERE policy_kind = 'rule'") == 3 * active
    assert _count(home, "SELECT min(probability) > 0 AND max(probability) < 1 FROM next_action_predictions")
    assert (
        _count(
            home,
            f"""SELECT count(*) FROM alias_history WHERE reason LIKE 'rule %' AND from_version IS NULL
                            AND list_contains({served}, model_name)""",
        )
        == 4
    )


def test_explain_and_a_second_reader_answer_while_a_model_trains(built, tmp_path, monkeypatch):
    """The model asset holds no warehouse lock while LightGBM trains: with a training step stopped inside its
    ``train``, ``shopseq explain`` answers beside another open reader, and the step then finishes and registers its
    version."""
    import threading

    from assets.logic import training
    from assets.logic.catalogue import CATALOGUE
    from workflows.explain import explain

    home = shutil.copytree(built[0], tmp_path / "home")  # MLflow keeps absolute artifact paths: the models load
    resources = build_resources(str(home))
    spec = CATALOGUE["shopseq_next_purchase"]
    training_started, release = threading.Event(), threading.Event()
    train_binary = training.train_binary

    def stopped_train(frame, label, params):
        training_started.set()
        assert release.wait(timeout=300)
        return train_binary(frame, label, params)

    monkeypatch.setattr(training, "train_binary", stopped_train)
    outcome = {}
    step = threading.Thread(
        target=lambda: outcome.update(
            result=materialize(
                ALL_ASSETS,
                selection=AssetSelection.assets(spec.asset),
                resources=resources,
                instance=DagsterInstance.ephemeral(),
                raise_on_error=False,
            )
        )
    )
    step.start()
    try:
        assert training_started.wait(timeout=300)
        warehouse = Warehouse(home=str(home), lock_timeout_seconds=5)  # a held lock fails it in 5 s, not 30 min
        with warehouse.connect(read_only=True) as other_reader:  # open the whole time explain reads, in its thread
            [(user, day)] = other_reader.execute(
                "SELECT user_id, as_of_date FROM recommendations ORDER BY ALL LIMIT 1"
            ).fetchall()
            asked = threading.Thread(
                target=lambda: outcome.update(answer=explain(warehouse, resources["registry"], built[2], user, day))
            )
            asked.start()
            asked.join(timeout=120)
        answer = outcome["answer"]
        assert f"User {user}, {day}" in answer and "shopseq_next_item_ranker v1" in answer
        assert not release.is_set() and step.is_alive()  # all of it while the step was still training
    finally:
        release.set()
        step.join(timeout=300)
    assert outcome["result"].success
    assert resources["registry"].version_for_alias(spec.name, "challenger").version > 1
