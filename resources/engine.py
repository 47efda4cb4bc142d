"""The engine that replaces a day of a table from a statement: DuckDB (the default, one file) or Spark (Parquet days).

Assets ask ``Engine.build_day`` (or ``replace_day``) and never know which engine runs the statement. The statement is
always the DuckDB SQL of ``assets/logic``; on Spark it is translated by ``assets.logic.spark_sql.to_spark``.

The Spark lake keeps each daily table as Parquet partitioned by the shop's day, Hive layout:
``<home>/lake/<table>/day=YYYY-MM-DD/*.parquet``. A day is written by Spark's dynamic partition overwrite: the
day's rows go to a staging folder and replace the day's folder only when every task has succeeded, so a failed
write leaves the previous day in place (the swap itself, at job commit, is a delete then a rename per day: a
process killed between the two loses that day's folder, and readers at that instant see the day empty; Iceberg
commits it atomically, see docs/scaling.md). DuckDB reads the lake for the CLI and ``explain``
(``attach_lake``).
"""

import datetime as dt
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import duckdb
from dagster import ConfigurableResource, InitResourceContext
from pydantic import PrivateAttr

from resources.home import ENGINES, SettingsInvalid, home_paths, read_settings, write_settings

ENGINE_VARIABLE = "SHOPSEQ_ENGINE"
SPARK_MASTER_VARIABLE = "SHOPSEQ_SPARK_MASTER"


# What the engine sets on a session it creates, unless Spark's own settings (spark-defaults.conf) name the key:
# Spark's 200 shuffle partitions are 200 tasks per shuffle, most of them empty on one machine's days.
SPARK_DEFAULTS = {"spark.sql.shuffle.partitions": "8"}

# SQL settings the lake's correctness depends on, set on whatever session the lake is given: timestamps are naive
# UTC (DuckDB's TIMESTAMP, Spark's TIMESTAMP_NTZ, written as Parquet microseconds that DuckDB reads back as
# TIMESTAMP); a write replaces the days it holds, not the table.
LAKE_SQL_CONF = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.timestampType": "TIMESTAMP_NTZ",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.sql.sources.partitionOverwriteMode": "dynamic",
}


def spark_session(master: str = "local[2]", conf: Mapping[str, str] | None = None):
    """The process's Spark session (created on first use) with the lake's SQL settings and ``conf``."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise RuntimeError('the spark engine needs pyspark and Java 17: pip install -e ".[spark]"') from None
    builder = SparkSession.builder.master(master).appName("shopseq")
    for key, value in {**LAKE_SQL_CONF, **(conf or {})}.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


class SparkLake:
    """The daily tables of ``home`` as Parquet days, read and written through the Spark session ``spark``."""

    def __init__(self, spark, home: str):
        self.spark = spark
        self.root = home_paths(home)["lake"]
        for key, value in LAKE_SQL_CONF.items():
            spark.conf.set(key, value)

    def path(self, table: str) -> Path:
        return self.root / table

    def schemas(self) -> dict[str, list[str]]:
        """The columns of every daily table, for the translation of stars."""
        from assets.logic.schema import DAILY_TABLES
        from assets.logic.spark_sql import table_layout

        return {table: [c for c, *_ in table_layout(table)] for table in DAILY_TABLES}

    def table(self, table: str):
        """The rows of ``table`` (every day) as a DataFrame with the table's columns and types; empty when no day
        was written."""
        from pyspark.sql import functions as F

        from assets.logic.spark_sql import table_layout

        layout = table_layout(table)
        path = self.path(table)
        if any(path.glob("day=*/*.parquet")):
            frame = self.spark.read.option("basePath", str(path)).parquet(str(path))
            return frame.select(*[F.col(c).cast(t).alias(c) for c, _, t, _ in layout])
        schema = ", ".join(f"{c} {t}" for c, _, t, _ in layout)
        return self.spark.createDataFrame([], schema)

    def register_views(self, tables) -> None:
        """The daily ``tables`` as temp views of their names, listed afresh (a view keeps the files it first saw)."""
        for table in tables:
            self.table(table).createOrReplaceTempView(table)

    def replace_day(self, table: str, day: dt.date, start, end, select_sql: str, params: Mapping | None = None) -> int:
        """Replace the day ``day`` of ``table`` (its folder ``day=YYYY-MM-DD``) with the rows of the DuckDB
        statement ``select_sql``; returns the rows written.

        Like ``replace_window``: columns are matched by name (a column the statement lacks is NULL), and a
        NULL in a NOT NULL column fails the write. A row whose day column (``schema.DAILY_TABLES``) falls outside
        ``[start, end)`` fails it too: in the lake a row lives in its day's folder. A failed write leaves the
        previous day's rows."""
        from pyspark.sql import Observation
        from pyspark.sql import functions as F

        from assets.logic.schema import DAILY_TABLES
        from assets.logic.spark_sql import table_layout, tables_read, to_spark

        layout = table_layout(table)
        day_column = DAILY_TABLES[table]
        self.register_views([t for t in DAILY_TABLES if t in tables_read(select_sql)])
        rows = self.spark.sql(to_spark(select_sql, params, self.schemas()))
        extra = sorted(set(rows.columns) - {c for c, *_ in layout})
        if extra:
            raise ValueError(f"the statement for {table} returns columns {extra} that the table does not have")
        bounds = [F.lit(v.isoformat(sep=" ") if isinstance(v, dt.datetime) else v) for v in (start, end)]
        columns = []
        for column, _, spark_type, not_null in layout:
            value = F.col(column).cast(spark_type) if column in rows.columns else F.lit(None).cast(spark_type)
            if column == day_column:
                inside = (value >= bounds[0].cast(spark_type)) & (value < bounds[1].cast(spark_type))
                message = f"{table}.{column} outside the day {day} [{start}, {end}) being replaced"
                value = F.when(inside, value).otherwise(F.raise_error(F.lit(message)).cast(spark_type))
            if not_null:
                message = f"{table}.{column} is NULL (NOT NULL) in the rows for {day}"
                value = F.coalesce(value, F.raise_error(F.lit(message)).cast(spark_type))
            columns.append(value.alias(column))
        frame = rows.select(*columns)
        if "day" not in frame.columns:
            frame = frame.withColumn("day", F.lit(day))
        written = Observation(f"{table}_{day.isoformat()}")
        frame = frame.observe(written, F.count(F.lit(1)).alias("rows"))
        frame.write.mode("overwrite").option("partitionOverwriteMode", "dynamic").partitionBy("day").parquet(
            str(self.path(table))
        )
        count = int(written.get["rows"])
        if count == 0:
            # dynamic overwrite replaces only the days the rows hold: a day that became empty is removed here
            self._delete_day(table, day)
        return count

    def _delete_day(self, table: str, day: dt.date) -> None:
        jvm = self.spark.sparkContext._jvm
        folder = jvm.org.apache.hadoop.fs.Path(str(self.path(table) / f"day={day.isoformat()}"))
        folder.getFileSystem(self.spark.sparkContext._jsc.hadoopConfiguration()).delete(folder, True)


@dataclass(frozen=True)
class Counting:
    """Where a suite's row-wise expectations are counted over every row: a connection and the engine's name."""

    connection: object
    engine: str


class SparkConnection:
    """DuckDB's ``execute(sql, params).fetchall()`` over Spark, for read-side code written against a DuckDB
    connection (``expectations.sql.sql_outcomes``): each statement, DuckDB SQL, is translated by ``to_spark``
    (``schemas`` for its stars) and its rows collected to the driver, so keep them small (counts, examples)."""

    def __init__(self, spark, schemas: Mapping[str, list[str]] | None = None):
        self.spark = spark
        self.schemas = schemas or {}

    def execute(self, sql: str, params: Mapping | None = None) -> "SparkRows":
        from assets.logic.spark_sql import to_spark

        return SparkRows([tuple(row) for row in self.spark.sql(to_spark(sql, params, self.schemas)).collect()])


class SparkRows:
    """The collected rows of one statement, read like a DuckDB result."""

    def __init__(self, rows: list[tuple]):
        self.rows = rows

    def fetchall(self) -> list[tuple]:
        return list(self.rows)

    def fetchone(self) -> tuple | None:
        return self.rows[0] if self.rows else None


def attach_lake(conn: duckdb.DuckDBPyConnection, home: str, tables=None) -> list[str]:
    """The lake tables of ``home`` (those Spark builds, or ``tables``) as temporary views on ``conn``
    (``assets.logic.lake.attach_lake``)."""
    from assets.logic.lake import LAKE_TABLES
    from assets.logic.lake import attach_lake as attach

    return attach(conn, home_paths(home)["lake"], tables or LAKE_TABLES)


def withdraw_lake_days(home: str, days: list[dt.date]) -> dict[str, int]:
    """Remove ``days`` from every lake table of ``home`` (``assets.logic.lake.withdraw_days``)."""
    from assets.logic.lake import withdraw_days

    return withdraw_days(home_paths(home)["lake"], days)


def resolve_engine(home: str, asked: str, asked_by: str = ENGINE_VARIABLE) -> str:
    """The engine of ``home``: the one its settings record, else ``asked`` (else ``duckdb``), recorded there.

    A home keeps the engine it started with: its daily tables live in the warehouse file on duckdb and in the
    Parquet lake on spark, so another engine asked of it later is refused, as is spark asked of a home whose
    warehouse a duckdb run has already written."""
    if asked and asked not in ENGINES:
        raise ValueError(f"{asked_by}={asked!r} is not an engine: one of {', '.join(ENGINES)}")
    recorded = read_settings(home).get("engine")
    settings = home_paths(home)["settings"]
    if recorded and asked and asked != recorded:
        raise SettingsInvalid(
            f"this home builds its daily tables on {recorded} ({settings}), but {asked_by}={asked} asks for {asked}: "
            "a home keeps the engine it started with; use another --home for the other engine"
        )
    if recorded:
        return recorded
    engine = asked or "duckdb"
    if engine == "spark" and home_paths(home)["warehouse"].exists():
        raise SettingsInvalid(
            f"{home_paths(home)['warehouse']} was written before the home recorded an engine (so on duckdb): "
            f"{asked_by}=spark needs a new --home"
        )
    write_settings(home, engine=engine)
    return engine


class Engine(ConfigurableResource):
    """Where the daily statements run: ``duckdb`` (the default: the home's warehouse file, through
    ``replace_window``) or ``spark`` (the home's Parquet lake, through Spark at ``spark_master``; needs the
    ``spark`` extra and Java 17).

    Left empty, ``engine`` is the one the home recorded at its first run, else ``$SHOPSEQ_ENGINE`` as that run
    starts, else ``duckdb`` (``resolve_engine``), and ``spark_master`` is ``$SHOPSEQ_SPARK_MASTER``, else
    ``local[2]``. Other Spark settings come from Spark's own ``spark-defaults.conf`` (``$SPARK_CONF_DIR``)."""

    home: str
    engine: str = ""
    spark_master: str = ""
    _resolved: str = PrivateAttr(default="")
    _lake: SparkLake | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self._resolved = ""
        self._lake = None
        _ = self.name

    @property
    def name(self) -> str:
        """``duckdb`` or ``spark``: this home's engine (resolved, and recorded, on first use)."""
        if not self._resolved:
            asked_by = "the Engine resource's engine" if self.engine else ENGINE_VARIABLE
            self._resolved = resolve_engine(self.home, self.engine or os.environ.get(ENGINE_VARIABLE, ""), asked_by)
        return self._resolved

    def lake(self) -> SparkLake:
        """The home's lake through the process's Spark session: the active one if there is one (a platform's, or a
        test's), else one created at ``spark_master``. Found (and its settings set) on the first call, then kept
        for the run (for the resource object, outside a run)."""
        if self._lake is not None:
            return self._lake
        from pyspark.sql import SparkSession

        spark = SparkSession.getActiveSession()
        if spark is None:
            master = self.spark_master or os.environ.get(SPARK_MASTER_VARIABLE, "") or "local[2]"
            # Spark's progress bars would overwrite the CLI's progress lines
            spark = spark_session(master, {"spark.ui.showConsoleProgress": "false"})
            spark.sparkContext.setLogLevel("ERROR")  # not a WARN per window without PARTITION BY, every day
            for key, value in SPARK_DEFAULTS.items():
                if not spark.sparkContext.getConf().contains(key):
                    spark.conf.set(key, value)
        self._lake = SparkLake(spark, self.home)
        return self._lake

    def build_day(
        self, conn: duckdb.DuckDBPyConnection, table: str, day: dt.date, tz: str, build: Callable, **params
    ) -> int:
        """Replace ``day`` of the daily ``table``; returns the rows written. On duckdb, ``build(conn, day, tz=tz,
        **params)``: the DuckDB builder, on the warehouse connection ``conn``. On spark, the same builder's
        statement (``spark_sql.daily_statement``) written into the lake by Spark; ``conn`` then reads the new day
        (the table's lake view is attached again: a table written for the first time had none)."""
        if self.name == "duckdb":
            return build(conn, day, tz=tz, **params)
        from assets.logic.spark_sql import daily_statement

        statement = daily_statement(table, day, tz, **params)
        rows = self.lake().replace_day(table, day, statement.start, statement.end, statement.sql, statement.params)
        attach_lake(conn, self.home, [table])
        return rows

    def counting(self, table: str) -> Counting | None:
        """Where the suite of the daily ``table`` counts its rows: on spark, Spark over the lake for the tables Spark
        builds (``SparkConnection``, the lake's tables registered afresh); else ``None``, DuckDB on the asset's own
        connection."""
        from assets.logic.lake import LAKE_TABLES

        if self.name == "duckdb" or table not in LAKE_TABLES:
            return None
        lake = self.lake()
        lake.register_views(LAKE_TABLES)
        return Counting(SparkConnection(lake.spark, lake.schemas()), "Spark")

    def export_day(self, conn: duckdb.DuckDBPyConnection, table: str, day: dt.date, tz: str) -> None:
        """On spark, copy ``day`` of the DuckDB-written ``table`` (``raw_events``) into the lake for Spark to read;
        on duckdb nothing. The day is written into a fresh folder and swapped in, as Spark's own overwrite does
        (``assets.logic.lake.replace_day_folder``)."""
        if self.name == "duckdb":
            return
        from assets.logic.lake import replace_day_folder
        from assets.logic.schema import DAILY_TABLES
        from assets.logic.warehouse_sql import day_bounds

        start, end = day_bounds(day, tz)
        column = DAILY_TABLES[table]
        rows = conn.sql(
            f"SELECT * FROM {table} WHERE {column} >= $start AND {column} < $end", params={"start": start, "end": end}
        )
        replace_day_folder(
            home_paths(self.home)["lake"], table, day, lambda folder: rows.write_parquet(str(folder / "part-0.parquet"))
        )

    def replace_day(self, table: str, day: dt.date, start, end, select_sql: str, params: Mapping | None = None) -> int:
        """Replace the day ``day`` (rows of ``table`` with its day column in ``[start, end)``) with the rows of the
        DuckDB statement ``select_sql`` and its named ``params``; returns the rows written."""
        if self.name == "spark":
            return self.lake().replace_day(table, day, start, end, select_sql, params)
        from assets.logic.schema import DAILY_TABLES
        from assets.logic.warehouse_sql import ensure_table, replace_window
        from resources.warehouse import Warehouse

        with Warehouse(home=self.home).connect() as conn:
            ensure_table(conn, table)
            return replace_window(conn, table, DAILY_TABLES[table], start, end, select_sql, dict(params or {}))
