"""Training sets as Parquet, LightGBM on a local two-worker Dask cluster, scoring with Spark ``mapInPandas``."""

import datetime as dt
import time

import duckdb
import numpy as np
import pandas as pd
import pytest

from assets.logic import distributed, serving, training
from assets.logic.candidates import RANKER_FEATURES
from assets.logic.catalogue import read_training_set
from assets.logic.features import USER_FEATURE_COLUMNS
from assets.logic.metrics import auc, per_user_ranking, top_k

pytestmark = pytest.mark.spark

PARAMS = training.LightGBMParams(num_boost_round=200, early_stopping_rounds=10, num_leaves=7, min_data_in_leaf=20)
DAYS = [dt.date(2025, 3, 1) + dt.timedelta(days=i) for i in range(5)]  # four training cut-offs, then the hold-out
USERS, CANDIDATES, K = 300, 30, 10


def _ranker_training_set(seed: int = 0) -> pd.DataFrame:
    """A ranker training set whose relevance follows repeat-recent and, beyond it, an interaction of two other
    features that trees can learn; the last day is the hold-out."""
    rng = np.random.default_rng(seed)
    n = len(DAYS) * USERS * CANDIDATES
    frame = pd.DataFrame(rng.uniform(0, 1, (n, len(RANKER_FEATURES))), columns=RANKER_FEATURES).assign(
        as_of_date=np.repeat(DAYS, USERS * CANDIDATES),
        user_id=[f"u{i // CANDIDATES % USERS:03d}" for i in range(n)],
        item_id=[f"i{i % CANDIDATES:02d}" for i in range(n)],
        in_recent=rng.integers(0, 2, n).astype(float),
        popular_rank=rng.integers(1, 50, n).astype(float),
    )
    logit = -3 + 2 * frame["in_recent"] * frame["recent_score"] + 2.5 * (frame["ui_views"] > 0.5) * frame["covis_score"]
    touched = rng.random(n) < 1 / (1 + np.exp(-logit))
    frame["relevance"] = np.where(touched, rng.integers(1, 4, n), 0)
    return frame.assign(split=np.where(frame["as_of_date"] == DAYS[-1], "holdout", "train"))


def _next_action_training_set(seed: int = 1) -> pd.DataFrame:
    """User features over the days whose next-day purchase follows the buy-history rule and two other features."""
    rng = np.random.default_rng(seed)
    users = 2000
    n = len(DAYS) * users
    frame = pd.DataFrame(rng.poisson(2, (n, len(USER_FEATURE_COLUMNS))).astype(float), columns=USER_FEATURE_COLUMNS)
    frame = frame.assign(as_of_date=np.repeat(DAYS, users), user_id=[f"u{i % users:04d}" for i in range(n)])
    logit = 0.6 * frame["purchases_28d"] - 0.5 * frame["views_7d"] + 0.8 * (frame["carts_28d"] > 2) - 1.0
    frame["label_purchase"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return frame.assign(split=np.where(frame["as_of_date"] == DAYS[-1], "holdout", "train"))


def _warehouse(table: str, frame: pd.DataFrame) -> duckdb.DuckDBPyConnection:
    conn = duckdb.connect()
    conn.register("incoming", frame)
    conn.execute(f"CREATE TABLE {table} AS SELECT * REPLACE (CAST(as_of_date AS DATE) AS as_of_date) FROM incoming")
    conn.unregister("incoming")
    return conn


@pytest.fixture(scope="module")
def ranker_files(tmp_path_factory):
    """The synthetic ranker training set in a warehouse table and exported as Parquet, and the ranker trained from
    the table's train split."""
    conn = _warehouse("ranker_training_set", _ranker_training_set())
    folder = distributed.export_training_set(conn, "ranker_training_set", tmp_path_factory.mktemp("sets") / "ranker")
    yield conn, folder, training.train_lambdarank(read_training_set(conn, "ranker_training_set", "train"), PARAMS)
    conn.close()


def _ndcg(frame: pd.DataFrame, scores: np.ndarray) -> float:
    """Mean NDCG@K over the hold-out users with a relevant candidate (binary gains, ``metrics.per_user_ranking``)."""
    lists = top_k(frame.assign(score=scores), "score", K)
    targets = frame[frame["relevance"] > 0][["user_id", "item_id"]]
    return float(per_user_ranking(lists, targets, K)["ndcg"].mean())


def test_a_training_set_exported_as_parquet_trains_the_same_model_as_the_table(ranker_files, tmp_path):
    conn, folder, from_table = ranker_files
    days = sorted(p.name for p in folder.iterdir())
    assert days == [f"as_of_date={d}" for d in DAYS]  # a folder per cut-off day
    table = read_training_set(conn, "ranker_training_set", "train")
    files = distributed.read_training_set_parquet(folder, "ranker_training_set", "train")
    pd.testing.assert_frame_equal(files, table)  # the same rows, order, columns and types
    from_files = training.train_lambdarank(files, PARAMS)
    holdout = read_training_set(conn, "ranker_training_set", "holdout")
    assert np.allclose(
        from_files.predict(holdout[RANKER_FEATURES]), from_table.predict(holdout[RANKER_FEATURES]), rtol=0, atol=1e-12
    )
    assert from_files.model_to_string() == from_table.model_to_string()


def test_an_export_replaces_the_previous_files_whole(tmp_path):
    frame = _ranker_training_set().head(3 * USERS * CANDIDATES)  # three days
    with _warehouse("ranker_training_set", frame) as conn:
        folder = distributed.export_training_set(conn, "ranker_training_set", tmp_path / "ranker")
        conn.execute("DELETE FROM ranker_training_set WHERE as_of_date = ?", [DAYS[0]])
        distributed.export_training_set(conn, "ranker_training_set", folder)
    assert sorted(p.name for p in folder.iterdir()) == [f"as_of_date={d}" for d in DAYS[1:3]]
    assert [p.name for p in tmp_path.iterdir()] == ["ranker"]  # no staging or previous folder left beside it
    assert len(distributed.read_training_set_parquet(folder, "ranker_training_set")) == 2 * USERS * CANDIDATES


def test_bad_input_to_the_export_and_the_read_is_refused_with_the_reason(tmp_path):
    refused = "'users' is not a training set: expected one of .*ranker_training_set"
    with duckdb.connect() as conn, pytest.raises(ValueError, match=refused):
        distributed.export_training_set(conn, "users", tmp_path / "x")
    with pytest.raises(FileNotFoundError, match=f"no Parquet files under {tmp_path / 'none'}: export"):
        distributed.read_training_set_parquet(tmp_path / "none", "ranker_training_set")


@pytest.fixture(scope="module")
def dask_client():
    """A local cluster of two worker processes, one thread each, closed even when a test fails."""
    pytest.importorskip("distributed", reason='the Dask tests need the spark extra: pip install -e ".[spark]"')
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        yield client


def test_a_worker_reads_each_day_into_one_partition_in_order(ranker_files, dask_client):
    _, folder, _ = ranker_files
    order = ["as_of_date", "user_id", "item_id"]
    frame = distributed.read_training_set_dask(dask_client, folder, "train", [*order, "relevance"], order)
    assert frame.npartitions == len(DAYS) - 1  # the hold-out day has no training rows
    for i, day in enumerate(DAYS[:-1]):
        part = frame.get_partition(i).compute()
        assert set(part["as_of_date"]) == {pd.Timestamp(day)} and len(part) == USERS * CANDIDATES
        assert part.equals(part.sort_values(order).reset_index(drop=True))  # every query whole, in item order
    with pytest.raises(ValueError, match="has no 'validation' rows"):
        distributed.read_training_set_dask(dask_client, folder, "validation", order, order)


def test_lightgbm_dask_trains_the_ranker_and_a_next_action_model_close_to_one_node(ranker_files, dask_client, tmp_path):
    conn, folder, single = ranker_files
    holdout = read_training_set(conn, "ranker_training_set", "holdout")
    start_trees = len(training.RANKER_START)
    rounds = single.current_iteration() - start_trees  # early stopping's pick, on one node
    started = time.perf_counter()
    spread = distributed.train_ranker_dask(dask_client, folder, PARAMS, rounds)
    dask_seconds = time.perf_counter() - started
    assert spread.feature_name() == RANKER_FEATURES and spread.current_iteration() == start_trees + rounds
    features = holdout[RANKER_FEATURES]
    rule = training.RANKER_RULES["repeat_recent"].predict(holdout)
    quality = {
        "single": _ndcg(holdout, single.predict(features)),
        "dask": _ndcg(holdout, spread.predict(features)),
        "repeat_recent": _ndcg(holdout, np.nan_to_num(rule, nan=-np.inf)),
    }
    print(f"ranker NDCG@{K} {quality}, rounds {rounds}, dask seconds {dask_seconds:.1f}")
    # Distributed LightGBM builds its histograms from each worker's rows and bags per worker: not the single-node
    # model, but it must keep 90% of what the single-node model learns beyond the rule it starts from (measured:
    # gaps up to 0.004 on a lift of 0.13; seeds 42-45 on one node span 0.005).
    lift = quality["single"] - quality["repeat_recent"]
    assert lift > 0.05 and abs(quality["dask"] - quality["single"]) < 0.1 * lift
    assert not np.allclose(spread.predict(features), single.predict(features))  # not the same model
    # lightgbm.dask ranks its machines in an order that varies from run to run (it reads them from a set), and a
    # machine's rank decides which features' bins it finds from its own rows: another run, another model, within
    # the same bound (measured over six runs: NDCG@10 0.588-0.592 against 0.592 on one node)
    again = distributed.train_ranker_dask(dask_client, folder, PARAMS, rounds)
    again_ndcg = _ndcg(holdout, again.predict(features))
    print(f"ranker NDCG@{K} of a second dask run {again_ndcg}")
    assert abs(again_ndcg - quality["single"]) < 0.1 * lift

    actions = _next_action_training_set()
    with _warehouse("next_action_training_set", actions) as actions_conn:
        action_folder = distributed.export_training_set(actions_conn, "next_action_training_set", tmp_path / "actions")
        train = read_training_set(actions_conn, "next_action_training_set", "train")
        holdout = read_training_set(actions_conn, "next_action_training_set", "holdout")
    single = training.train_binary(train, "label_purchase", PARAMS)
    rounds = single.current_iteration() - len(training.HISTORY_RULES["label_purchase"].weights)
    spread = distributed.train_binary_dask(dask_client, action_folder, "label_purchase", PARAMS, rounds)
    y, features = holdout["label_purchase"].to_numpy(), holdout[USER_FEATURE_COLUMNS]
    rule = training.HISTORY_RULES["label_purchase"].predict(holdout)
    quality = {
        "single": auc(y, single.predict(features)),
        "dask": auc(y, spread.predict(features)),
        "rule": auc(y, rule),
    }
    print(f"next purchase AUC {quality}, rounds {rounds}")
    lift = quality["single"] - quality["rule"]  # measured: gaps up to 0.001 on a lift of 0.074
    assert lift > 0.03 and abs(quality["dask"] - quality["single"]) < 0.1 * lift


def test_spark_map_in_pandas_scores_and_ranks_the_candidates_as_local_scoring(ranker_files, spark):
    conn, _, booster = ranker_files
    candidates = read_training_set(conn, "ranker_training_set", "holdout")
    # missing features (NaN locally, null in Spark), and ties: two more candidates per user with the features of
    # the user's first (so its score), one of them more popular (it goes first), one as popular (item id decides)
    candidates.loc[candidates.index % 7 == 0, ["covis_score", "ui_views"]] = np.nan
    first = candidates[candidates["item_id"] == "i00"]
    twins = pd.concat(
        [first.assign(item_id="i98"), first.assign(item_id="i99", popular_rank=first["popular_rank"] - 0.5)]
    )
    candidates = pd.concat([candidates, twins], ignore_index=True)
    local = candidates[["user_id", "item_id", "popular_rank"]].assign(score=serving.ranker_scores(booster, candidates))
    # Spark reads its candidates in several partitions, each scored on its own
    rows = spark.createDataFrame(candidates[["user_id", "item_id", *RANKER_FEATURES]]).repartition(3)
    scored = distributed.score_spark(rows, booster.model_to_string(), keep=("popular_rank",))
    spark_scores = scored.toPandas().merge(local, on=["user_id", "item_id"], suffixes=("_spark", ""))
    assert len(spark_scores) == len(candidates) and spark_scores["score"].notna().all()
    assert np.allclose(spark_scores["score_spark"], spark_scores["score"], rtol=0, atol=1e-9)

    spark_top = distributed.top_k_spark(scored, K).toPandas().sort_values(["user_id", "rank"], ignore_index=True)
    rules = serving.BusinessRules(exclude_purchased=False, max_per_category=0, min_items=0)  # the ranking alone
    with_rules = local.assign(category_id=None, source="model", ui_purchases=0.0)
    local_top = serving.ranked_table(with_rules, candidates["user_id"].drop_duplicates(), rules, K).to_pandas()
    assert len(local_top) == USERS * K
    columns = {"user_id": object, "item_id": object, "rank": "int64"}
    pd.testing.assert_frame_equal(spark_top[list(columns)].astype(columns), local_top[list(columns)].astype(columns))
    # the ties reached the lists, and were broken as serving breaks them: the more popular twin, then by item id
    tied = local_top[local_top["item_id"].isin(["i00", "i98", "i99"])].pivot(index="user_id", columns="item_id")
    tied = tied["rank"].dropna()
    assert len(tied) > 0 and ((tied["i99"] < tied["i00"]) & (tied["i00"] < tied["i98"])).all()
