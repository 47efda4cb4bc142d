"""The warehouse lock: readers share it, a writer has it alone, each waits for the other instead of failing; the
shop's settings are read once per run."""

import json
import subprocess
import sys
import threading
import time

import pytest
from dagster import asset, materialize

from resources import Warehouse
from resources.home import read_settings
from resources.warehouse import WarehouseLocked, WarehouseMissing

# A process holding a warehouse connection until its stdin closes: read-only or a writer.
HOLDER = """
import sys
import assets  # the asset modules first, as the code location loads them
from resources import Warehouse
with Warehouse(home=sys.argv[1]).connect(read_only=sys.argv[2] == "read") as conn:
    conn.execute("SELECT count(*) FROM t").fetchall()
    print("holding", flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def home(tmp_path):
    with Warehouse(home=str(tmp_path)).connect() as conn:
        conn.execute("CREATE TABLE t AS SELECT 1 AS x")
    return tmp_path


def _hold(home, mode: str) -> subprocess.Popen:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(home), mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "holding"
    return holder


def _release(holder: subprocess.Popen) -> None:
    holder.stdin.close()
    assert holder.wait(timeout=30) == 0


def test_readers_of_two_processes_read_at_once_and_a_writer_waits_for_them(home):
    warehouse = Warehouse(home=str(home), lock_timeout_seconds=0.5)
    reader = _hold(home, "read")
    try:
        with warehouse.connect(read_only=True) as conn:  # beside the other process's reader, at once
            assert conn.execute("SELECT x FROM t").fetchall() == [(1,)]
            with pytest.raises(Exception, match="read-only"):
                conn.execute("INSERT INTO t VALUES (2)")
        with pytest.raises(WarehouseLocked, match="in use by readers"), warehouse.connect():
            pass
    finally:
        _release(reader)
    with warehouse.connect() as conn:  # the reader left: the writer goes ahead
        conn.execute("INSERT INTO t VALUES (2)")


def test_a_reader_waits_for_the_writer_then_reads(home):
    writer = _hold(home, "write")
    try:
        waiting = Warehouse(home=str(home), lock_timeout_seconds=0.5)
        with pytest.raises(WarehouseLocked, match="in use by another writer"), waiting.connect(read_only=True):
            pass
        threading.Timer(1.0, writer.stdin.close).start()  # the writer finishes while the reader waits
        started = time.monotonic()
        with Warehouse(home=str(home), lock_timeout_seconds=30).connect(read_only=True) as conn:
            assert conn.execute("SELECT count(*) FROM t").fetchall() == [(1,)]
        assert 0.8 < time.monotonic() - started < 20
    finally:
        if not writer.stdin.closed:
            writer.stdin.close()
        writer.wait(timeout=30)


def test_two_threads_read_at_once_and_a_writer_thread_waits_for_both(home):
    warehouse = Warehouse(home=str(home), lock_timeout_seconds=10)
    both_in, leave, order = threading.Barrier(3), threading.Event(), []

    def read():
        with warehouse.connect(read_only=True) as conn:
            conn.execute("SELECT * FROM t").fetchall()
            both_in.wait(timeout=10)  # only passes when both readers hold a connection together
            leave.wait(timeout=10)
            order.append("read")

    def write():
        with warehouse.connect() as conn:
            order.append("write")
            conn.execute("INSERT INTO t VALUES (3)")

    readers = [threading.Thread(target=read) for _ in range(2)]
    for thread in readers:
        thread.start()
    both_in.wait(timeout=10)
    writer = threading.Thread(target=write)
    writer.start()
    time.sleep(0.5)
    assert order == []  # the writer is still waiting for the readers
    leave.set()
    for thread in [*readers, writer]:
        thread.join(timeout=20)
    assert order == ["read", "read", "write"]


def test_a_reader_inside_its_threads_writer_joins_it_and_a_writer_inside_a_reader_is_refused(home):
    warehouse = Warehouse(home=str(home), lock_timeout_seconds=0.5)
    with warehouse.connect() as outer, warehouse.connect(read_only=True) as inner:
        outer.execute("INSERT INTO t VALUES (4)")
        assert inner.execute("SELECT count(*) FROM t").fetchall() == [(2,)]
    refused = pytest.raises(RuntimeError, match="inside a read-only connection")
    with warehouse.connect(read_only=True), refused, warehouse.connect():
        pass


def test_a_reader_of_a_home_without_a_warehouse_is_told_so_and_creates_nothing(tmp_path):
    missing = Warehouse(home=str(tmp_path / "empty"))
    with pytest.raises(WarehouseMissing, match="does not exist yet"), missing.connect(read_only=True):
        pass
    assert not (tmp_path / "empty").exists()


def test_the_time_zone_is_read_once_per_run(tmp_path, monkeypatch):
    import resources.warehouse as module

    (tmp_path / "settings.json").write_text(json.dumps({"timezone": "Asia/Shanghai"}))
    reads, seen = [], []

    def counted(home: str) -> dict:
        reads.append(home)
        return read_settings(home)

    monkeypatch.setattr(module, "read_settings", counted)

    @asset
    def uses_the_calendar(warehouse: Warehouse):
        seen.append(warehouse.timezone)
        (tmp_path / "settings.json").write_text(json.dumps({"timezone": "Europe/Berlin"}))
        seen.append(warehouse.timezone)  # one run, one calendar

    resources = {"warehouse": Warehouse(home=str(tmp_path))}
    assert materialize([uses_the_calendar], resources=resources).success
    assert seen == ["Asia/Shanghai", "Asia/Shanghai"] and len(reads) == 1
    assert materialize([uses_the_calendar], resources=resources).success  # the next run reads the file again
    assert seen[2:] == ["Europe/Berlin", "Europe/Berlin"] and len(reads) == 2


def test_an_interrupted_warehouse_query_stops_the_run(tmp_path):
    """DuckDB turns the interrupt of Dagster's signal handler into a query error (``RuntimeError: Query
    interrupted``; ``InterruptException`` when a connection is interrupted): unmended, that step failed and the run
    went on with the next one (a SIGTERM to ``shopseq run`` during a query left it running). A signal reaches DuckDB
    only when it next looks for one, so the run here is interrupted through the connection, which DuckDB notices at
    once; the signal's own error is turned the same way (below)."""
    from dagster import DagsterExecutionInterruptedError

    @asset
    def a_long_query(warehouse: Warehouse):
        with warehouse.connect() as conn:
            threading.Timer(0.5, conn.interrupt).start()
            conn.execute("SELECT count(*) FROM (SELECT range % 100003, sum(range) FROM range(3e12::BIGINT) GROUP BY 1)")

    @asset
    def b_next_step():
        (tmp_path / "next_step_ran").touch()

    # as shopseq runs its jobs: a failed step does not stop the others by raising
    result = materialize(
        [a_long_query, b_next_step], resources={"warehouse": Warehouse(home=str(tmp_path))}, raise_on_error=False
    )
    [failure] = result.get_step_failure_events()
    assert not result.success and "interrupted in a warehouse query" in str(failure.event_specific_data.error)
    assert not (tmp_path / "next_step_ran").exists()  # the run stopped there

    with (
        pytest.raises(DagsterExecutionInterruptedError, match="Query interrupted"),
        Warehouse(home=str(tmp_path)).connect(),
    ):
        raise RuntimeError("Query interrupted")  # what DuckDB raises when a signal lands in its query
    with pytest.raises(RuntimeError, match="another error"), Warehouse(home=str(tmp_path)).connect():
        raise RuntimeError("another error")  # any other stays what it is
