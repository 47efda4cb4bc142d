"""Sensors: a champion chosen outside the pipeline (MLflow UI, ``shopseq promote`` / ``rollback``) re-scores
the latest published day."""

import json

from dagster import AssetKey, DefaultSensorStatus, RunRequest, SensorEvaluationContext, SkipReason, sensor

from assets.models import MAIN_METRIC
from assets.recommendations import ALIAS_MOVES_TAG
from resources import ModelRegistry
from resources.registry import CHAMPION
from workflows.jobs import publish_job


@sensor(job=publish_job, minimum_interval_seconds=60, default_status=DefaultSensorStatus.RUNNING)
def champion_alias_sensor(context: SensorEvaluationContext, registry: ModelRegistry):
    """Every minute: the ``champion`` version of each model. When one moved since the last evaluation,
    re-run the publish job for the latest recommendations partition, so the served rows name the new champion.
    The first evaluation only records the versions (the cursor)."""
    champions = {}
    for name in MAIN_METRIC:
        ref = registry.version_for_alias(name, CHAMPION)
        champions[name] = ref.version if ref else None
    before = json.loads(context.cursor) if context.cursor else None
    context.update_cursor(json.dumps(champions, sort_keys=True))
    if before is None or before == champions:
        return SkipReason("no champion alias moved" if before is not None else "recorded the current champions")
    latest = context.instance.get_latest_materialization_event(AssetKey("recommendations"))
    partition = latest.dagster_event.partition if latest and latest.dagster_event else None
    if partition is None:
        return SkipReason(f"champions moved ({before} -> {champions}) but no recommendations partition is published yet")
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
