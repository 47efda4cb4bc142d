"""Training and scoring past one node: training sets as Parquet files, LightGBM on a Dask cluster, scoring on Spark.

One large node comes first: ``export_training_set`` writes a training set table as Parquet (a folder per cut-off
day) and ``read_training_set_parquet`` reads it back exactly as ``catalogue.read_training_set`` reads the table, so
the catalogue's own ``train`` makes the same model from the files as from the warehouse. Past one node's memory,
``train_ranker_dask`` and ``train_binary_dask`` fit the same models with ``lightgbm.dask`` from the same files
(data-parallel trees: close to the single-node model, not bit-identical). ``score_spark`` scores candidates on Spark
executors with the model broadcast as its text, and ``top_k_spark`` cuts each user's list in the serving order.

Dask and Spark are imported inside the functions that use them: they come with the ``spark`` extra only.
"""

import shutil
import uuid
from pathlib import Path

import duckdb
import lightgbm as lgb
import numpy as np
import pandas as pd

from assets.logic import training
from assets.logic.candidates import RANKER_FEATURES
from assets.logic.catalogue import TRAINING_SETS
from assets.logic.features import USER_FEATURE_COLUMNS

# The day column a training set's files are partitioned by (one folder per cut-off day, Hive layout).
PARTITION_COLUMN = "as_of_date"
# A ranker query: LambdaRank compares the candidates of one user on one cut-off day with each other.
RANKER_QUERY = ["as_of_date", "user_id"]
# The rows the rule a distributed model starts from is calibrated on (see ``rule_start``): its two parameters and
# its trees need the driver to hold them, so a larger training set is sampled down to this many.
START_SAMPLE_ROWS = 500_000


def _spec(table: str):
    if table not in TRAINING_SETS:
        raise ValueError(f"{table!r} is not a training set: expected one of {', '.join(sorted(TRAINING_SETS))}")
    return TRAINING_SETS[table]


def export_training_set(conn: duckdb.DuckDBPyConnection, table: str, folder: str | Path) -> Path:
    """Write training set ``table`` as Parquet files under ``folder`` (replaced whole), one folder per cut-off day
    (``as_of_date=<day>/``, where the table has that column), rows in the order its spec declares.

    The day column is kept inside the files too, so a reader that ignores the folder names (DuckDB, Dask, Spark)
    gets the table's own column types back. The files are written beside ``folder`` and moved into place when
    complete: a failed or killed export leaves the previous files, never half of the new ones."""
    spec = _spec(table)
    folder = Path(folder)
    columns = [row[0] for row in conn.execute(f"DESCRIBE {table}").fetchall()]
    partition_by = [PARTITION_COLUMN] if PARTITION_COLUMN in columns else None
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.with_name(f".{folder.name}.{uuid.uuid4().hex}.tmp")
    try:
        conn.sql(f"SELECT * FROM {table} ORDER BY split DESC, {spec.order}").to_parquet(
            str(staging), partition_by=partition_by, write_partition_columns=True
        )
        if folder.exists():
            previous = folder.with_name(f".{folder.name}.{uuid.uuid4().hex}.old")
            folder.rename(previous)
            staging.rename(folder)
            shutil.rmtree(previous)
        else:
            staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _parquet_files(folder: str | Path) -> str:
    folder = Path(folder)
    if not any(folder.rglob("*.parquet")):
        raise FileNotFoundError(f"no Parquet files under {folder}: export the training set first (export_training_set)")
    return str(folder / "**" / "*.parquet")


def read_training_set_parquet(folder: str | Path, table: str, split: str | None = None) -> pd.DataFrame:
    """The rows of training set ``table`` exported under ``folder`` (of one split, or all), in the order its spec
    declares: the frame ``catalogue.read_training_set`` reads from the warehouse, read from the files."""
    where = "WHERE split = $split" if split else ""
    with duckdb.connect() as conn:
        return conn.execute(
            f"SELECT * FROM read_parquet($files, hive_partitioning = false) {where} "
            f"ORDER BY split DESC, {_spec(table).order}",
            {"files": _parquet_files(folder)} | ({"split": split} if split else {}),
        ).df()


# --- lightgbm.dask ------------------------------------------------------------------------------------------------


def _files_by_day(folder: str | Path, split: str) -> list[list[str]]:
    """The Parquet files of an exported training set that hold rows of ``split``, grouped by their day folder (a
    writer may leave several files in one), days in order."""
    with duckdb.connect() as conn:
        files = conn.execute(
            "SELECT DISTINCT filename FROM read_parquet($files, filename = true, hive_partitioning = false) "
            "WHERE split = $split ORDER BY 1",
            {"files": _parquet_files(folder), "split": split},
        ).fetchall()
    days: dict[str, list[str]] = {}
    for (name,) in files:
        days.setdefault(str(Path(name).parent), []).append(name)
    return [days[day] for day in sorted(days)]


def _read_day(files: list[str], split: str, columns: list[str], order: list[str], empty: bool = False) -> pd.DataFrame:
    """The ``split`` rows of one day's files, ``columns`` only, sorted by ``order`` (none of them: ``empty``, the
    frame's layout)."""
    with duckdb.connect() as conn:
        return conn.execute(
            f"SELECT {', '.join(columns)} FROM read_parquet($files, hive_partitioning = false) "
            f"WHERE split = $split ORDER BY {', '.join(order)} {'LIMIT 0' if empty else ''}",
            {"files": files, "split": split},
        ).df()


def read_training_set_dask(client, folder: str | Path, split: str, columns: list[str], order: list[str]):
    """The ``split`` rows of an exported training set as a Dask frame of one partition per cut-off day, sorted by
    ``order``, with ``columns`` only, each day read by a worker of ``client`` and kept there: day i goes to the
    i-th worker (by worker name) modulo their number.

    A day per partition keeps every ranker query (a user on a cut-off day) whole in one partition, as LightGBM
    reads a query as consecutive rows of one worker. Placing the days by their order, not where the scheduler
    happens to run them, gives every worker the same rows on every run (distributed LightGBM builds its bins from
    each worker's rows; lightgbm.dask still ranks the workers in an order that varies, see docs/scaling.md)."""
    import dask.dataframe as dd

    info = client.scheduler_info()["workers"]
    workers = sorted(info, key=lambda address: str(info[address]["name"]))
    days = _files_by_day(folder, split)
    if not days:
        raise ValueError(f"the training set under {folder} has no {split!r} rows: nothing to train on")
    parts = [
        client.submit(
            _read_day, files, split, columns, order, workers=[workers[i % len(workers)]], allow_other_workers=False
        )
        for i, files in enumerate(days)
    ]
    meta = _read_day(days[0], split, columns, order, empty=True)
    return dd.from_delayed(parts, meta=meta, verify_meta=False)


def _group_sizes(part: pd.DataFrame, query: list[str]) -> pd.Series:
    return part.groupby(query, sort=False).size().reset_index(drop=True)


def rule_start(frame, features: list[str], weights: dict[str, float], label, seed: int) -> lgb.Booster:
    """``training.rule_offset`` (the rule a model starts from, as trees) calibrated on the rows of the Dask
    ``frame``, or on a seeded sample of ``START_SAMPLE_ROWS`` of them when it has more: the rule has two parameters,
    a sample fixes them, and its trees map each feature value to its term of the offset. ``label(rows)`` is the
    0/1 outcome the rule is calibrated to."""
    rows = len(frame)
    if not rows:
        raise ValueError("the training set's train split is empty: nothing to train on")
    sample = frame if rows <= START_SAMPLE_ROWS else frame.sample(frac=START_SAMPLE_ROWS / rows, random_state=seed)
    sample = sample.compute()
    return training.rule_offset(sample, features, weights, np.asarray(label(sample)))


def _dask_params(params: training.LightGBMParams, objective: str, rounds: int) -> dict:
    """The single-node settings, with ``rounds`` boosting rounds; the threads are each worker's own (lightgbm.dask
    sets them from the worker), not the single node's."""
    settings = params.to_lightgbm(objective) | {"n_estimators": rounds}
    settings.pop("num_threads")
    return settings


def train_ranker_dask(
    client,
    folder: str | Path,
    params: training.LightGBMParams,
    rounds: int,
    features: list[str] = RANKER_FEATURES,
) -> lgb.Booster:
    """The ranker of ``training.train_lambdarank`` fitted by ``DaskLGBMRanker`` on the workers of ``client`` from
    the ``train`` split of the ranker training set exported under ``folder``: it starts from the same rule
    (``rule_start``) and boosts ``rounds`` rounds on it. lightgbm.dask has no early stopping: ``rounds`` is picked
    beforehand, by a single-node ``train_lambdarank`` on a sample (its rounds beyond the rule's trees)."""
    from lightgbm.dask import DaskLGBMRanker

    order = [*RANKER_QUERY, "item_id"]
    parts = read_training_set_dask(client, folder, "train", [*order, *features, "relevance"], order)
    groups = parts.map_partitions(_group_sizes, RANKER_QUERY, meta=pd.Series(dtype="int64"))
    start = rule_start(parts, features, training.RANKER_START, lambda rows: rows["relevance"] > 0, params.seed)
    if not rounds:  # as ``training.boost`` with no round: the rule alone
        return start
    model = DaskLGBMRanker(
        client=client,
        **_dask_params(params, "lambdarank", rounds),
        lambdarank_truncation_level=20,
    )
    model.fit(parts[features].astype(float), parts["relevance"], group=groups, init_model=start)
    return model.booster_


def train_binary_dask(
    client, folder: str | Path, label: str, params: training.LightGBMParams, rounds: int
) -> lgb.Booster:
    """The next-action model of ``training.train_binary`` for ``label`` fitted by ``DaskLGBMClassifier`` on the
    workers of ``client`` from the ``train`` split of the next-action training set exported under ``folder``,
    started from the label's history rule (``rule_start``), ``rounds`` rounds on it (see ``train_ranker_dask``)."""
    from lightgbm.dask import DaskLGBMClassifier

    order = ["as_of_date", "user_id"]
    frame = read_training_set_dask(client, folder, "train", [*order, *USER_FEATURE_COLUMNS, label], order)
    start = rule_start(
        frame, USER_FEATURE_COLUMNS, dict(training.HISTORY_RULES[label].weights), lambda rows: rows[label], params.seed
    )
    if not rounds:
        return start
    model = DaskLGBMClassifier(client=client, **_dask_params(params, "binary", rounds))
    model.fit(frame[USER_FEATURE_COLUMNS].astype(float), frame[label], init_model=start)
    return model.booster_


# --- Spark scoring ------------------------------------------------------------------------------------------------


def score_spark(candidates, model: str, features: list[str] = RANKER_FEATURES, keep: tuple[str, ...] = ()):
    """Every row of the Spark frame ``candidates`` with its score from the LightGBM model whose text is ``model``
    (``booster.model_to_string()``): the text is broadcast once, each executor's Python worker loads it once per
    partition and scores the Arrow batches of the partition with ``Booster.predict``, as local scoring does (a null
    feature is NaN, LightGBM's missing value, as in ``serving.scoring_sql``). Returns user_id, item_id, the ``keep``
    columns and score."""
    from pyspark.sql.types import DoubleType, StructField, StructType

    columns = ["user_id", "item_id", *keep]
    shared = candidates.sparkSession.sparkContext.broadcast(model)

    def score(batches):
        booster = lgb.Booster(model_str=shared.value)
        for batch in batches:
            matrix = batch[features].to_numpy(dtype=np.float64, na_value=np.nan)
            scores = booster.predict(matrix) if len(batch) else np.array([], dtype=np.float64)
            yield batch[columns].assign(score=scores)

    schema = StructType([candidates.schema[c] for c in columns] + [StructField("score", DoubleType())])
    return candidates.mapInPandas(score, schema)


def top_k_spark(scored, k: int):
    """The first ``k`` rows of each user by score, ties to the more popular item, then by item id: the order of
    ``serving.ranked_table`` (nulls last, as DuckDB orders them), with ``rank`` from 1. The business rules that
    ``ranked_table`` applies after ranking are not applied here."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    order = Window.partitionBy("user_id").orderBy(
        F.col("score").desc_nulls_last(), F.col("popular_rank").asc_nulls_last(), F.col("item_id").asc_nulls_last()
    )
    return scored.withColumn("rank", F.row_number().over(order)).where(F.col("rank") <= k)
