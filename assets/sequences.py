"""Sequences: cleaned_events -> sessions and per-user daily behaviour sequences."""

from dagster import AssetCheckSpec, AssetExecutionContext, MaterializeResult, asset

from assets.cleaned_events import cleaned_events
from assets.common import build_daily_table
from assets.logic.sequences import build_sessions_day, build_user_sequences_day
from assets.partitions import DAILY_ASSET
from resources import Warehouse

_COMMON = dict(**DAILY_ASSET, deps=[cleaned_events], group_name="sequences", kinds={"duckdb"}, owners=["team:data-platform"])


@asset(**_COMMON, check_specs=[AssetCheckSpec("sessions_suite", asset="sessions", blocking=True)])
def sessions(context: AssetExecutionContext, warehouse: Warehouse) -> MaterializeResult:
    """One row per session (keyed by its start): events, views, carts, purchases, duration, conversion."""
    return build_daily_table(context, warehouse, "sessions", "session_start", build_sessions_day)


@asset(**_COMMON, check_specs=[AssetCheckSpec("user_sequences_suite", asset="user_sequences", blocking=True)])
def user_sequences(context: AssetExecutionContext, warehouse: Warehouse) -> MaterializeResult:
    """Each user's items and event types of the day, in time order."""
    return build_daily_table(context, warehouse, "user_sequences", "day", build_user_sequences_day)
