"""The public data samples beside the repository (../shared/data), or wherever SHOPSEQ_SAMPLE_DATA points.

Tests that read them skip on a machine without them (a clean clone in CI has no ../shared).
"""

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SHOPSEQ_SAMPLE_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
needs_samples = pytest.mark.skipif(not SHARED.is_dir(), reason="the shared public samples are not on this machine")


def stop_process_group(process: subprocess.Popen, first: signal.Signals = signal.SIGTERM) -> None:
    """Stop the process group of ``process`` (started with ``start_new_session``): ``first``, then SIGKILL."""
    try:
        os.killpg(process.pid, first)
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    except ProcessLookupError:
        pass


def home_env(home: Path) -> dict[str, str]:
    """The environment of a process on ``home``: the home, its Dagster instance, and MLflow's telemetry off."""
    return {
        **os.environ,
        "SHOPSEQ_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster_home"),
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }


def run_cli(
    *args: str,
    home: Path | None = None,
    cwd: Path = REPO,
    env: Mapping[str, str] | None = None,
    timeout: float = 900,
) -> subprocess.CompletedProcess:
    """``python -m workflows.cli *args`` in ``cwd``, as a user types it, output captured: with ``--home home`` and
    ``home_env(home)`` when a home is given, and ``env`` on top."""
    command = [sys.executable, "-m", "workflows.cli", *args]
    environment = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    if home is not None:
        command += ["--home", str(home)]
        environment = home_env(home)
    return subprocess.run(
        command, cwd=cwd, env={**environment, **(env or {})}, capture_output=True, text=True, timeout=timeout
    )
