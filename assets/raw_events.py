"""Ingestion: daily landing files -> raw_events, with every unusable row quarantined with its reason."""

import time

from dagster import AssetCheckResult, AssetCheckSpec, AssetExecutionContext, MaterializeResult, MetadataValue, asset

from assets.common import frame_for_checks, per_day_table
from assets.logic.events import load_raw_day
from assets.partitions import DAILY_ASSET, partition_days
from expectations import validate
from resources import LandingSource, Warehouse


@asset(
    **DAILY_ASSET,
    group_name="ingestion",
    kinds={"duckdb", "parquet"},
    owners=["team:data-platform"],
    check_specs=[
        AssetCheckSpec("raw_events_suite", asset="raw_events", blocking=True, description="GX suite raw_events"),
        AssetCheckSpec(
            "landing_reconciles", asset="raw_events", blocking=True,
            description="Every landing row is accepted or quarantined: read = accepted + quarantined, per day.",
        ),
    ],
)
def raw_events(context: AssetExecutionContext, warehouse: Warehouse, landing: LandingSource) -> MaterializeResult:
    """Accepted landing rows of each day in the canonical event schema; the rest go to
    ``raw_events_quarantine`` with partition, source file, row number, reason and raw text."""
    started = time.perf_counter()
    days = partition_days(context)
    per_day, mismatches = {}, []
    with warehouse.connect() as conn:
        for day in days:
            files = landing.files_for_day(day)
            per_day[day] = load_raw_day(conn, files, day)
            landed = conn.execute("SELECT count(*) FROM read_parquet(?, union_by_name = true)", [files]).fetchone()[0]
            stored = conn.execute(
                """SELECT (SELECT count(*) FROM raw_events WHERE CAST(event_time AS DATE) = $day)
                        + (SELECT count(*) FROM raw_events_quarantine WHERE partition_date = $day)""",
                {"day": day},
            ).fetchone()[0]
            if landed != stored:
                mismatches.append({"day": str(day), "landed": landed, "stored": stored})
        frame, sampled = frame_for_checks(conn, "raw_events", "event_time", days)
    read = sum(c["read"] for c in per_day.values())
    accepted = sum(c["accepted"] for c in per_day.values())
    return MaterializeResult(
        metadata={
            "dagster/row_count": accepted,
            "rows_read": read,
            "rows_quarantined": read - accepted,
            "per_day": per_day_table(per_day),
            "landing_mode": landing.mode,
            "seconds": round(time.perf_counter() - started, 2),
        },
        check_results=[
            validate(frame, "raw_events", "raw_events_suite", extra_metadata={"sampled": sampled}),
            AssetCheckResult(
                check_name="landing_reconciles",
                passed=not mismatches,
                metadata={"days": len(days), "rows_read": read, "mismatches": MetadataValue.json(mismatches)},
            ),
        ],
    )
