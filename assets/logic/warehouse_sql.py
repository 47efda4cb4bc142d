"""The one idempotent way to replace a partition of a warehouse table, and the tables' creation from the schema."""

import datetime as dt
from collections.abc import Iterable, Sequence
from zoneinfo import ZoneInfo, available_timezones

import duckdb
import pandas as pd
import pyarrow as pa

from assets.logic.schema import DAILY_TABLES, table_columns

# The DuckDB types whose Arrow column ``to_pandas`` makes what ``.df()`` makes: integers and booleans only without
# NULLs (``.df()`` makes nullable Int / boolean columns of them, Arrow floats and objects), DATE once cast to a
# timestamp (as ``.df()`` casts it), TIMESTAMP_NS (a pandas timestamp column stored: in most training sets). Not
# UUID (Arrow: str, ``.df()``: uuid.UUID), ENUM, DECIMAL, HUGEINT, lists.
_WITHOUT_NULLS_TYPES = {
    "TINYINT",
    "SMALLINT",
    "INTEGER",
    "BIGINT",
    "UTINYINT",
    "USMALLINT",
    "UINTEGER",
    "UBIGINT",
    "BOOLEAN",
}
_ALIKE_TYPES = {"VARCHAR", "DOUBLE", "FLOAT", "TIMESTAMP", "TIMESTAMP_NS", "DATE", *_WITHOUT_NULLS_TYPES}


def _converts_alike(duckdb_type: str, column: pa.ChunkedArray) -> bool:
    return duckdb_type in _ALIKE_TYPES and (duckdb_type not in _WITHOUT_NULLS_TYPES or column.null_count == 0)


def fetch_frame(conn: duckdb.DuckDBPyConnection, query: str, params: Sequence | dict | None = None) -> pd.DataFrame:
    """The rows of ``query`` as a pandas frame equal to DuckDB's ``.df()``, through Arrow, which makes the Python
    strings of key columns about twice as fast (BENCHMARKS.md). A result with a column of another type is
    converted by DuckDB; integers or booleans with NULLs, by DuckDB from the Arrow table (``_converts_alike``)."""
    relation = conn.sql(query, params=params)
    types = [str(kind) for kind in relation.types]
    if not set(types) <= _ALIKE_TYPES:
        return relation.df()
    table = relation.to_arrow_table()
    if not all(_converts_alike(kind, column) for kind, column in zip(types, table.columns, strict=True)):
        return conn.from_arrow(table).df()
    for i, kind in enumerate(types):
        if kind == "DATE":  # as .df() makes it: datetime64[us], not Python dates
            table = table.set_column(i, table.field(i).name, table.column(i).cast(pa.timestamp("us")))
    return table.to_pandas()


def with_columns(frame: pd.DataFrame, **columns) -> pd.DataFrame:
    """``frame.assign(**columns)`` for a frame of one's own (one just fetched), set in place: ``assign`` copies
    every column first (a second copy of a training set's days before the one ``pd.concat`` makes)."""
    for name, value in columns.items():
        frame[name] = value
    return frame


def _daily_tables(conn: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """The daily tables this warehouse holds, with their day column and its type."""
    types = dict(
        conn.execute(
            """SELECT table_name || '.' || column_name, data_type FROM information_schema.columns
           WHERE table_schema = 'main' AND table_catalog = current_database()"""
        ).fetchall()
    )
    return {t: types[f"{t}.{c}"] for t, c in DAILY_TABLES.items() if f"{t}.{c}" in types}


def withdraw_days(conn: duckdb.DuckDBPyConnection, days: list[dt.date], tz: str) -> dict[str, int]:
    """Delete ``days`` from every daily table, in one transaction; returns the rows deleted per table.

    For days whose landing was withdrawn (a re-ingested file no longer has them): their rows, and everything
    derived from them that is partitioned by those days, must not outlive the landing they came from.
    """
    deleted: dict[str, int] = {}
    conn.execute("BEGIN TRANSACTION")
    try:
        for table, kind in _daily_tables(conn).items():
            column, removed = DAILY_TABLES[table], 0
            for day in days:
                start, end = date_bounds(day) if kind == "DATE" else day_bounds(day, tz)
                removed += conn.execute(
                    f"DELETE FROM {table} WHERE {column} >= ? AND {column} < ?", [start, end]
                ).fetchall()[0][0]
            if removed:
                deleted[table] = removed
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return deleted


class SchemaChanged(RuntimeError):
    """A warehouse table was written by a version of shopseq with other columns."""


def ensure_table(conn: duckdb.DuckDBPyConnection, name: str, add_new_columns: bool = False) -> None:
    """Create the table ``name`` of the schema (``assets/logic/schema.py``) once; its rows are replaced per partition
    by ``replace_window``.

    An existing table must have exactly the columns this code writes: an older layout is refused
    with a clear error rather than half-filled or silently dropped. With ``add_new_columns`` (logs
    and served tables, whose old rows simply predate a column) an older layout that lacks only new
    columns gains them, null in its old rows.
    """
    columns_sql = table_columns(name)
    shape = """SELECT column_name, data_type FROM information_schema.columns
               WHERE table_name = ? AND table_catalog = coalesce(?, current_database()) AND table_schema = 'main'"""
    have = conn.execute(shape, [name, None]).fetchall()
    if not have:
        conn.execute(f"CREATE TABLE {name} {columns_sql}")
        return
    conn.execute(f"CREATE OR REPLACE TEMP TABLE expected_shape {columns_sql}")
    want = conn.execute(shape, ["expected_shape", "temp"]).fetchall()
    conn.execute("DROP TABLE expected_shape")
    added = [(c, t) for c, t in want if c not in {name for name, _ in have}]
    if add_new_columns and added and set(have) <= set(want):
        for column, data_type in added:
            conn.execute(f"ALTER TABLE {name} ADD COLUMN {column} {data_type}")
        return
    if sorted(have) != sorted(want):
        missing = sorted({c for c, _ in want} - {c for c, _ in have})
        extra = sorted({c for c, _ in have} - {c for c, _ in want})
        raise SchemaChanged(
            f"warehouse table {name} was written by another version of shopseq (missing columns {missing[:8]}, "
            f"extra {extra[:8]}); it is derived data: DROP TABLE {name} (or delete the warehouse file) and "
            "re-materialise its partitions"
        )


def replace_window(
    conn: duckdb.DuckDBPyConnection,
    table: str,
    time_column: str,
    start: dt.datetime,
    end: dt.datetime,
    select_sql: str | Iterable[str | tuple[str, Sequence | dict] | duckdb.DuckDBPyRelation],
    params: Sequence | dict | None = None,
) -> int:
    """Delete ``[start, end)`` of ``table`` and insert ``select_sql`` (or each of several SELECTs or relations,
    one after another) in one transaction. A SELECT binds ``params``, or its own when given as ``(sql, params)``.

    Re-running a partition therefore replaces exactly that partition; a failure
    rolls back and leaves the previous rows in place. Returns the rows inserted.
    """
    conn.execute("BEGIN TRANSACTION")
    try:
        conn.execute(f"DELETE FROM {table} WHERE {time_column} >= ? AND {time_column} < ?", [start, end])
        for select in [select_sql] if isinstance(select_sql, str) else select_sql:
            if isinstance(select, duckdb.DuckDBPyRelation):
                select.query("incoming", f"INSERT INTO {table} BY NAME SELECT * FROM incoming")
            else:
                sql, bound = select if isinstance(select, tuple) else (select, params)
                conn.execute(f"INSERT INTO {table} BY NAME {sql}", bound or [])
        inserted = conn.execute(
            f"SELECT count(*) FROM {table} WHERE {time_column} >= ? AND {time_column} < ?", [start, end]
        ).fetchone()[0]
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return int(inserted)


def check_timezone(name: str, where: str = "timezone") -> str:
    """``name`` when it is an IANA time zone name exactly as the tz database spells it (``Asia/Shanghai``,
    ``UTC``), else a ``ValueError`` naming ``where`` it came from. Offsets (``UTC+3``), other spellings (``utc``)
    and made-up names are refused before they reach DuckDB or a partition key."""
    if not isinstance(name, str) or name == "localtime" or name not in available_timezones():
        raise ValueError(
            f"{where} {name!r} is not an IANA time zone name (for example UTC, Europe/Berlin, Asia/Shanghai; "
            "names are case-sensitive, offsets such as UTC+3 are not accepted)"
        )
    return name


def day_bounds(day: dt.date, tz: str = "UTC") -> tuple[dt.datetime, dt.datetime]:
    """The UTC instants (naive, like ``event_time``) where the shop's day ``day`` starts and ends.

    Partition keys are days in the shop's timezone; event times are stored in UTC.
    A day is 23 or 25 hours long where its timezone changes clocks.
    """
    zone = ZoneInfo(tz)
    start, end = (dt.datetime.combine(d, dt.time(), tzinfo=zone) for d in (day, day + dt.timedelta(days=1)))
    return tuple(t.astimezone(dt.UTC).replace(tzinfo=None) for t in (start, end))


# The next day of each cut-off day D, bound as ``$windows`` (``label_windows``): one row (day, label_start, label_end).
LABEL_WINDOWS_SQL = (
    "(SELECT unnest(CAST($windows AS STRUCT(day DATE, label_start TIMESTAMP, label_end TIMESTAMP)[]), "
    "recursive := true))"
)


def label_windows(days: Sequence[dt.date], tz: str) -> list[dict]:
    """For each cut-off day D, the day D + 1 its labels come from, as ``day_bounds`` gives it (the one definition
    of "the next day": 23 or 25 hours where the clocks change), for ``LABEL_WINDOWS_SQL``."""
    windows = []
    for day in days:
        start, end = day_bounds(day + dt.timedelta(days=1), tz)
        windows.append({"day": day, "label_start": start, "label_end": end})
    return windows


def date_bounds(day: dt.date) -> tuple[dt.date, dt.date]:
    """``[day, day + 1)`` for tables keyed by a DATE column (as_of_date, day)."""
    return day, day + dt.timedelta(days=1)


def replace_table(conn: duckdb.DuckDBPyConnection, table: str, frame) -> int:
    """Replace a whole (unpartitioned) table with a pandas frame, atomically."""
    conn.register("incoming_frame", frame)
    try:
        conn.execute(f"CREATE OR REPLACE TABLE {table} AS SELECT * FROM incoming_frame")
    finally:
        conn.unregister("incoming_frame")
    return len(frame)


def replace_window_from_frames(
    conn: duckdb.DuckDBPyConnection, table: str, time_column: str, start, end, frames: Iterable[pd.DataFrame | pa.Table]
) -> int:
    """``replace_window`` with the rows of pandas frames or Arrow tables (the table must exist), in one transaction.
    ``frames`` may be a generator: each frame is made, inserted and let go before the next, so a day written in
    batches is never held whole; if making one fails, the window keeps its previous rows. The frames are read as
    relations, not registered as views: a view registered inside the transaction keeps its frame alive until the
    commit (about 0.5 GB per million recommendations)."""
    relations = (conn.from_arrow(frame) if isinstance(frame, pa.Table) else conn.from_df(frame) for frame in frames)
    return replace_window(conn, table, time_column, start, end, relations)
