"""Sensors: landing folders that arrive start their day; failed runs are recorded where an operator looks; the
serving tables follow the daily tables (declarative automation); a champion chosen outside the pipeline (MLflow
UI, ``shopseq promote`` / ``rollback``) re-scores the latest published day."""

import datetime as dt
import hashlib
import json
from pathlib import Path

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    AssetSelection,
    AutomationConditionSensorDefinition,
    DagsterEventType,
    DefaultSensorStatus,
    RunFailureSensorContext,
    RunRequest,
    SensorEvaluationContext,
    SkipReason,
    run_failure_sensor,
    sensor,
)

from assets.logic.catalogue import CATALOGUE
from assets.partitions import HISTORY_WINDOW, RANGE_END_TAG, RANGE_START_TAG
from assets.recommendations import ALIAS_MOVES_TAG
from resources import LandingSource, ModelRegistry, Warehouse
from resources.landing import LANDING_SUFFIXES
from resources.registry import CHAMPION
from workflows.jobs import daily_pipeline_job, publish_job


@sensor(job=publish_job, minimum_interval_seconds=60, default_status=DefaultSensorStatus.RUNNING)
def champion_alias_sensor(context: SensorEvaluationContext, registry: ModelRegistry):
    """Every minute: the ``champion`` version of each model. When one moved since the last evaluation,
    re-run the publish job for the latest recommendations partition, so the served rows name the new champion.
    The first evaluation only records the versions (the cursor)."""
    champions = {}
    for name in CATALOGUE:
        ref = registry.version_for_alias(name, CHAMPION)
        champions[name] = ref.version if ref else None
    before = json.loads(context.cursor) if context.cursor else None
    context.update_cursor(json.dumps(champions, sort_keys=True))
    if before is None or before == champions:
        return SkipReason("no champion alias moved" if before is not None else "recorded the current champions")
    # the latest day published, not the day materialised last: a backfill of an old day must not take the re-scoring
    published = context.instance.get_materialized_partitions(AssetKey("recommendations"))
    partition = max(published) if published else None  # ISO dates: their order is the days'
    if partition is None:
        return SkipReason(
            f"champions moved ({before} -> {champions}) but no recommendations partition is published yet"
        )
    moved = {name: [before.get(name), version] for name, version in champions.items() if before.get(name) != version}
    return RunRequest(
        run_key=f"champions-{json.dumps(champions, sort_keys=True)}-{partition}",
        partition_key=partition,
        tags={
            "shopseq/reason": "champion moved: " + ", ".join(f"{n} {a}->{b}" for n, (a, b) in moved.items()),
            # the publish run writes the moves nobody recorded (made in the MLflow UI) to alias_history
            ALIAS_MOVES_TAG: json.dumps(moved, sort_keys=True),
        },
    )


# Landing folders ----------------------------------------------------------------------------------------------


def landing_fingerprints(landing: LandingSource) -> dict[str, list]:
    """{day: [newest file mtime, files, bytes]} of every landing folder that holds files."""
    prints = {}
    for day in landing.landed_days():
        files = [f.stat() for f in (landing.root / day.isoformat()).iterdir() if f.suffix in LANDING_SUFFIXES]
        prints[day.isoformat()] = [max(s.st_mtime for s in files), len(files), sum(s.st_size for s in files)]
    return prints


def _consecutive_ranges(days: list[str]) -> list[tuple[str, str]]:
    ranges: list[list[dt.date]] = []
    for day in sorted(dt.date.fromisoformat(d) for d in days):
        if ranges and (day - ranges[-1][1]).days == 1:
            ranges[-1][1] = day
        else:
            ranges.append([day, day])
    return [(first.isoformat(), last.isoformat()) for first, last in ranges]


@sensor(job=daily_pipeline_job, minimum_interval_seconds=60, default_status=DefaultSensorStatus.RUNNING)
def landing_sensor(context: SensorEvaluationContext, landing: LandingSource):
    """Every minute, in landing mode ``files``: a day whose landing folder appeared or changed since
    ``raw_events`` last materialised it starts the daily pipeline for it, so late-arriving days run by
    themselves. The materialised days whose features read it (the days after it that ``HISTORY_WINDOW``, the
    features' declared dependency, reaches) run again with it, and consecutive days go as one ranged run (the
    assets' single-run backfill policy), in order."""
    if landing.effective_mode != "files":
        return SkipReason("landing mode is synthetic: the daily schedule generates and runs each day")
    now = landing_fingerprints(landing)
    seen = json.loads(context.cursor) if context.cursor else {}
    context.update_cursor(json.dumps(now, sort_keys=True))
    due = []
    for day, (newest, _, _) in now.items():
        if seen.get(day) == now[day]:
            continue
        latest = context.instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey("raw_events"), asset_partitions=[day]), limit=1
        ).records
        if not latest or latest[0].timestamp < newest:
            due.append(day)
    if not due:
        return SkipReason("no landing folder appeared or changed since its day was materialised")
    done = context.instance.get_materialized_partitions(AssetKey("raw_events"))
    later = {
        (dt.date.fromisoformat(day) + dt.timedelta(days=n)).isoformat()
        for day in due
        for n in range(1, 1 - HISTORY_WINDOW.start_offset)
    }
    runs = sorted(set(due) | (later & done & set(now)))
    requests = []
    for first, last in _consecutive_ranges(runs):
        key = hashlib.sha256(json.dumps([now[d] for d in runs if first <= d <= last]).encode()).hexdigest()[:12]
        reason = {"shopseq/reason": f"landing files of {first}..{last} arrived or changed"}
        if first == last:
            requests.append(RunRequest(run_key=f"landing-{first}-{key}", partition_key=first, tags=reason))
        else:
            requests.append(
                RunRequest(
                    run_key=f"landing-{first}-{last}-{key}",
                    tags={**reason, RANGE_START_TAG: first, RANGE_END_TAG: last},
                )
            )
    return requests


# Failed runs --------------------------------------------------------------------------------------------------

RUN_FAILURES_FILE = "run_failures.jsonl"


def step_error(event) -> str:
    """The message of a step failure event: the user code's own exception where there is one."""
    error = getattr(event.event_specific_data, "error", None)
    cause = error.cause if error is not None and error.cause is not None else error
    return (cause.message if cause else event.message or "").strip()


def failure_record(run, step_failures: list, failed_checks: list[str]) -> dict:
    """What an operator needs about a failed run, one JSON object: when, which job and partition(s), which
    steps failed with what error, which checks failed."""
    tags = run.tags
    partition = tags.get("dagster/partition") or (
        f"{tags[RANGE_START_TAG]}...{tags[RANGE_END_TAG]}" if RANGE_START_TAG in tags else None
    )
    steps = [{"step": event.step_key, "error": step_error(event)[:2000]} for event in step_failures]
    return {
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "run_id": run.run_id,
        "job": run.job_name,
        "partition": partition,
        "failed_steps": steps,
        "failed_checks": failed_checks,
        "reason": tags.get("shopseq/reason"),
    }


def append_failure(home: str, record: dict) -> None:
    """A failed run's record as one line of ``<home>/run_failures.jsonl``: the sensor's, and ``shopseq run``'s for the
    runs it launches (a run both record is listed once, by its id)."""
    with open(Path(home) / RUN_FAILURES_FILE, "a") as out:
        out.write(json.dumps(record) + "\n")


@run_failure_sensor(
    monitor_all_code_locations=False, minimum_interval_seconds=30, default_status=DefaultSensorStatus.RUNNING
)
def run_failure_recorder(context: RunFailureSensorContext, warehouse: Warehouse):
    """Every failed run of this code location becomes a line of ``<home>/run_failures.jsonl`` (listed by
    ``shopseq failures``) and an error in the daemon's log: job, partition, failed steps with their errors,
    failed checks. A file, not a warehouse table: the sensor must never wait for the warehouse lock."""
    checks = [
        f"{event.dagster_event.event_specific_data.asset_key.to_user_string()}:"
        f"{event.dagster_event.event_specific_data.check_name}"
        for event in context.instance.all_logs(
            context.dagster_run.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION
        )
        if not event.dagster_event.event_specific_data.passed
    ]
    record = failure_record(context.dagster_run, context.get_step_failure_events(), checks)
    append_failure(warehouse.home, record)
    context.log.error(
        f"run {record['run_id']} of {record['job']} ({record['partition']}) failed: "
        + "; ".join(f"{s['step']}: {s['error'][:200]}" for s in record["failed_steps"])
    )


# Publishing follows the daily tables by declarative automation (the assets' AutomationCondition.eager()).
publish_automation_sensor = AutomationConditionSensorDefinition(
    "publish_automation",
    target=AssetSelection.groups("serving", "evaluation"),
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=60,
)
