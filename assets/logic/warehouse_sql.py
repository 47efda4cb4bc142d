"""Table definitions of the warehouse and the one idempotent way to replace a partition."""

import datetime as dt
from typing import Sequence
from zoneinfo import ZoneInfo

import duckdb

EVENT_COLUMNS = """
    event_time TIMESTAMP NOT NULL,
    user_id VARCHAR NOT NULL,
    session_id VARCHAR,
    event_type VARCHAR NOT NULL,
    item_id VARCHAR,
    category_id VARCHAR,
    price DOUBLE,
    query VARCHAR,
    event_id VARCHAR NOT NULL
"""

TABLES = {
    "raw_events": f"({EVENT_COLUMNS}, source_file VARCHAR NOT NULL, source_line BIGINT NOT NULL)",
    "raw_events_quarantine": """(
        partition_date DATE NOT NULL, source_file VARCHAR NOT NULL, source_line BIGINT NOT NULL,
        reason VARCHAR NOT NULL, raw VARCHAR)""",
    "cleaned_events": f"({EVENT_COLUMNS}, is_bot BOOLEAN NOT NULL)",
    "sessions": """(
        session_start TIMESTAMP NOT NULL, session_end TIMESTAMP NOT NULL, session_id VARCHAR NOT NULL,
        user_id VARCHAR NOT NULL, n_events BIGINT, n_views BIGINT, n_carts BIGINT, n_purchases BIGINT,
        n_searches BIGINT, n_items BIGINT, duration_s DOUBLE, converted BOOLEAN)""",
    "user_sequences": """(
        day DATE NOT NULL, user_id VARCHAR NOT NULL, n_events BIGINT, n_sessions BIGINT,
        items VARCHAR[], event_types VARCHAR[])""",
}


class SchemaChanged(RuntimeError):
    """A warehouse table was written by a version of shopseq with other columns."""


def ensure_table(conn: duckdb.DuckDBPyConnection, name: str, columns_sql: str | None = None) -> None:
    """Create a table once; its rows are replaced per partition by ``replace_window``.

    An existing table must have exactly the columns this code writes: an older
    layout is refused with a clear error rather than half-filled or silently dropped.
    """
    columns_sql = columns_sql or TABLES[name]
    shape = """SELECT column_name, data_type FROM information_schema.columns
               WHERE table_name = ? AND table_catalog = coalesce(?, current_database()) AND table_schema = 'main'"""
    have = conn.execute(shape, [name, None]).fetchall()
    if not have:
        conn.execute(f"CREATE TABLE {name} {columns_sql}")
        return
    conn.execute(f"CREATE OR REPLACE TEMP TABLE expected_shape {columns_sql}")
    want = conn.execute(shape, ["expected_shape", "temp"]).fetchall()
    conn.execute("DROP TABLE expected_shape")
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
    select_sql: str | list[str],
    params: Sequence | dict | None = None,
) -> int:
    """Delete ``[start, end)`` of ``table`` and insert ``select_sql`` (or each of a list of SELECTs, one
    after another) in one transaction.

    Re-running a partition therefore replaces exactly that partition; a failure
    rolls back and leaves the previous rows in place. Returns the rows inserted.
    """
    conn.execute("BEGIN TRANSACTION")
    try:
        conn.execute(f"DELETE FROM {table} WHERE {time_column} >= ? AND {time_column} < ?", [start, end])
        for select in [select_sql] if isinstance(select_sql, str) else select_sql:
            conn.execute(f"INSERT INTO {table} BY NAME {select}", params or [])
        inserted = conn.execute(
            f"SELECT count(*) FROM {table} WHERE {time_column} >= ? AND {time_column} < ?", [start, end]
        ).fetchone()[0]
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return int(inserted)


def day_bounds(day: dt.date, tz: str = "UTC") -> tuple[dt.datetime, dt.datetime]:
    """The UTC instants (naive, like ``event_time``) where the shop's day ``day`` starts and ends.

    Partition keys are days in the shop's timezone; event times are stored in UTC.
    A day is 23 or 25 hours long where its timezone changes clocks.
    """
    zone = ZoneInfo(tz)
    start, end = (dt.datetime.combine(d, dt.time(), tzinfo=zone) for d in (day, day + dt.timedelta(days=1)))
    return tuple(t.astimezone(dt.timezone.utc).replace(tzinfo=None) for t in (start, end))


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


def replace_window_from_frame(
    conn: duckdb.DuckDBPyConnection, table: str, time_column: str, start, end, frame
) -> int:
    """``replace_window`` with the rows of a pandas frame (the table must exist)."""
    conn.register("incoming_frame", frame)
    try:
        return replace_window(conn, table, time_column, start, end, "SELECT * FROM incoming_frame")
    finally:
        conn.unregister("incoming_frame")
