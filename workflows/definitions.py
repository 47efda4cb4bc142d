"""The one Definitions object of the shopseq code location (loaded by workspace.yaml)."""

import os

from dagster import Definitions, in_process_executor

from assets import ALL_ASSETS
from resources import LandingSource, ModelRegistry, Warehouse, home_from_environment
from workflows.jobs import daily_pipeline_job, daily_schedule, publish_job, training_job, weekly_training_schedule
from workflows.sensors import champion_alias_sensor, landing_sensor, publish_automation_sensor, run_failure_recorder


def build_resources(home: str, tracking_uri: str = "", landing_mode: str = "auto") -> dict:
    """The resources of one home folder; tests call this with a temporary home."""
    return {
        "warehouse": Warehouse(home=home),
        "landing": LandingSource(home=home, mode=landing_mode),
        "registry": ModelRegistry(
            home=home,
            tracking_uri=tracking_uri,
            ui_url=os.environ.get("SHOPSEQ_MLFLOW_UI_URL", "http://127.0.0.1:5000"),
        ),
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


defs = build_definitions(
    build_resources(
        home_from_environment(),
        tracking_uri=os.environ.get("SHOPSEQ_MLFLOW_TRACKING_URI", ""),
        landing_mode=os.environ.get("SHOPSEQ_LANDING_MODE", "auto"),
    )
)
