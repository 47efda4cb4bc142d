"""Transient failures retry with backoff inside a Dagster step, then fail naming the cause and the attempts."""

import fcntl
import subprocess
import sys
import time

import pytest
from dagster import DagsterEventType, asset, materialize

from resources import ModelRegistry, Warehouse
from resources.warehouse import WarehouseLocked


def _attempts(result) -> tuple[int, str]:
    retries = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_UP_FOR_RETRY]
    failure = next(e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE)
    return len(retries), failure.event_specific_data.error.cause.message


def test_an_unreachable_registry_is_retried_with_backoff_then_fails_clearly(tmp_path):
    @asset
    def reads_champion(registry: ModelRegistry):
        registry.version_for_alias("m", "champion")

    registry = ModelRegistry(
        home=str(tmp_path), tracking_uri="http://127.0.0.1:9", transient_retries=2, retry_delay_seconds=0.2
    )
    started = time.monotonic()
    result = materialize([reads_champion], resources={"registry": registry}, raise_on_error=False)
    retries, message = _attempts(result)
    assert not result.success and retries == 2
    assert "did not answer" in message and "gave up after 3 attempts" in message, message
    assert time.monotonic() - started >= 0.2 + 0.4  # 0.2 s, then 0.4 s: the delay doubles


def test_a_registry_that_answers_no_is_not_retried(tmp_path):
    registry = ModelRegistry(home=str(tmp_path))
    assert registry.version_for_alias("no_such_model", "champion") is None
    with pytest.raises(ValueError, match="has no version 3"):
        registry.version("no_such_model", 3)


def test_a_locked_warehouse_waits_for_the_lock_then_retries_then_fails_naming_the_holder(tmp_path):
    warehouse = Warehouse(home=str(tmp_path), lock_timeout_seconds=0.5, transient_retries=1, retry_delay_seconds=0.1)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
                "f.write('held by the test'); f.flush(); print('locked', flush=True); time.sleep(60)"
            ),
            str(tmp_path / "warehouse.lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"

        @asset
        def writes(warehouse: Warehouse):
            with warehouse.connect() as conn:
                conn.execute("CREATE TABLE t AS SELECT 1 AS x")

        result = materialize([writes], resources={"warehouse": warehouse}, raise_on_error=False)
        retries, message = _attempts(result)
        assert not result.success and retries == 1
        assert "in use by another writer (held by the test)" in message and "gave up after 2 attempts" in message
        with pytest.raises(WarehouseLocked), warehouse.connect():  # outside Dagster: at once, no retry
            pass
    finally:
        holder.kill()
        holder.wait()
    with warehouse.connect() as conn:  # the kernel dropped the dead holder's lock
        assert conn.execute("SELECT 42").fetchone() == (42,)


def test_the_warehouse_lock_is_reentrant_within_a_process_and_exclusive_across_open_files(tmp_path):
    warehouse = Warehouse(home=str(tmp_path), lock_timeout_seconds=0.3)
    with warehouse.connect() as outer, warehouse.connect() as inner:
        assert outer.execute("SELECT 1").fetchone() == inner.execute("SELECT 1").fetchone()
        with open(tmp_path / "warehouse.lock", "a+") as other, pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with open(tmp_path / "warehouse.lock", "a+") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released after the last connection closed
