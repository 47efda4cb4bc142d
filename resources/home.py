"""Where all of shopseq's state lives: one home folder (``SHOPSEQ_HOME``)."""

import json
import os
from pathlib import Path
from typing import Any

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
        "settings": root / "settings.json",
    }


def read_settings(home: str) -> dict[str, Any]:
    """The home's settings (``settings.json``): ``timezone`` of the shop's days, ``landing`` mode.

    ``shopseq ingest`` writes them; a home without the file is the synthetic default (UTC days).
    """
    path = home_paths(home)["settings"]
    return json.loads(path.read_text()) if path.exists() else {}


def write_settings(home: str, **values: Any) -> None:
    path = home_paths(home)["settings"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**read_settings(home), **values}, indent=2, sort_keys=True) + "\n")
