"""The public data samples beside the repository (../shared/data), or wherever SHOPSEQ_SAMPLE_DATA points.

Tests that read them skip on a machine without them (a clean clone in CI has no ../shared).
"""

import os
import signal
import subprocess
from pathlib import Path

import pytest

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
