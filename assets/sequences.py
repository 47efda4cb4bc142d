"""Sequences: cleaned_events -> sessions and per-user daily behaviour sequences."""

from dagster import AssetCheckSpec, AssetExecutionContext, MaterializeResult, asset

from assets.cleaned_events import cleaned_events
from assets.common import (
    DAY_WINDOWS_SQL,
    build_daily_table,
    day_windows,
    reconciliation_check,
)
from assets.logic.sequences import build_sessions_day, build_user_sequences_day
from assets.partitions import DAILY_ASSET
from resources import Engine, Warehouse

_COMMON = dict(
    **DAILY_ASSET, deps=[cleaned_events], group_name="sequences", kinds={"duckdb"}, owners=["team:data-platform"]
)


@asset(**_COMMON, check_specs=[AssetCheckSpec("sessions_suite", asset="sessions", blocking=True)])
def sessions(context: AssetExecutionContext, warehouse: Warehouse, engine: Engine) -> MaterializeResult:
    """One row per session (keyed by its start): events, views, carts, purchases, duration, conversion."""
    return build_daily_table(context, warehouse, engine, "sessions", "session_start", build_sessions_day)


@asset(
    **_COMMON,
    check_specs=[
        AssetCheckSpec("user_sequences_suite", asset="user_sequences", blocking=True),
        AssetCheckSpec(
            "user_sequences_reconcile",
            asset="user_sequences",
            blocking=True,
            description="Events in the day's sequences = the day's cleaned events of non-bot users.",
        ),
    ],
)
def user_sequences(context: AssetExecutionContext, warehouse: Warehouse, engine: Engine) -> MaterializeResult:
    """Each user's items and event types of the day, in time order."""
    tz = warehouse.timezone

    def reconcile(conn, days):
        return [
            reconciliation_check(
                conn,
                "user_sequences_reconcile",
                f"""SELECT b.day,
                      (SELECT count(*) FROM cleaned_events WHERE event_time >= b.start_ts AND event_time < b.end_ts
                         AND NOT is_bot) AS expected,
                      (SELECT coalesce(sum(n_events), 0) FROM user_sequences WHERE day = b.day) AS actual
               FROM {DAY_WINDOWS_SQL} b ORDER BY 1""",
                day_windows(days, tz),
            )
        ]

    return build_daily_table(context, warehouse, engine, "user_sequences", "day", build_user_sequences_day, reconcile)
