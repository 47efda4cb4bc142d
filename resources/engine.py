"""The engine that replaces a day of a table from a statement: DuckDB (the default, one file) or Spark (Parquet days).

Assets ask ``Engine.replace_day`` and never know which engine runs the statement. The statement is always the
DuckDB SQL of ``assets/logic``; on Spark it is translated by ``assets.logic.spark_sql.to_spark``.

The Spark lake keeps each daily table as Parquet partitioned by the shop's day, Hive layout:
``<home>/lake/<table>/day=YYYY-MM-DD/*.parquet``. A day is written by Spark's dynamic partition overwrite: the
day's rows go to a staging folder and replace the day's folder only when every task has succeeded, so a failed
write leaves the previous day in place (the swap itself, at job commit, is a delete then a rename per day: a
process killed between the two loses that day's folder, and readers at that instant see the day empty; Iceberg
commits it atomically, see docs/scaling.md). DuckDB reads the lake for the CLI and ``explain``
(``attach_lake``).
"""

import datetime as dt
from collections.abc import Mapping
from pathlib import Path

import duckdb
from dagster import ConfigurableResource, InitResourceContext

from assets.logic.schema import DAILY_TABLES
from assets.logic.spark_sql import table_layout, tables_read, to_spark
from assets.logic.warehouse_sql import ensure_table, replace_window
from resources.home import home_paths

ENGINES = ("duckdb", "spark")

# SQL settings the lake's correctness depends on, set on whatever session the lake is given: timestamps are naive
# UTC (DuckDB's TIMESTAMP, Spark's TIMESTAMP_NTZ, written as Parquet microseconds that DuckDB reads back as
# TIMESTAMP); a write replaces the days it holds, not the table.
LAKE_SQL_CONF = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.timestampType": "TIMESTAMP_NTZ",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.sql.sources.partitionOverwriteMode": "dynamic",
}


def lake_root(home: str) -> Path:
    """``<home>/lake``: one folder per daily table."""
    return home_paths(home)["warehouse"].parent / "lake"


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
        self.root = lake_root(home)
        for key, value in LAKE_SQL_CONF.items():
            spark.conf.set(key, value)

    def path(self, table: str) -> Path:
        return self.root / table

    def schemas(self) -> dict[str, list[str]]:
        """The columns of every daily table, for the translation of stars."""
        return {table: [c for c, *_ in table_layout(table)] for table in DAILY_TABLES}

    def table(self, table: str):
        """The rows of ``table`` (every day) as a DataFrame with the table's columns and types; empty when no day
        was written."""
        from pyspark.sql import functions as F

        layout = table_layout(table)
        path = self.path(table)
        if any(path.glob("day=*/*.parquet")):
            frame = self.spark.read.option("basePath", str(path)).parquet(str(path))
            return frame.select(*[F.col(c).cast(t).alias(c) for c, _, t, _ in layout])
        schema = ", ".join(f"{c} {t}" for c, _, t, _ in layout)
        return self.spark.createDataFrame([], schema)

    def register_views(self, tables=DAILY_TABLES) -> None:
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


class SparkConnection:
    """DuckDB's ``execute(sql, params).fetchall()`` over Spark, for read-side code written against a DuckDB
    connection (``expectations.sql.sql_outcomes``): each statement, DuckDB SQL, is translated by ``to_spark``
    (``schemas`` for its stars) and its rows collected to the driver, so keep them small (counts, examples)."""

    def __init__(self, spark, schemas: Mapping[str, list[str]] | None = None):
        self.spark = spark
        self.schemas = schemas or {}

    def execute(self, sql: str, params: Mapping | None = None) -> "SparkRows":
        return SparkRows([tuple(row) for row in self.spark.sql(to_spark(sql, params, self.schemas)).collect()])


class SparkRows:
    """The collected rows of one statement, read like a DuckDB result."""

    def __init__(self, rows: list[tuple]):
        self.rows = rows

    def fetchall(self) -> list[tuple]:
        return list(self.rows)

    def fetchone(self) -> tuple | None:
        return self.rows[0] if self.rows else None


def attach_lake(conn: duckdb.DuckDBPyConnection, home: str) -> list[str]:
    """Views on ``conn`` named after the lake's tables (``read_parquet`` with Hive partitioning, the table's
    columns and types), for the CLI and ``explain`` to read a Spark home; returns the tables attached."""
    attached = []
    for table in DAILY_TABLES:
        path = lake_root(home) / table
        if not any(path.glob("day=*/*.parquet")):
            continue
        relation = conn.read_parquet(str(path / "**" / "*.parquet"), hive_partitioning=True)
        relation.project(", ".join(f"CAST({c} AS {t}) AS {c}" for c, t, _, _ in table_layout(table))).create_view(
            table, replace=True
        )
        attached.append(table)
    return attached


class Engine(ConfigurableResource):
    """Where the daily statements run: ``duckdb`` (the default: the home's warehouse file, through
    ``replace_window``) or ``spark`` (the home's Parquet lake, through Spark at ``spark_master``; needs the
    ``spark`` extra and Java 17)."""

    home: str
    engine: str = "duckdb"
    spark_master: str = "local[2]"

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self.check()

    def check(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(
                f"engine {self.engine!r} is not one of {', '.join(ENGINES)} (the Engine resource's engine setting)"
            )

    def replace_day(self, table: str, day: dt.date, start, end, select_sql: str, params: Mapping | None = None) -> int:
        """Replace the day ``day`` (rows of ``table`` with its day column in ``[start, end)``) with the rows of the
        DuckDB statement ``select_sql`` and its named ``params``; returns the rows written."""
        self.check()
        if self.engine == "spark":
            return SparkLake(spark_session(self.spark_master), self.home).replace_day(
                table, day, start, end, select_sql, params
            )
        from resources.warehouse import Warehouse

        with Warehouse(home=self.home).connect() as conn:
            ensure_table(conn, table)
            return replace_window(conn, table, DAILY_TABLES[table], start, end, select_sql, dict(params or {}))
