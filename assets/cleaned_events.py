"""Cleaning: raw_events -> cleaned_events (deduplicated, sessions filled, bots flagged)."""

import time

from dagster import (
    AssetCheckSpec,
    AssetExecutionContext,
    Config,
    MaterializeResult,
    asset,
)

from assets.common import (
    DAY_WINDOWS_SQL,
    day_windows,
    markdown_preview,
    per_day_table,
    reconciliation_check,
    suite_check,
)
from assets.logic.events import clean_day
from assets.partitions import DAILY_ASSET, partition_days
from assets.raw_events import raw_events
from resources import Warehouse


class CleaningConfig(Config):
    bot_events_per_day: int = 2000
    """Users with more events than this in a day are flagged ``is_bot``."""


@asset(
    deps=[raw_events],
    **DAILY_ASSET,
    group_name="cleaning",
    kinds={"duckdb"},
    owners=["team:data-platform"],
    check_specs=[
        AssetCheckSpec("cleaned_events_suite", asset="cleaned_events", blocking=True),
        AssetCheckSpec("cleaned_events_reconciles", asset="cleaned_events", blocking=True,
                       description="Cleaned rows per day = distinct event ids among the day's raw events."),
    ],
)
def cleaned_events(context: AssetExecutionContext, config: CleaningConfig, warehouse: Warehouse) -> MaterializeResult:
    """One row per event_id of each day, with sessions derived where the source had none
    and heavy users flagged as bots (kept, not dropped)."""
    started = time.perf_counter()
    days = partition_days(context)
    tz = warehouse.timezone
    with warehouse.connect() as conn:
        per_day = {day: clean_day(conn, day, config.bot_events_per_day, tz) for day in days}
        suite, head = suite_check(conn, "cleaned_events", "event_time", days, tz)
        reconciled = reconciliation_check(
            conn, "cleaned_events_reconciles",
            f"""SELECT b.day,
                      (SELECT count(DISTINCT event_id) FROM raw_events WHERE event_time >= b.start_ts AND event_time < b.end_ts) AS expected,
                      (SELECT count(*) FROM cleaned_events WHERE event_time >= b.start_ts AND event_time < b.end_ts) AS actual
               FROM {DAY_WINDOWS_SQL} b ORDER BY 1""",
            day_windows(days, tz),
        )
    return MaterializeResult(
        metadata={
            "dagster/row_count": sum(c["cleaned"] for c in per_day.values()),
            "per_day": per_day_table(per_day),
            "preview": markdown_preview(head),
            "seconds": round(time.perf_counter() - started, 2),
        },
        check_results=[
            suite,
            reconciled,
        ],
    )
