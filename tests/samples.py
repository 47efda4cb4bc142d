"""The public data samples beside the repository (../shared/data), or wherever SHOPSEQ_SAMPLE_DATA points.

Tests that read them skip on a machine without them (a clean clone in CI has no ../shared).
"""

import os
from pathlib import Path

import pytest

SHARED = Path(os.environ.get("SHOPSEQ_SAMPLE_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
needs_samples = pytest.mark.skipif(not SHARED.is_dir(), reason="the shared public samples are not on this machine")
