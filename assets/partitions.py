"""The one daily partitioning of the pipeline (UTC days) and how assets read their window."""

import datetime as dt

from dagster import AssetExecutionContext, BackfillPolicy, DailyPartitionsDefinition

# Early enough for the public sample logs (DIGINETICA starts in 2016).
daily_partitions = DailyPartitionsDefinition(start_date="2016-01-01", timezone="UTC")

# A range backfill runs as one run: assets loop over the days of their window,
# one transaction per day, so a range gives exactly the rows of day-by-day runs.
daily_backfill_policy = BackfillPolicy.single_run()

WAREHOUSE_POOL = "warehouse"


def partition_days(context: AssetExecutionContext) -> list[dt.date]:
    """The UTC days of the run's partition window (one day, or a backfilled range)."""
    window = context.partition_time_window
    first = window.start.astimezone(dt.timezone.utc).date()
    last = window.end.astimezone(dt.timezone.utc).date()
    return [first + dt.timedelta(days=i) for i in range((last - first).days)]

# What every daily warehouse asset shares: the partitioning, the range backfill, the writer pool.
DAILY_ASSET = dict(partitions_def=daily_partitions, backfill_policy=daily_backfill_policy, pool=WAREHOUSE_POOL)
