"""What every asset does the same way: read its frame for checks, describe its rows."""

import datetime as dt
import time
from typing import Callable

import duckdb
import pandas as pd
from dagster import MaterializeResult, MetadataValue

CHECK_ROW_LIMIT = 500_000


def frame_for_checks(
    conn: duckdb.DuckDBPyConnection, table: str, day_column: str, days: list[dt.date]
) -> tuple[pd.DataFrame, bool]:
    """The rows of ``days`` for a Great Expectations suite, and whether they were sampled.

    Windows above ``CHECK_ROW_LIMIT`` rows are checked on a seeded reservoir sample,
    which keeps GX's pandas validation inside seconds and a few hundred MB.
    """
    first, end = days[0], days[-1] + dt.timedelta(days=1)
    where = f"{day_column} >= CAST($first AS TIMESTAMP) AND {day_column} < CAST($end AS TIMESTAMP)"
    n = conn.execute(f"SELECT count(*) FROM {table} WHERE {where}", {"first": first, "end": end}).fetchone()[0]
    sample = n > CHECK_ROW_LIMIT
    suffix = f" USING SAMPLE reservoir({CHECK_ROW_LIMIT} ROWS) REPEATABLE (7)" if sample else ""
    frame = conn.execute(f"SELECT * FROM {table} WHERE {where}{suffix}", {"first": first, "end": end}).df()
    return frame, sample


def markdown_preview(frame: pd.DataFrame, rows: int = 10) -> MetadataValue:
    return MetadataValue.md(frame.head(rows).to_markdown(index=False) if len(frame) else "_no rows_")


def per_day_table(per_day: dict[dt.date, dict[str, int]]) -> MetadataValue:
    frame = pd.DataFrame.from_dict(per_day, orient="index").rename_axis("day").reset_index()
    return MetadataValue.md(frame.fillna(0).to_markdown(index=False))


def build_daily_table(
    context, warehouse, table: str, day_column: str, build: Callable, more_checks: Callable | None = None,
    more_metadata: Callable | None = None,
) -> MaterializeResult:
    """The body of a daily asset: ``build(conn, day)`` for each day of the window (each replaces its
    day), then the table's suite on the window and any further checks and metadata."""
    from assets.partitions import partition_days
    from expectations import validate

    started = time.perf_counter()
    days = partition_days(context)
    with warehouse.connect() as conn:
        rows = {str(day): build(conn, day) for day in days}
        frame, sampled = frame_for_checks(conn, table, day_column, days)
        checks = [validate(frame, table, f"{table}_suite", extra_metadata={"sampled": sampled})]
        checks += more_checks(conn, days) if more_checks else []
        metadata = more_metadata(conn, days) if more_metadata else {}
    return MaterializeResult(
        metadata={
            "dagster/row_count": sum(rows.values()),
            "rows_per_day": rows,
            "preview": markdown_preview(frame),
            "seconds": round(time.perf_counter() - started, 2),
            **metadata,
        },
        check_results=checks,
    )
