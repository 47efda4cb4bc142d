"""Ingestion: daily landing files -> raw_events, with every unusable row quarantined with its reason."""

import datetime as dt
import time

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
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
from assets.logic.events import load_raw_day
from assets.logic.monitoring import daily_event_counts, mix_shifts, volume_anomalies
from assets.partitions import DAILY_ASSET, partition_days
from resources import Engine, LandingSource, Warehouse

MONITOR_HISTORY_DAYS = 60


@asset(
    **DAILY_ASSET,
    group_name="ingestion",
    kinds={"duckdb", "parquet"},
    owners=["team:data-platform"],
    check_specs=[
        AssetCheckSpec("raw_events_suite", asset="raw_events", blocking=True, description="GX suite raw_events"),
        AssetCheckSpec(
            "landing_reconciles",
            asset="raw_events",
            blocking=True,
            description="Every landing row is accepted or quarantined: read = accepted + quarantined, per day.",
        ),
        AssetCheckSpec(
            "raw_events_volume",
            asset="raw_events",
            blocking=False,
            description=(
                "Advisory: daily accepted rows inside the 99% interval of an AR(1) forecast from the days before."
            ),
        ),
        AssetCheckSpec(
            "raw_events_event_mix",
            asset="raw_events",
            blocking=False,
            description="Advisory: event-type shares within 0.15 (total variation) of the 7 days before.",
        ),
    ],
)
def raw_events(
    context: AssetExecutionContext, warehouse: Warehouse, landing: LandingSource, engine: Engine
) -> MaterializeResult:
    """Accepted landing rows of each day in the canonical event schema; the rest go to
    ``raw_events_quarantine`` with partition, source file, line, reason and raw text. On a spark home each day is
    also copied into the lake, for Spark to clean."""
    started = time.perf_counter()
    days = partition_days(context)
    tz = warehouse.timezone
    per_day, landed = {}, []
    with warehouse.connect() as conn:
        for day in days:
            files = landing.files_for_day(day)
            per_day[day] = load_raw_day(conn, files, day, tz)
            engine.export_day(conn, "raw_events", day, tz)
            rows = conn.execute("SELECT count(*) FROM read_parquet(?, union_by_name = true)", [files]).fetchone()[0]
            landed.append(rows)
        reconciled = reconciliation_check(
            conn,
            "landing_reconciles",
            f"""SELECT b.day, b.extra AS expected,
                       (SELECT count(*) FROM raw_events r WHERE r.event_time >= b.start_ts AND r.event_time < b.end_ts)
                     + (SELECT count(*) FROM raw_events_quarantine q WHERE q.partition_date = b.day) AS actual
                FROM {DAY_WINDOWS_SQL} b ORDER BY 1""",
            day_windows(days, tz, landed),
        )
        suite, head = suite_check(conn, "raw_events", "event_time", days, tz)
        monitors = _monitors(conn, days, tz)
    read = sum(c["read"] for c in per_day.values())
    accepted = sum(c["accepted"] for c in per_day.values())
    return MaterializeResult(
        metadata={
            "dagster/row_count": accepted,
            "rows_read": read,
            "rows_quarantined": read - accepted,
            "per_day": per_day_table(per_day),
            "landing_mode": landing.effective_mode,
            "timezone": tz,
            "preview": markdown_preview(head),
            "seconds": round(time.perf_counter() - started, 2),
        },
        check_results=[
            suite,
            reconciled,
            *monitors,
        ],
    )


def _monitors(conn, days: list[dt.date], tz: str) -> list[AssetCheckResult]:
    """Volume and event-mix monitors over the window and up to ``MONITOR_HISTORY_DAYS`` before it."""
    by_type = daily_event_counts(conn, days[0] - dt.timedelta(days=MONITOR_HISTORY_DAYS), days[-1], tz)
    judged = [d for d in days if d in by_type.index]
    volume = volume_anomalies(by_type.sum(axis=1), judged)
    mix = mix_shifts(by_type, judged)
    return [
        _advisory("raw_events_volume", volume, "anomalous", "days outside the forecast interval"),
        _advisory("raw_events_event_mix", mix, "shifted", "days whose event-type mix shifted"),
    ]


def _advisory(name: str, table: pd.DataFrame, flag: str, what: str) -> AssetCheckResult:
    flagged = table[table[flag]] if len(table) else table
    return AssetCheckResult(
        check_name=name,
        passed=len(flagged) == 0,
        severity=AssetCheckSeverity.WARN,
        description=f"{len(flagged)} {what}: {', '.join(flagged['day'])}" if len(flagged) else None,
        metadata={
            "days_judged": len(table),
            "days_flagged": len(flagged),
            "per_day": MetadataValue.md(
                table.to_markdown(index=False) if len(table) else "_not enough history to judge_"
            ),
        },
    )
