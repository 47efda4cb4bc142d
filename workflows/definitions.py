"""The one Definitions object of the shopseq code location (loaded by workspace.yaml)."""

from dagster import Definitions, EnvVar, in_process_executor

from assets import ALL_ASSETS
from resources import Engine, LandingSource, ModelRegistry, Warehouse
from workflows.jobs import daily_pipeline_job, daily_schedule, publish_job, training_job, weekly_training_schedule
from workflows.sensors import champion_alias_sensor, landing_sensor, publish_automation_sensor, run_failure_recorder


def build_resources(home: str, tracking_uri: str = "", landing_mode: str = "") -> dict:
    """The resources of one home folder; tests call this with a temporary home. Settings left empty are read from
    their environment variables as a run starts (see each resource)."""
    return {
        "warehouse": Warehouse(home=home),
        "engine": Engine(home=home),
        "landing": LandingSource(home=home, mode=landing_mode),
        "registry": ModelRegistry(home=home, tracking_uri=tracking_uri),
    }


def build_definitions(resources: dict) -> Definitions:
    """The code location with the given resources: ``shopseq run`` and ``demo`` launch its jobs on their home."""
    return Definitions(
        assets=ALL_ASSETS,
        jobs=[daily_pipeline_job, training_job, publish_job],
        schedules=[daily_schedule, weekly_training_schedule],
        sensors=[landing_sensor, run_failure_recorder, publish_automation_sensor, champion_alias_sensor],
        executor=in_process_executor,
        resources=resources,
    )


# Dagster reads SHOPSEQ_HOME when a run or a sensor tick starts, and names it when it is unset.
defs = build_definitions(build_resources(EnvVar("SHOPSEQ_HOME")))
