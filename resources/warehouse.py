"""The DuckDB warehouse: one file under the home folder, opened per unit of work, one writer at a time."""

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

from resources.home import home_paths, read_settings
from resources.transient import RetriesTransientFailures, step_context


class WarehouseLocked(RuntimeError):
    """The warehouse file stayed locked by another process for the whole wait."""


# Re-entrancy of the writer lock inside one process: {lock file: (open file, depth)}.
_HELD: dict[str, list] = {}
_HELD_GUARD = threading.RLock()


def _holder(lock_file: Path) -> str:
    try:
        return lock_file.read_text().strip() or "unknown"
    except OSError:
        return "unknown"


def _who_am_i() -> str:
    context = step_context()
    where = f"run {context.run_id} step {context.op.name}" if context else " ".join(sys.argv[:2])
    return json.dumps({"pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "by": where})


class Warehouse(RetriesTransientFailures):
    """DuckDB file ``<home>/warehouse.duckdb``.

    DuckDB takes one writing process per file. Every connection first takes the exclusive lock on
    ``<home>/warehouse.lock`` (``flock``), so runs that write at once queue here, each step waiting its
    turn for up to ``lock_timeout_seconds``; the kernel drops the lock of a process that dies, so a killed
    run never leaves a stale claim behind. Connections are opened for one unit of work and closed right
    after. A lock still held after the wait (or DuckDB's own file lock held by a process outside
    shopseq, such as a DuckDB shell) is a transient failure: the step is retried with backoff.
    """

    home: str
    # DuckDB's buffer limit (it spills to disk above it). 3GB leaves room for Python, Dagster and the small
    # frames at the edges inside a 4 GiB process; on the 10M-event benchmark day 4GB was no faster.
    memory_limit: str = "3GB"
    threads: int = 2
    lock_timeout_seconds: float = 1800.0

    @property
    def timezone(self) -> str:
        """The shop's timezone: partition keys are its days; ``event_time`` is stored in UTC."""
        return read_settings(self.home).get("timezone", "UTC")

    @property
    def path(self) -> str:
        return str(home_paths(self.home)["warehouse"])

    @contextmanager
    def writer_lock(self, deadline: float) -> Iterator[None]:
        """The home's exclusive warehouse lock, re-entrant within this process."""
        lock_file = Path(self.path).with_suffix(".lock")
        key = str(lock_file)
        with _HELD_GUARD:
            if key in _HELD:
                _HELD[key][1] += 1
                try:
                    yield
                finally:
                    _HELD[key][1] -= 1
                return
            handle = open(lock_file, "a+")  # noqa: SIM115 (held open for the lock)
            try:
                waited_note = False
                while True:
                    try:
                        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            raise self.transient(
                                WarehouseLocked(
                                    f"the warehouse {self.path} is in use by another writer ({_holder(lock_file)}); "
                                    f"waited {self.lock_timeout_seconds:g} s for {lock_file}"
                                )
                            ) from None
                        context = step_context()
                        if context is not None and not waited_note:
                            context.log.info(f"waiting for the warehouse lock, held by {_holder(lock_file)}")
                            waited_note = True
                        time.sleep(0.2)
                handle.seek(0)
                handle.truncate()
                handle.write(_who_am_i())
                handle.flush()
                _HELD[key] = [handle, 1]
                try:
                    yield
                finally:
                    del _HELD[key]
                    handle.seek(0)
                    handle.truncate()
                    fcntl.flock(handle, fcntl.LOCK_UN)
            finally:
                handle.close()

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        home_paths(self.home)["warehouse"].parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.lock_timeout_seconds
        with self.writer_lock(deadline):
            delay = 0.1
            while True:
                try:
                    conn = duckdb.connect(
                        self.path, config={"memory_limit": self.memory_limit, "threads": self.threads}
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
                yield conn
            finally:
                conn.close()
