"""Features: point-in-time user and item features and next-item candidates, as of the end of each day."""

from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetDep,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
)

from assets.cleaned_events import cleaned_events
from assets.common import build_daily_table, point_in_time_check, reconciliation_check
from assets.logic.candidates import build_candidates_day, candidate_recall
from assets.logic.features import build_item_features_day, build_user_features_day
from assets.partitions import DAILY_ASSET, HISTORY_WINDOW
from resources import Engine, Warehouse

_COMMON = dict(**DAILY_ASSET, group_name="features", kinds={"duckdb"}, owners=["team:ml"])
_HISTORY = AssetDep(cleaned_events, partition_mapping=HISTORY_WINDOW)


def _leakage_check(conn, table: str, days) -> AssetCheckResult:
    """No row of ``table`` may describe an event at or after its cut-off (every row, per day)."""
    per_day = conn.execute(
        f"""SELECT as_of_date, min(cutoff) AS cutoff, max(last_event_time) AS latest_event_time, count(*) AS rows
            FROM {table} WHERE as_of_date >= $first AND as_of_date <= $last GROUP BY ALL ORDER BY 1""",
        {"first": days[0], "last": days[-1]},
    ).df()
    return point_in_time_check(per_day, f"{table}_no_leakage")


def _active_users_reconcile(conn, days) -> AssetCheckResult:
    """Every user active on the day (not a bot) has a feature row that counts the day's events."""
    return reconciliation_check(
        conn,
        "user_features_reconciles",
        """WITH f AS (SELECT as_of_date, cutoff, count(*) FILTER (WHERE events_1d > 0) AS actual
                      FROM user_features WHERE as_of_date >= $first AND as_of_date <= $last GROUP BY ALL)
           SELECT f.as_of_date AS day,
                  (SELECT count(DISTINCT user_id) FROM cleaned_events
                   WHERE event_time >= f.cutoff - INTERVAL 1 DAY AND event_time < f.cutoff AND NOT is_bot) AS expected,
                  f.actual
           FROM f ORDER BY 1""",
        {"first": days[0], "last": days[-1]},
    )


@asset(
    **_COMMON,
    deps=[_HISTORY],
    check_specs=[
        AssetCheckSpec("user_features_suite", asset="user_features", blocking=True),
        AssetCheckSpec(
            "user_features_no_leakage",
            asset="user_features",
            blocking=True,
            description="No user feature row has an event at or after its cut-off.",
        ),
        AssetCheckSpec(
            "user_features_reconciles",
            asset="user_features",
            blocking=True,
            description="Users active on the day = feature rows with events in the last 24 hours.",
        ),
    ],
)
def user_features(context: AssetExecutionContext, warehouse: Warehouse, engine: Engine) -> MaterializeResult:
    """Per-user behaviour features as of the end of each day (28 days of history, bots excluded):
    counts per event type over 1/3/7/28 days, recency, sessions, funnel ratios, repeat ratio, trend,
    search behaviour (searches not followed by a view, categories searches led to)."""
    return build_daily_table(
        context,
        warehouse,
        engine,
        "user_features",
        "as_of_date",
        build_user_features_day,
        lambda conn, days: [_leakage_check(conn, "user_features", days), _active_users_reconcile(conn, days)],
    )


@asset(
    **_COMMON,
    deps=[_HISTORY],
    check_specs=[
        AssetCheckSpec("item_features_suite", asset="item_features", blocking=True),
        AssetCheckSpec("item_features_no_leakage", asset="item_features", blocking=True),
    ],
)
def item_features(context: AssetExecutionContext, warehouse: Warehouse, engine: Engine) -> MaterializeResult:
    """Per-item popularity, conversion, trend and age as of the end of each day."""
    return build_daily_table(
        context,
        warehouse,
        engine,
        "item_features",
        "as_of_date",
        build_item_features_day,
        lambda conn, days: [_leakage_check(conn, "item_features", days)],
    )


def _recall_metadata(conn, days, tz: str) -> dict:
    """Candidate recall of the last day whose next day has landed (the ranker's ceiling), over all next-day targets
    and over those on cold items; the row ``unseen`` counts the targets no source can reach."""
    for day in reversed(days):
        recall = candidate_recall(conn, day, tz)
        if recall.loc["targets", "found"]:  # the next day exists
            return {
                "candidate_recall_day": str(day),
                "candidate_recall": MetadataValue.md(recall.round(3).to_markdown()),
            }
    return {}


@asset(
    **_COMMON,
    deps=[item_features, _HISTORY],
    check_specs=[AssetCheckSpec("ranking_candidates_suite", asset="ranking_candidates", blocking=True)],
)
def ranking_candidates(context: AssetExecutionContext, warehouse: Warehouse, engine: Engine) -> MaterializeResult:
    """Next-item candidates per recently active user as of the end of each day, from their own
    recent items, co-visitation, category popularity, new arrivals in their categories, trending and global
    popularity, with the ranker's features."""
    return build_daily_table(
        context,
        warehouse,
        engine,
        "ranking_candidates",
        "as_of_date",
        build_candidates_day,
        more_metadata=lambda conn, days: _recall_metadata(conn, days, warehouse.timezone),
    )
