"""``shopseq explain``: the lineage of one user's served rows -- model, data partitions, checks."""

import datetime as dt
from pathlib import Path

from assets.logic.features import HISTORY_DAYS

# The assets a day's served rows were built from, nearest first.
UPSTREAM = (
    "recommendations",
    "next_action_predictions",
    "ranking_candidates",
    "user_features",
    "item_features",
    "cleaned_events",
    "raw_events",
)


def _checks(instance, asset: str, day: dt.date) -> str:
    """The checks of the latest materialisation of ``asset`` that covered ``day``, and their results."""
    from dagster import AssetKey, AssetRecordsFilter, DagsterEventType

    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=[day.isoformat()]), limit=1
    ).records
    if not records:
        return f"  {asset:<24} no materialisation of {day} in this Dagster instance"
    run_id = records[0].run_id
    evaluations = [
        e.dagster_event.event_specific_data
        for e in instance.all_logs(run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION)
        if e.dagster_event.event_specific_data.asset_key == AssetKey(asset)
    ]
    results = ", ".join(f"{c.check_name} {'passed' if c.passed else 'FAILED'}" for c in evaluations) or "no checks ran"
    return (
        f"  {asset:<24} run {run_id[:8]} at {dt.datetime.fromtimestamp(records[0].timestamp):%Y-%m-%d %H:%M}: {results}"
    )


def _span(days: str) -> str:
    """``2025-03-06,2025-03-07,...`` -> ``2025-03-06..2025-03-12 (7 days)``."""
    parts = days.split(",")
    return f"{parts[0]}..{parts[-1]} ({len(parts)} days)" if len(parts) > 1 else days


# The served rows of a user and day, per table that may hold them.
_SERVED = {
    "recommendations": """SELECT 'recommendations' AS "table", model_name, model_version, run_id, count(*) AS rows,
                                 list(item_id ORDER BY rank)[1:5] AS first_items, min(scored_at) AS scored_at
                          FROM recommendations WHERE user_id = $user AND as_of_date = $day GROUP BY ALL""",
    "next_action_predictions": """SELECT 'next_action_predictions' AS "table", model_name, model_version, run_id,
                                         count(*) AS rows, list(action || '=' || round(probability, 3)) AS first_items,
                                         min(scored_at) AS scored_at
                                  FROM next_action_predictions WHERE user_id = $user AND as_of_date = $day
                                  GROUP BY ALL""",
}


def explain(warehouse, registry, instance, user: str, day: dt.date) -> str:
    """Which model versions scored ``user`` on ``day``, from which partitions, under which checks."""
    if not Path(warehouse.path).exists():
        raise ValueError(f"{warehouse.path} does not exist: run shopseq run (or demo) on this home first")
    with warehouse.connect(read_only=True) as conn:
        published = {
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_name IN ('recommendations', "
                "'next_action_predictions', 'item_next_items')"
            ).fetchall()
        }
        tables = published & set(_SERVED)  # the per-user tables
        if not tables:
            lists = " (its item_next_items are lists per item, for sessions, not rows of a user)"
            raise ValueError(
                f"{warehouse.path} holds no recommendations or next-action predictions: nothing has been served to a "
                f"user on this home{lists if published else ''}"
            )
        served = conn.execute(
            " UNION ALL ".join(_SERVED[t] for t in sorted(tables)) + " ORDER BY 1, 2", {"user": user, "day": day}
        ).df()
    if served.empty:
        raise ValueError(f"no recommendation or prediction row for user {user!r} on {day}")
    lines = [
        f"User {user}, {day} (features as of the end of the day, in the shop's timezone {warehouse.timezone}):",
        "",
    ]
    for row in served.itertuples():
        tags = registry.run_tags(registry.version(row.model_name, int(row.model_version)))
        lines += [
            f"  {row.table}: {row.rows} row(s) {', '.join(row.first_items)}{' ...' if row.rows > 5 else ''}",
            f"    model {row.model_name} v{row.model_version} ({tags.get('policy_kind', 'learned')} policy "
            f"{tags.get('policy', 'lightgbm')}), MLflow run {row.run_id}, scored {row.scored_at:%Y-%m-%d %H:%M}",
            f"    trained on cut-offs {_span(tags.get('train_cutoffs', '?'))}, hold-out "
            f"{tags.get('holdout_day', '?')}, "
            f"code {tags.get('code_version', '?')[:12]}, Dagster run {tags.get('dagster_run_id', '?')[:8]}",
        ]
    with warehouse.connect(read_only=True) as conn:
        landed = conn.execute("SELECT min(event_time) FROM cleaned_events").fetchone()[0]
    first = max(day - dt.timedelta(days=HISTORY_DAYS - 1), landed.date() if landed else day)
    lines += [
        "",
        f"Data: cleaned_events partitions {first}..{day} (up to {HISTORY_DAYS} days of history before the cut-off).",
        "",
        f"Checks of the partition {day}:",
    ]
    lines += [_checks(instance, asset, day) for asset in UPSTREAM]
    return "\n".join(lines)
