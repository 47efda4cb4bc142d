"""Sequences: cleaned_events -> sessions and per-user daily behaviour sequences."""

import time

from dagster import AssetCheckSpec, AssetExecutionContext, MaterializeResult, asset

from assets.cleaned_events import cleaned_events
from assets.common import frame_for_checks, markdown_preview
from assets.logic.sequences import build_sessions_day, build_user_sequences_day
from assets.partitions import WAREHOUSE_POOL, daily_backfill_policy, daily_partitions, partition_days
from expectations import validate
from resources import Warehouse

_COMMON = dict(
    deps=[cleaned_events],
    partitions_def=daily_partitions,
    backfill_policy=daily_backfill_policy,
    group_name="sequences",
    kinds={"duckdb"},
    owners=["team:data-platform"],
    pool=WAREHOUSE_POOL,
)


def _build(context: AssetExecutionContext, warehouse: Warehouse, table: str, day_column: str, build) -> MaterializeResult:
    started = time.perf_counter()
    days = partition_days(context)
    with warehouse.connect() as conn:
        rows = {str(day): build(conn, day) for day in days}
        frame, sampled = frame_for_checks(conn, table, day_column, days)
    return MaterializeResult(
        metadata={
            "dagster/row_count": sum(rows.values()),
            "rows_per_day": rows,
            "preview": markdown_preview(frame),
            "seconds": round(time.perf_counter() - started, 2),
        },
        check_results=[validate(frame, table, f"{table}_suite", extra_metadata={"sampled": sampled})],
    )


@asset(**_COMMON, check_specs=[AssetCheckSpec("sessions_suite", asset="sessions", blocking=True)])
def sessions(context: AssetExecutionContext, warehouse: Warehouse) -> MaterializeResult:
    """One row per session (keyed by its start): events, views, carts, purchases, duration, conversion."""
    return _build(context, warehouse, "sessions", "session_start", build_sessions_day)


@asset(**_COMMON, check_specs=[AssetCheckSpec("user_sequences_suite", asset="user_sequences", blocking=True)])
def user_sequences(context: AssetExecutionContext, warehouse: Warehouse) -> MaterializeResult:
    """Each user's items and event types of the day, in time order."""
    return _build(context, warehouse, "user_sequences", "day", build_user_sequences_day)
