"""Where all of shopseq's state lives: one home folder (``SHOPSEQ_HOME``)."""

import os
from pathlib import Path

DEFAULT_HOME = ".shopseq"


def home_from_environment() -> str:
    """The absolute home folder: ``$SHOPSEQ_HOME``, else ``.shopseq`` in the working directory.

    Read once, where the Definitions are built, so every resource of a code location
    shares one home; tests pass their own temporary home instead.
    """
    return str(Path(os.environ.get("SHOPSEQ_HOME") or DEFAULT_HOME).expanduser().resolve())


def home_paths(home: str) -> dict[str, Path]:
    root = Path(home)
    return {
        "landing": root / "landing",
        "warehouse": root / "warehouse.duckdb",
        "mlflow_db": root / "mlflow.db",
        "mlartifacts": root / "mlartifacts",
        "dagster_home": root / "dagster_home",
    }
