"""DuckDB's view of a spark home's lake: the daily tables Spark writes, as Parquet days under ``<home>/lake``.

``resources.engine`` writes the lake; everything that reads a home (the warehouse connections, ``shopseq predict``)
reads the lake's tables through the views made here, so that no reader needs to know which engine built them.
"""

import datetime as dt
import shutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import duckdb

# The daily tables Spark writes on a spark home, in the graph's order (``spark_sql.daily_statements``); DuckDB reads
# them from the lake. raw_events is the landing reader's (DuckDB's quarantine rules): its accepted rows of each day
# are copied into the lake for Spark to read (``Engine.export_day``), and DuckDB keeps reading its own table.
LAKE_TABLES = ("cleaned_events", "sessions", "user_sequences", "user_features", "item_features", "ranking_candidates")


def lake_select(lake: Path, table: str) -> str:
    """The SELECT of the lake's ``table``: every day's Parquet files (Hive partitioning), the table's columns and
    types. A view's definition takes no parameters, so the path is a quoted SQL string."""
    from assets.logic.spark_sql import table_layout

    files = _sql_string(str(lake / table / "day=*" / "*.parquet"))  # a day's folders only (as ``written``)
    columns = ", ".join(f"CAST({c} AS {t}) AS {c}" for c, t, _, _ in table_layout(table))
    return f"SELECT {columns} FROM read_parquet({files}, hive_partitioning = true)"


def _sql_string(value: str) -> str:
    """``value`` as a SQL string literal: quotes doubled, and no NUL."""
    if "\x00" in value:
        raise ValueError(f"a lake path cannot hold a NUL character: {value!r}")
    return "'" + value.replace("'", "''") + "'"


def written(lake: Path, table: str) -> bool:
    """Whether any day of ``table`` is in the lake."""
    return any((lake / table).glob("day=*/*.parquet"))


def lake_views(lake: Path, tables=LAKE_TABLES) -> dict[str, str]:
    """The SELECT of each of the lake's ``tables`` (``lake_select``): built once by a reader that attaches the lake
    on many connections (``resources.warehouse.Warehouse``)."""
    return {table: lake_select(lake, table) for table in tables}


def attach_lake(conn: duckdb.DuckDBPyConnection, lake: Path, tables=LAKE_TABLES) -> list[str]:
    """Temporary views on ``conn`` named after the lake's ``tables``, so that every reader of a spark home (training,
    serving, the CLI, ``explain``) reads them as DuckDB tables: a temporary view hides the warehouse table of its
    name, and a write to it fails. A read-only connection takes them too. Returns the tables attached (those with
    a day written)."""
    return attach_views(conn, lake, lake_views(lake, tables))


def attach_views(conn: duckdb.DuckDBPyConnection, lake: Path, views: Mapping[str, str]) -> list[str]:
    """``attach_lake`` with the views' SELECTs already built (``lake_views``). A view lists its files when it is
    read, so it sees the days written after it was made; a table with no day yet gets no view (its glob would
    match nothing), so a table first written while ``conn`` is open is attached again after the write."""
    attached = [table for table in views if written(lake, table)]
    for table in attached:
        conn.execute(f"CREATE OR REPLACE TEMP VIEW {table} AS {views[table]}")
    return attached


def replace_day_folder(lake: Path, table: str, day: dt.date, write: Callable[[Path], None]) -> None:
    """Replace the folder of ``day`` of the lake's ``table`` with the files ``write(folder)`` writes into a fresh
    folder, swapped in once they are complete, as Spark's dynamic overwrite swaps its staging folder in at job
    commit (the same window: a delete then a rename; ``resources.engine``). The fresh folder lies outside the
    table's folder (``<lake>/.staging/<table>/``), where no reader's glob finds it; a failed ``write`` removes it
    and leaves the previous day."""
    folder = lake / table / f"day={day.isoformat()}"
    staged = lake / ".staging" / table / folder.name
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    try:
        write(staged)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    folder.parent.mkdir(parents=True, exist_ok=True)
    if folder.exists():
        shutil.rmtree(folder)
    staged.rename(folder)


@contextmanager
def attached_read_only(conn: duckdb.DuckDBPyConnection, warehouse: str, alias: str) -> Iterator[None]:
    """The warehouse file ``warehouse`` attached to ``conn`` as the read-only catalog ``alias`` for the block, with
    the lake's tables among its tables on a spark home: there ``alias`` is an in-memory catalog of views, over the
    file's tables (the file attached as ``<alias>_file``) and over the lake's Parquet."""
    lake = Path(warehouse).parent / "lake"
    if not lake.exists():
        conn.execute(f"ATTACH ? AS {alias} (READ_ONLY)", [warehouse])
        try:
            yield
        finally:
            conn.execute(f"DETACH {alias}")
        return
    conn.execute(f"ATTACH ? AS {alias}_file (READ_ONLY)", [warehouse])
    try:
        conn.execute(f"ATTACH ':memory:' AS {alias}")
        try:
            tables = conn.execute(
                "SELECT table_name FROM duckdb_tables() WHERE database_name = ? AND schema_name = 'main'",
                [f"{alias}_file"],
            ).fetchall()
            for (table,) in tables:
                name = '"' + table.replace('"', '""') + '"'
                conn.execute(f"CREATE VIEW {alias}.{name} AS SELECT * FROM {alias}_file.{name}")
            for table in LAKE_TABLES:
                if written(lake, table):
                    conn.execute(f"CREATE OR REPLACE VIEW {alias}.{table} AS {lake_select(lake, table)}")
            yield
        finally:
            conn.execute(f"DETACH {alias}")
    finally:
        conn.execute(f"DETACH {alias}_file")


def withdraw_days(lake: Path, days: list[dt.date]) -> dict[str, int]:
    """Remove ``days`` from every lake table (their ``day=`` folders), as ``warehouse_sql.withdraw_days`` removes them
    from the warehouse; returns the days removed per table."""
    removed = {}
    for table in ("raw_events", *LAKE_TABLES):
        folders = [lake / table / f"day={day.isoformat()}" for day in days]
        folders = [folder for folder in folders if folder.exists()]
        for folder in folders:
            shutil.rmtree(folder)
        if folders:
            removed[table] = len(folders)
    return removed
