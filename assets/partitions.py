"""The one daily partitioning of the pipeline and how assets read their window.

A partition key is a day of the shop's calendar (``settings.json`` timezone, UTC by
default); assets turn it into UTC bounds with ``day_bounds(day, tz)``.
"""

import datetime as dt

from dagster import (
    AssetExecutionContext,
    AutomationCondition,
    BackfillPolicy,
    DailyPartitionsDefinition,
    TimeWindowPartitionMapping,
)

from assets.logic.features import HISTORY_DAYS

# Early enough for the public logs (YooChoose starts in April 2014, RetailRocket in 2015).
daily_partitions = DailyPartitionsDefinition(start_date="2014-01-01", timezone="UTC")

# A range backfill runs as one run: assets loop over the days of their window,
# one transaction per day, so a range gives exactly the rows of day-by-day runs.
daily_backfill_policy = BackfillPolicy.single_run()


def partition_days(context: AssetExecutionContext) -> list[dt.date]:
    """The days of the run's partition window (one day, or a backfilled range)."""
    window = context.partition_time_window
    first = window.start.astimezone(dt.UTC).date()
    last = window.end.astimezone(dt.UTC).date()
    return [first + dt.timedelta(days=i) for i in range((last - first).days)]


# The features of day D read the events of the ``HISTORY_DAYS`` days up to D: declared, so that Dagster plans range
# backfills in order, a re-run day marks the feature days after it stale, and the landing sensor re-runs them. The
# first days of the calendar have fewer days before them (a beta parameter of Dagster; so is the backfill policy).
HISTORY_WINDOW = TimeWindowPartitionMapping(
    start_offset=-(HISTORY_DAYS - 1), end_offset=0, allow_nonexistent_upstream_partitions=True
)

# The run tags of a ranged run (what a single-run backfill of days sets).
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"

# Publishing tables follow their upstream daily tables by themselves (the publish_automation sensor): the
# latest day re-runs when its features or the champion changed.
PUBLISH_AUTOMATION = AutomationCondition.eager()

# What every daily warehouse asset shares: the partitioning and the range backfill. Writers are serialised
# by the warehouse's file lock (resources/warehouse.py), not by a Dagster pool: a killed run would keep
# its pool slot claimed and block every later run.
DAILY_ASSET = dict(partitions_def=daily_partitions, backfill_policy=daily_backfill_policy)
