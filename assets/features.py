"""Features: point-in-time user and item features and next-item candidates, as of the end of each day."""

import time

from dagster import AssetCheckResult, AssetCheckSpec, AssetExecutionContext, MaterializeResult, MetadataValue, asset

from assets.cleaned_events import cleaned_events
from assets.common import frame_for_checks, markdown_preview
from assets.logic.candidates import build_candidates_day, candidate_recall
from assets.logic.features import build_item_features_day, build_user_features_day
from assets.partitions import WAREHOUSE_POOL, daily_backfill_policy, daily_partitions, partition_days
from expectations import validate
from resources import Warehouse

_COMMON = dict(
    partitions_def=daily_partitions,
    backfill_policy=daily_backfill_policy,
    group_name="features",
    kinds={"duckdb"},
    owners=["team:ml"],
    pool=WAREHOUSE_POOL,
)


def _leakage_check(conn, table: str, time_column: str, days) -> AssetCheckResult:
    """No row of ``table`` may describe an event at or after its cut-off."""
    leaks = conn.execute(
        f"""SELECT count(*) FROM {table}
            WHERE as_of_date >= $first AND as_of_date <= $last AND {time_column} >= cutoff""",
        {"first": days[0], "last": days[-1]},
    ).fetchone()[0]
    return AssetCheckResult(
        check_name=f"{table}_no_leakage",
        passed=leaks == 0,
        metadata={"rows_with_events_after_cutoff": int(leaks)},
    )


def _build(context, warehouse: Warehouse, table: str, build, leakage_column: str | None, extra=None) -> MaterializeResult:
    started = time.perf_counter()
    days = partition_days(context)
    with warehouse.connect() as conn:
        rows = {str(day): build(conn, day) for day in days}
        frame, sampled = frame_for_checks(conn, table, "as_of_date", days)
        checks = [validate(frame, table, f"{table}_suite", extra_metadata={"sampled": sampled})]
        if leakage_column:
            checks.append(_leakage_check(conn, table, leakage_column, days))
        metadata = extra(conn, days) if extra else {}
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


@asset(
    **_COMMON,
    deps=[cleaned_events],
    check_specs=[
        AssetCheckSpec("user_features_suite", asset="user_features", blocking=True),
        AssetCheckSpec("user_features_no_leakage", asset="user_features", blocking=True,
                       description="No user feature row has an event at or after its cut-off."),
    ],
)
def user_features(context: AssetExecutionContext, warehouse: Warehouse) -> MaterializeResult:
    """Per-user behaviour features as of the end of each day (28 days of history, bots excluded):
    counts per event type over 1/3/7/28 days, recency, sessions, funnel ratios, repeat ratio, trend."""
    return _build(context, warehouse, "user_features", build_user_features_day, "last_event_time")


@asset(
    **_COMMON,
    deps=[cleaned_events],
    check_specs=[
        AssetCheckSpec("item_features_suite", asset="item_features", blocking=True),
        AssetCheckSpec("item_features_no_leakage", asset="item_features", blocking=True),
    ],
)
def item_features(context: AssetExecutionContext, warehouse: Warehouse) -> MaterializeResult:
    """Per-item popularity, conversion, trend and age as of the end of each day."""
    return _build(context, warehouse, "item_features", build_item_features_day, "last_event_time")


def _recall_metadata(conn, days) -> dict:
    """Candidate recall of the last day whose next day has landed (the ranker's ceiling)."""
    for day in reversed(days):
        recall = candidate_recall(conn, day)
        if recall["union"] == recall["union"]:  # not NaN: the next day exists
            return {
                "candidate_recall_day": str(day),
                "candidate_recall": MetadataValue.md(
                    "| source | recall of next-day items |\n|---|---|\n"
                    + "\n".join(f"| {k} | {v:.3f} |" for k, v in recall.items())
                ),
            }
    return {}


@asset(
    **_COMMON,
    deps=[user_features, item_features],
    check_specs=[AssetCheckSpec("ranking_candidates_suite", asset="ranking_candidates", blocking=True)],
)
def ranking_candidates(context: AssetExecutionContext, warehouse: Warehouse) -> MaterializeResult:
    """Next-item candidates per recently active user as of the end of each day, from their own
    recent items, co-visitation, category and global popularity, with the ranker's features."""
    return _build(context, warehouse, "ranking_candidates", build_candidates_day, None, _recall_metadata)
