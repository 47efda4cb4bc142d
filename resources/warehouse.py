"""The DuckDB warehouse: one file under the home folder, opened per unit of work; one writer at a time, readers side
by side."""

import fcntl
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
from dagster import DagsterExecutionInterruptedError, InitResourceContext
from pydantic import PrivateAttr

from resources.home import home_paths, read_settings
from resources.transient import RetriesTransientFailures, step_context


class WarehouseLocked(RuntimeError):
    """The warehouse file stayed locked by another process for the whole wait."""


class WarehouseMissing(FileNotFoundError):
    """A read-only connection was asked of a warehouse file that does not exist yet."""


# Re-entrancy of the warehouse lock within one thread: {lock file: [open file, exclusive, depth]}. Every other
# thread opens the lock file itself, so the kernel orders the threads of a process as it orders processes (a
# ``flock`` belongs to the open file, not to the process).
_HELD = threading.local()


def _holder(lock_file: Path) -> str:
    """Who holds the lock, as its writer recorded it; readers record nothing."""
    try:
        note = lock_file.read_text().strip()
    except OSError:
        note = ""
    return f"another writer ({note})" if note else "readers"


def _who_am_i() -> str:
    context = step_context()
    where = f"run {context.run_id} step {context.op.name}" if context else " ".join(sys.argv[:2])
    return json.dumps({"pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "by": where})


class Warehouse(RetriesTransientFailures):
    """DuckDB file ``<home>/warehouse.duckdb``.

    DuckDB takes one writing process per file, and a file open read-only in one process cannot be opened for
    writing in another. Every connection first takes the lock on ``<home>/warehouse.lock`` (``flock``): a
    writer (``connect()``) the exclusive lock, a reader (``connect(read_only=True)``) a shared one, so readers
    run side by side, and writers and readers wait their turn instead of failing, each for up to
    ``lock_timeout_seconds``. The kernel drops the lock of a process that dies, so a killed run never leaves a
    stale claim behind. Connections are opened for one unit of work and closed right after: nobody holds one
    while training or talking to MLflow. A lock still held after the wait (or DuckDB's own file lock held by a
    process outside shopseq, such as a DuckDB shell) is a transient failure: the step is retried with backoff.

    The shop's settings (its time zone) are read once per run, when Dagster sets the resource up; used outside a
    run, once per resource object.
    """

    home: str
    # DuckDB's buffer limit (it spills to disk above it). 3GB leaves room for Python, Dagster and the small
    # frames at the edges inside a 4 GiB process; on the 10M-event benchmark day 4GB was no faster.
    memory_limit: str = "3GB"
    threads: int = 2
    lock_timeout_seconds: float = 1800.0
    _settings: dict | None = PrivateAttr(default=None)
    _lake_views: dict[str, str] | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        # One run, one calendar: a settings.json rewritten while the run goes on is seen by the next run.
        self._settings = read_settings(self.home)

    @property
    def timezone(self) -> str:
        """The shop's timezone: partition keys are its days; ``event_time`` is stored in UTC."""
        if self._settings is None:
            self._settings = read_settings(self.home)
        return self._settings.get("timezone", "UTC")

    @property
    def path(self) -> str:
        return str(home_paths(self.home)["warehouse"])

    @contextmanager
    def lock(self, exclusive: bool, deadline: float) -> Iterator[bool]:
        """The home's warehouse lock, exclusive for a writer or shared for a reader, re-entrant within a thread.

        Yields whether the lock held is exclusive: a reader inside its own thread's writer joins the writer's
        lock (and must open the file as the writer did: DuckDB refuses two configurations of one file in a
        process). A writer inside its own thread's reader would wait for itself, so it is refused."""
        lock_file = Path(self.path).with_suffix(".lock")
        key = str(lock_file)
        held = getattr(_HELD, "locks", None)
        if held is None:
            held = _HELD.locks = {}
        if key in held:
            if exclusive and not held[key][1]:
                raise RuntimeError(f"cannot write to {self.path} inside a read-only connection of the same thread")
            held[key][2] += 1
            try:
                yield held[key][1]
            finally:
                held[key][2] -= 1
            return
        handle = open(lock_file, "a+")  # noqa: SIM115 (held open for the lock)
        try:
            waited_note = False
            while True:
                try:
                    fcntl.flock(handle, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise self.transient(
                            WarehouseLocked(
                                f"the warehouse {self.path} is in use by {_holder(lock_file)}; "
                                f"waited {self.lock_timeout_seconds:g} s for {lock_file}"
                            )
                        ) from None
                    context = step_context()
                    if context is not None and not waited_note:
                        context.log.info(f"waiting for the warehouse lock, held by {_holder(lock_file)}")
                        waited_note = True
                    time.sleep(0.2)
            if exclusive:
                handle.seek(0)
                handle.truncate()
                handle.write(_who_am_i())
                handle.flush()
            held[key] = [handle, exclusive, 1]
            try:
                yield exclusive
            finally:
                del held[key]
                if exclusive:
                    handle.seek(0)
                    handle.truncate()
                fcntl.flock(handle, fcntl.LOCK_UN)
        finally:
            handle.close()

    def lake_views(self) -> dict[str, str]:
        """On a spark home (one with a lake: its daily tables in Parquet, ``resources.engine``), the SELECT of each
        lake table's view (``assets.logic.lake.lake_views``), built on the first connection that finds the lake and
        kept (a home keeps its engine); elsewhere empty. Each connection then only lists which tables have a day
        and binds their views."""
        if self._lake_views is None:
            lake = home_paths(self.home)["lake"]
            if not lake.exists():
                return {}
            from assets.logic.lake import lake_views  # assets import this module

            self._lake_views = lake_views(lake)
        return self._lake_views

    @contextmanager
    def read_lock(self) -> Iterator[None]:
        """The shared lock alone, for a reader that attaches the file to a connection of its own (``predict``)."""
        with self.lock(exclusive=False, deadline=time.monotonic() + self.lock_timeout_seconds):
            yield

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection for one unit of work: a writer's under the exclusive lock, or with ``read_only`` a
        reader's under the shared lock, opened read-only (keep it short: a writer waits for every reader). On a
        spark home it reads the daily tables Spark writes from the lake (``lake_views``)."""
        path = home_paths(self.home)["warehouse"]
        if read_only and not path.exists():
            raise WarehouseMissing(f"the warehouse {path} does not exist yet: run shopseq run (or demo) first")
        path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.lock_timeout_seconds
        with self.lock(exclusive=not read_only, deadline=deadline) as exclusive:
            delay = 0.1
            while True:
                try:
                    conn = duckdb.connect(
                        self.path,
                        read_only=not exclusive,
                        config={"memory_limit": self.memory_limit, "threads": self.threads},
                    )
                    break
                except duckdb.IOException as error:
                    if "lock" not in str(error).lower():
                        raise
                    if time.monotonic() + delay > deadline:
                        raise self.transient(
                            WarehouseLocked(
                                f"the warehouse {self.path} is locked by a process outside shopseq: "
                                f"{str(error).splitlines()[0][:300]}"
                            )
                        ) from error
                    time.sleep(delay)
                    delay = min(delay * 2, 5.0)
            try:
                views = self.lake_views()
                if views:
                    from assets.logic.lake import attach_views

                    attach_views(conn, home_paths(self.home)["lake"], views)
                yield conn
            except (duckdb.InterruptException, RuntimeError) as error:
                # A signal that stops the run (Dagster's SIGTERM / SIGINT handler) landed inside a query: DuckDB
                # replaces the handler's interruption by RuntimeError("Query interrupted") (InterruptException when
                # a connection is interrupted), which alone would fail the step and let the run go on with the next
                # one. Nothing in shopseq interrupts a connection otherwise.
                if isinstance(error, duckdb.InterruptException) or str(error) == "Query interrupted":
                    raise DagsterExecutionInterruptedError(f"interrupted in a warehouse query: {error}") from error
                raise
            finally:
                conn.close()
