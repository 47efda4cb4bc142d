"""Operations: the landing sensor, the run-failure recorder and the publishing automation."""

import datetime as dt
import json
import os
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from dagster import (
    AssetKey,
    AssetMaterialization,
    AssetSelection,
    DagsterEventType,
    DagsterInstance,
    RunRequest,
    SkipReason,
    build_run_status_sensor_context,
    build_sensor_context,
    evaluate_automation_conditions,
    materialize,
)

from assets import ALL_ASSETS
from assets.logic.synthetic import write_day
from assets.partitions import RANGE_END_TAG, RANGE_START_TAG
from resources import LandingSource
from resources.home import write_settings
from tests.conftest import SMALL_SHOP, shop_days
from workflows.cli import main
from workflows.definitions import build_resources, defs
from workflows.sensors import RUN_FAILURES_FILE, landing_sensor, run_failure_recorder

pytestmark = pytest.mark.e2e

DAYS = shop_days(5)


def _tick(instance, landing, cursor):
    context = build_sensor_context(instance=instance, resources={"landing": landing}, cursor=cursor)
    result = landing_sensor(context)
    requests = result if isinstance(result, list) else []
    return requests, result if isinstance(result, SkipReason) else None, context.cursor


def _window(request: RunRequest) -> tuple[str, str]:
    if request.partition_key:
        return request.partition_key, request.partition_key
    return request.tags[RANGE_START_TAG], request.tags[RANGE_END_TAG]


def test_landing_folders_that_arrive_or_change_start_their_days(tmp_path):
    home = str(tmp_path)
    for day in DAYS[:3]:
        write_day(SMALL_SHOP, day, f"{home}/landing")
    write_settings(home, landing="files")
    landing = LandingSource(home=home)
    instance = DagsterInstance.ephemeral()

    # first look: three days never materialised -> one ranged run
    requests, _, cursor = _tick(instance, landing, None)
    assert [_window(r) for r in requests] == [(DAYS[0].isoformat(), DAYS[2].isoformat())]

    # the days were materialised (by that run, say); nothing changed -> nothing to do
    for day in DAYS[:3]:
        instance.report_runless_asset_event(AssetMaterialization("raw_events", partition=day.isoformat()))
    requests, skip, cursor = _tick(instance, landing, cursor)
    assert requests == [] and "no landing folder appeared or changed" in skip.skip_message

    # day 2 is re-delivered (newer file): it runs again with day 3, whose features read it; day 5 arrives, day 4
    # is still missing -> days 2..3 as one run, day 5 alone
    folder = f"{home}/landing/{DAYS[1].isoformat()}"
    later = dt.datetime.now().timestamp() + 5
    for name in os.listdir(folder):
        os.utime(f"{folder}/{name}", (later, later))
    write_day(SMALL_SHOP, DAYS[4], f"{home}/landing")
    requests, _, cursor = _tick(instance, landing, cursor)
    assert sorted(_window(r) for r in requests) == [
        (DAYS[1].isoformat(), DAYS[2].isoformat()),
        (DAYS[4].isoformat(),) * 2,
    ]
    assert all(r.run_key.startswith("landing-") for r in requests)


def test_the_landing_sensor_leaves_synthetic_homes_to_the_schedule(tmp_path):
    landing = LandingSource(home=str(tmp_path))
    landing.save_shop(SMALL_SHOP)
    requests, skip, _ = _tick(DagsterInstance.ephemeral(), landing, None)
    assert requests == [] and "synthetic" in skip.skip_message


def test_a_failed_run_is_recorded_with_its_partition_step_and_error(tmp_path, capsys):
    home = str(tmp_path)
    write_settings(home, landing="files")  # no landing day: raw_events fails by name
    instance = DagsterInstance.ephemeral()
    resources = build_resources(home)
    result = materialize(
        ALL_ASSETS,
        selection=AssetSelection.assets("raw_events"),
        resources=resources,
        instance=instance,
        partition_key=DAYS[0].isoformat(),
        raise_on_error=False,
    )
    assert not result.success
    run = instance.get_run_by_id(result.run_id)
    failure = next(e for e in result.all_events if e.event_type == DagsterEventType.RUN_FAILURE)
    context = build_run_status_sensor_context(
        sensor_name="run_failure_recorder",
        dagster_event=failure,
        dagster_instance=instance,
        dagster_run=run,
        resources={"warehouse": resources["warehouse"]},
    ).for_run_failure()
    run_failure_recorder(context)
    record = json.loads((tmp_path / RUN_FAILURES_FILE).read_text().splitlines()[-1])
    assert record["run_id"] == result.run_id and record["partition"] == DAYS[0].isoformat()
    assert record["failed_steps"][0]["step"] == "raw_events"
    assert "no landing files for 2025-03-01" in record["failed_steps"][0]["error"]
    assert main(["failures", "--home", home]) == 0
    printed = capsys.readouterr().out
    assert f"partition 2025-03-01  run {result.run_id}" in printed
    assert "    raw_events: " in printed and "no landing files for 2025-03-01" in printed


def test_a_run_shopseq_run_launched_is_recorded_without_the_daemon_and_listed_once(tmp_path, capsys, monkeypatch):
    """``shopseq run`` launches its jobs in-process, where no sensor runs: it records a failed run itself, as the
    run_failure_recorder does; a run both recorded (the daemon watching the same instance) is listed once."""
    from workflows.cli import Pipeline, StageFailed, prepare_home

    for variable in ("SHOPSEQ_HOME", "DAGSTER_HOME"):  # prepare_home sets them: restored after the test
        monkeypatch.setenv(variable, str(tmp_path))
    home = prepare_home(str(tmp_path / "home"))
    write_settings(str(home), landing="files")  # no landing day: raw_events fails by name
    with pytest.raises(StageFailed, match="no landing files for 2025-03-01"):
        Pipeline(home).launch("daily_pipeline", DAYS[0])
    lines = (home / RUN_FAILURES_FILE).read_text().splitlines()
    record = json.loads(lines[-1])
    assert len(lines) == 1 and record["job"] == "daily_pipeline" and record["partition"] == DAYS[0].isoformat()
    assert record["failed_steps"][0]["step"] == "raw_events"
    with open(home / RUN_FAILURES_FILE, "a") as out:  # the sensor's line for the same run
        out.write(lines[0] + "\n")
    assert main(["failures", "--home", str(home)]) == 0
    assert capsys.readouterr().out.count(f"run {record['run_id']}") == 1


def test_publishing_follows_the_latest_days_features_by_declarative_automation():
    instance = DagsterInstance.ephemeral()
    today = dt.datetime.now(dt.UTC).date()
    latest, before = (today - dt.timedelta(days=1)).isoformat(), (today - dt.timedelta(days=2)).isoformat()
    selection = AssetSelection.groups("serving", "evaluation")
    first = evaluate_automation_conditions(defs, instance, asset_selection=selection)
    assert first.total_requested == 0  # nothing upstream exists yet
    for key in ("ranking_candidates", "user_features", "item_features", "cleaned_events"):
        for day in (before, latest):  # the replay of a day reads the features of the day before
            instance.report_runless_asset_event(AssetMaterialization(key, partition=day))
    instance.report_runless_asset_event(AssetMaterialization("champion_promotion"))
    second = evaluate_automation_conditions(defs, instance, asset_selection=selection, cursor=first.cursor)
    for key in ("recommendations", "next_action_predictions", "item_next_items", "model_replay"):
        assert second.get_requested_partitions(AssetKey(key)) == {latest}, key
    assert second.total_requested == 4  # only the latest day: older days are backfills, not automation


def _cleaning_run(home: Path, **window) -> tuple[pd.DataFrame, dict[str, bool]]:
    """raw_events and cleaned_events into a fresh warehouse for one day (``partition_key``) or a range
    (``tags``): the cleaned rows and every check's verdict."""
    for path in home.glob("warehouse.duckdb*"):
        path.unlink()
    result = materialize(
        ALL_ASSETS,
        selection=AssetSelection.assets("raw_events", "cleaned_events"),
        resources=build_resources(str(home)),
        instance=DagsterInstance.ephemeral(),
        raise_on_error=False,
        **window,
    )
    assert result.success
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as conn:
        return conn.execute("SELECT * FROM cleaned_events ORDER BY ALL").df(), checks


def test_a_range_with_an_event_id_on_two_days_gives_the_rows_of_day_by_day_runs_and_passes_its_checks(tmp_path):
    write_settings(str(tmp_path), landing="files")
    first, second = DAYS[0], DAYS[1]
    for day, rows in {
        first: [("09:00", "shared", "i1"), ("09:10", "shared", "i2"), ("09:20", "a1", "i3")],  # repeated within the day
        second: [("08:00", "shared", "i4"), ("08:05", "b1", "i5")],  # the same id the next day
    }.items():
        (tmp_path / "landing" / day.isoformat()).mkdir(parents=True)
        pd.DataFrame(
            [
                {
                    "event_time": pd.Timestamp(f"{day} {t}"),
                    "user_id": "u1",
                    "event_type": "view",
                    "item_id": item,
                    "event_id": event_id,
                }
                for t, event_id, item in rows
            ]
        ).to_parquet(tmp_path / "landing" / day.isoformat() / "events.parquet", index=False)

    by_day = []
    for day in (first, second):
        cleaned, checks = _cleaning_run(tmp_path, partition_key=day.isoformat())
        assert all(checks.values()) and "cleaned_events_suite" in checks, (day, checks)
        by_day.append(cleaned)
    expected = pd.concat(by_day).sort_values(list(by_day[0].columns), ignore_index=True)
    assert [
        (t.date(), e, i) for t, e, i in expected[["event_time", "event_id", "item_id"]].itertuples(index=False)
    ] == [(first, "shared", "i1"), (first, "a1", "i3"), (second, "shared", "i4"), (second, "b1", "i5")]

    ranged, checks = _cleaning_run(
        tmp_path, tags={RANGE_START_TAG: first.isoformat(), RANGE_END_TAG: second.isoformat()}
    )
    assert all(checks.values()) and "cleaned_events_suite" in checks, checks
    pd.testing.assert_frame_equal(ranged.sort_values(list(ranged.columns), ignore_index=True), expected)
