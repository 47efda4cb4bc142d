"""What every asset does the same way: read its frame for checks, describe its rows."""

import datetime as dt

import duckdb
import pandas as pd
from dagster import MetadataValue

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
