"""What every asset does the same way: read its frame for checks, describe its rows."""

import datetime as dt
import time
from collections.abc import Callable

import duckdb
import pandas as pd
from dagster import AssetCheckResult, MaterializeResult, MetadataValue

from assets.logic.warehouse_sql import date_bounds, day_bounds


def window_bounds(conn: duckdb.DuckDBPyConnection, table: str, day_column: str, days: list[dt.date], tz: str):
    """``[start, end)`` of the window ``days`` in ``day_column``: dates for a DATE column,
    else the UTC instants of the shop's days."""
    data_type = conn.execute(
        "SELECT data_type FROM information_schema.columns WHERE table_name = ? AND column_name = ?", [table, day_column]
    ).fetchone()[0]
    if data_type == "DATE":
        return date_bounds(days[0])[0], date_bounds(days[-1])[1]
    return day_bounds(days[0], tz)[0], day_bounds(days[-1], tz)[1]


def suite_check(
    conn: duckdb.DuckDBPyConnection,
    table: str,
    day_column: str,
    days: list[dt.date],
    tz: str = "UTC",
    counting=None,
) -> tuple[AssetCheckResult, pd.DataFrame]:
    """The table's suite over its rows of ``days``: row-wise expectations counted over every row (by DuckDB, or
    the engine's ``counting``), columns and types by GX on the first rows (``expectations.validate_window``).
    Returns the check and those rows."""
    from expectations import validate_window

    start, end = window_bounds(conn, table, day_column, days, tz)
    relation = f"(SELECT * FROM {table} WHERE {day_column} >= $start AND {day_column} < $end)"
    return validate_window(conn, relation, {"start": start, "end": end}, table, f"{table}_suite", counting=counting)


# The days of a window with their UTC bounds, as a relation for reconciliation SQL (params: ``day_windows``).
DAY_WINDOWS_SQL = (
    "(SELECT unnest($days) AS day, unnest($starts) AS start_ts, unnest($ends) AS end_ts, unnest($extra) AS extra)"
)


def day_windows(days: list[dt.date], tz: str, extra: list | None = None) -> dict:
    bounds = [day_bounds(d, tz) for d in days]
    return {
        "days": days,
        "starts": [b[0] for b in bounds],
        "ends": [b[1] for b in bounds],
        "extra": extra or [0] * len(days),
    }


def reconciliation_check(conn: duckdb.DuckDBPyConnection, check_name: str, sql: str, params: dict) -> AssetCheckResult:
    """Row counts of two stages per day (``sql`` returns day, expected, actual), validated by
    the ``stage_reconciliation`` suite over every row of the window (counted in DuckDB)."""
    from expectations import validate

    frame = conn.execute(sql, params).df()
    return validate(frame, "stage_reconciliation", check_name, extra_metadata={"per_day": markdown_preview(frame, 31)})


def point_in_time_check(per_day: pd.DataFrame, check_name: str) -> AssetCheckResult:
    """The ``point_in_time`` suite on one row per as-of day: its cut-off and the latest event time
    any of its rows describes (aggregated over every row, not a sample)."""
    from expectations import validate

    return validate(per_day, "point_in_time", check_name, extra_metadata={"per_day": markdown_preview(per_day, 31)})


def markdown_preview(frame: pd.DataFrame, rows: int = 10) -> MetadataValue:
    return MetadataValue.md(frame.head(rows).to_markdown(index=False) if len(frame) else "_no rows_")


def per_day_table(per_day: dict[dt.date, dict[str, int]]) -> MetadataValue:
    frame = pd.DataFrame.from_dict(per_day, orient="index").rename_axis("day").reset_index()
    return MetadataValue.md(frame.fillna(0).to_markdown(index=False))


def build_daily_table(
    context,
    warehouse,
    engine,
    table: str,
    day_column: str,
    build: Callable,
    more_checks: Callable | None = None,
    more_metadata: Callable | None = None,
) -> MaterializeResult:
    """The body of a daily asset: the engine replaces each day of the window (``Engine.build_day``: on duckdb
    ``build(conn, day, tz)``, on spark its statement), then the table's suite on the window and any further checks
    and metadata."""
    from assets.partitions import partition_days

    started = time.perf_counter()
    days = partition_days(context)
    tz = warehouse.timezone
    with warehouse.connect() as conn:
        rows = {str(day): engine.build_day(conn, table, day, tz, build) for day in days}
        suite, head = suite_check(conn, table, day_column, days, tz, engine.counting(table))
        checks = [suite]
        checks += more_checks(conn, days) if more_checks else []
        metadata = more_metadata(conn, days) if more_metadata else {}
    return MaterializeResult(
        metadata={
            "dagster/row_count": sum(rows.values()),
            "rows_per_day": rows,
            "preview": markdown_preview(head),
            "seconds": round(time.perf_counter() - started, 2),
            **metadata,
        },
        check_results=checks,
    )
