"""Jobs and schedules. Every job runs in one process: DuckDB takes one writer per file, and the
in-process executor avoids re-importing the stack for each step (about 3x faster here)."""

from dagster import (
    AssetSelection,
    ScheduleDefinition,
    build_schedule_from_partitioned_job,
    define_asset_job,
    in_process_executor,
)

from assets.partitions import daily_partitions

DAILY_GROUPS = ("ingestion", "cleaning", "sequences", "features")

daily_pipeline_job = define_asset_job(
    "daily_pipeline",
    selection=AssetSelection.groups(*DAILY_GROUPS),
    partitions_def=daily_partitions,
    executor_def=in_process_executor,
    description="Landing files of a day -> raw, cleaned, sequences and features (one run per day or range).",
)

publish_job = define_asset_job(
    "publish",
    selection=AssetSelection.groups("serving", "evaluation"),
    partitions_def=daily_partitions,
    executor_def=in_process_executor,
    description="Score a day's active users with the champion models (recommendations and next-action tables) "
    "and replay the day with the models trained before it.",
)

training_job = define_asset_job(
    "training",
    selection=AssetSelection.groups("training"),
    executor_def=in_process_executor,
    description="Point-in-time training sets, LightGBM models, hold-out evaluation and gated promotion.",
)

daily_schedule = build_schedule_from_partitioned_job(daily_pipeline_job, hour_of_day=1, minute_of_hour=0)

weekly_training_schedule = ScheduleDefinition(
    name="weekly_training", job=training_job, cron_schedule="0 3 * * 1", execution_timezone="UTC"
)
