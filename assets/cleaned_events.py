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
    window_bounds,
)
from assets.logic.events import clean_day, cleaning_counts
from assets.partitions import DAILY_ASSET, partition_days
from assets.raw_events import raw_events
from expectations import validate_window
from resources import Engine, Warehouse

# The rows of a window with the day each belongs to (the bounds ``clean_day`` replaced): the suite's key is
# (partition_date, event_id), since an event id is unique within its day, not across days
# (assets/logic/events.py), so a range is checked by exactly the rule of its days checked one by one.
_WINDOW_WITH_DAYS = f"""(SELECT e.*, b.day AS partition_date
    FROM cleaned_events e JOIN {DAY_WINDOWS_SQL} b ON e.event_time >= b.start_ts AND e.event_time < b.end_ts
    WHERE e.event_time >= $start AND e.event_time < $end)"""


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
        AssetCheckSpec(
            "cleaned_events_reconciles",
            asset="cleaned_events",
            blocking=True,
            description="Cleaned rows per day = distinct event ids among the day's raw events.",
        ),
    ],
)
def cleaned_events(
    context: AssetExecutionContext, config: CleaningConfig, warehouse: Warehouse, engine: Engine
) -> MaterializeResult:
    """One row per event_id of each day (an id is unique within its day), with sessions derived where the source
    had none and heavy users flagged as bots (kept, not dropped)."""
    started = time.perf_counter()
    days = partition_days(context)
    tz = warehouse.timezone
    with warehouse.connect() as conn:
        per_day = {
            day: cleaning_counts(
                conn,
                day,
                engine.build_day(
                    conn, "cleaned_events", day, tz, clean_day, bot_events_per_day=config.bot_events_per_day
                ),
                tz,
            )
            for day in days
        }
        start, end = window_bounds(conn, "cleaned_events", "event_time", days, tz)
        suite, head = validate_window(
            conn,
            _WINDOW_WITH_DAYS,
            {"start": start, "end": end, **day_windows(days, tz)},
            "cleaned_events",
            "cleaned_events_suite",
            counting=engine.counting("cleaned_events"),
        )
        reconciled = reconciliation_check(
            conn,
            "cleaned_events_reconciles",
            f"""SELECT b.day,
                      (SELECT count(DISTINCT event_id) FROM raw_events WHERE event_time >= b.start_ts
                          AND event_time < b.end_ts) AS expected,
                      (SELECT count(*) FROM cleaned_events WHERE event_time >= b.start_ts
                          AND event_time < b.end_ts) AS actual
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
