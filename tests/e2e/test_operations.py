"""Backfills, re-runs, concurrent runs and a killed run on one home, all compared with a day-by-day reference
run: the same landing files, so every table must come out with exactly the same rows."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from dagster import AssetSelection, DagsterInstance, materialize

from assets import ALL_ASSETS
from assets.partitions import RANGE_END_TAG, RANGE_START_TAG
from resources import LandingSource
from tests.conftest import SMALL_SHOP, dagster_home, shop_days
from workflows.definitions import build_resources
from workflows.jobs import DAILY_GROUPS

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e

DAYS = shop_days(3)
DAILY_TABLES = [
    "raw_events",
    "raw_events_quarantine",
    "cleaned_events",
    "sessions",
    "user_sequences",
    "user_features",
    "item_features",
    "ranking_candidates",
]
DAY_LOCAL_GROUPS = ("ingestion", "cleaning", "sequences")  # a day's rows read no other day
DAY_COLUMN = {
    "raw_events": "event_time",
    "raw_events_quarantine": "partition_date",
    "cleaned_events": "event_time",
    "sessions": "session_start",
    "user_sequences": "day",
}  # the partition column of the day-local tables


def _snapshot(home: Path, tables: list[str]) -> dict[str, pd.DataFrame]:
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as conn:
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY ALL").df() for t in tables}


def _assert_same(actual: dict, expected: dict) -> None:
    for table, frame in expected.items():
        assert len(actual[table]) == len(frame) > 0, table
        pd.testing.assert_frame_equal(actual[table], frame, obj=table)


def _wipe_warehouse(home: Path) -> None:
    for path in home.glob("warehouse.duckdb*"):
        path.unlink()


def _materialize(home: Path, groups, tags: dict | None = None, partition: str | None = None) -> None:
    result = materialize(
        ALL_ASSETS,
        selection=AssetSelection.groups(*groups),
        resources=build_resources(str(home)),
        instance=DagsterInstance.ephemeral(),
        partition_key=partition,
        tags=tags or {},
        raise_on_error=False,
    )
    assert result.success


def _dagster_materialize(home: Path, groups, *window: str) -> subprocess.Popen:
    selection = " or ".join(f"group:{g}" for g in groups)
    window_args = (
        ["--partition", window[0]] if len(window) == 1 else ["--partition-range", f"{window[0]}...{window[1]}"]
    )
    env = {**os.environ, "SHOPSEQ_HOME": str(home), "DAGSTER_HOME": str(home / "dagster_home")}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dagster",
            "asset",
            "materialize",
            "-m",
            "workflows.definitions",
            "--select",
            selection,
            *window_args,
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A home with three landed days and the tables of a day-by-day run of them."""
    home = tmp_path_factory.mktemp("ops")
    dagster_home(home)
    landing = LandingSource(home=str(home))
    landing.save_shop(SMALL_SHOP)
    for day in DAYS:
        landing.files_for_day(day)
    for day in DAYS:
        _materialize(home, DAILY_GROUPS, partition=day.isoformat())
    return home, _snapshot(home, DAILY_TABLES)


def test_a_range_backfill_gives_exactly_the_rows_of_day_by_day_runs_and_a_rerun_replaces(reference):
    home, expected = reference
    _wipe_warehouse(home)
    window = {RANGE_START_TAG: DAYS[0].isoformat(), RANGE_END_TAG: DAYS[-1].isoformat()}
    _materialize(home, DAILY_GROUPS, tags=window)
    _assert_same(_snapshot(home, DAILY_TABLES), expected)
    _materialize(home, DAILY_GROUPS, partition=DAYS[1].isoformat())  # re-running a day inside the range
    _assert_same(_snapshot(home, DAILY_TABLES), expected)


def test_two_partition_runs_at_once_both_succeed_with_every_row(reference):
    home, expected = reference
    _wipe_warehouse(home)
    runs = [_dagster_materialize(home, DAY_LOCAL_GROUPS, day.isoformat()) for day in DAYS[:2]]
    outputs = [run.communicate(timeout=600)[0] for run in runs]
    for run, output in zip(runs, outputs):
        assert run.returncode == 0 and "RUN_SUCCESS" in output, output[-3000:]
    # both wrote the warehouse; the one that waited for the lock says so
    assert any("waiting for the warehouse lock" in output for output in outputs)
    actual = _snapshot(home, list(DAY_COLUMN))
    for table, column in DAY_COLUMN.items():
        wanted = expected[table][pd.to_datetime(expected[table][column]).dt.date.isin(DAYS[:2])]
        _assert_same({table: actual[table]}, {table: wanted.reset_index(drop=True)})


def test_a_killed_run_leaves_whole_days_and_its_rerun_gives_the_right_rows(reference):
    home, expected = reference
    _wipe_warehouse(home)
    window = (DAYS[0].isoformat(), DAYS[-1].isoformat())
    run = _dagster_materialize(home, DAILY_GROUPS, *window)
    seen = []
    deadline = time.monotonic() + 300
    for line in run.stdout:  # kill it while it writes cleaned_events (raw_events committed before)
        seen.append(line)
        if 'Started execution of step "cleaned_events"' in line or time.monotonic() > deadline:
            time.sleep(1.5)
            break
    os.killpg(run.pid, signal.SIGKILL)
    run.wait(timeout=30)
    assert run.returncode == -signal.SIGKILL and not any("RUN_SUCCESS" in line for line in seen)

    # consistent: raw_events whole; every day cleaned_events holds is whole
    after = _snapshot(home, ["raw_events", "cleaned_events"])
    _assert_same({"raw_events": after["raw_events"]}, {"raw_events": expected["raw_events"]})
    cleaned_days = (
        set(pd.to_datetime(after["cleaned_events"]["event_time"]).dt.date) if len(after["cleaned_events"]) else set()
    )
    reference_cleaned = expected["cleaned_events"]
    partial = reference_cleaned[pd.to_datetime(reference_cleaned["event_time"]).dt.date.isin(cleaned_days)]
    assert len(after["cleaned_events"]) == len(partial)

    rerun = _dagster_materialize(home, DAILY_GROUPS, *window)
    output = rerun.communicate(timeout=600)[0]
    assert rerun.returncode == 0 and "RUN_SUCCESS" in output, output[-3000:]
    _assert_same(_snapshot(home, DAILY_TABLES), expected)
