"""Where all of shopseq's state lives: one home folder (``SHOPSEQ_HOME`` for the Dagster code location, ``--home``
for the commands)."""

import datetime as dt
import fcntl
import json
from pathlib import Path
from typing import Any


def home_paths(home: str) -> dict[str, Path]:
    """The files and folders of the home ``home`` (``~`` expanded, relative to the working directory)."""
    if not str(home).strip():  # an empty SHOPSEQ_HOME would make the working directory the home
        raise ValueError("the home folder is empty: name one (SHOPSEQ_HOME, or --home for the commands)")
    root = Path(home).expanduser().absolute()
    return {
        "landing": root / "landing",
        "warehouse": root / "warehouse.duckdb",
        "lake": root / "lake",
        "mlflow_db": root / "mlflow.db",
        "mlartifacts": root / "mlartifacts",
        "dagster_home": root / "dagster_home",
        "settings": root / "settings.json",
    }


# Where a home's daily tables are built (``resources.engine``): recorded in its settings by its first run.
ENGINES = ("duckdb", "spark")


class SettingsInvalid(RuntimeError):
    """``settings.json`` cannot be read, holds a value shopseq would refuse from the command line, or does not fit
    what the home holds (a landing of ingested logs without its settings, or read as synthetic days)."""


def read_settings(home: str) -> dict[str, Any]:
    """The home's settings (``settings.json``): ``timezone`` of the shop's days, ``landing`` mode, whether
    (and under which key fingerprint) the home is pseudonymised, and the ``engine`` its daily tables are built on.

    ``shopseq ingest`` writes them (the engine: the home's first run); a home without the file is the synthetic
    default (UTC days). The time zone reaches SQL and partition bounds, so a file edited by hand is validated like
    ``--tz``.
    """
    from assets.logic.warehouse_sql import check_timezone

    path = home_paths(home)["settings"]
    if not path.exists():
        return {}
    try:
        settings = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SettingsInvalid(f"{path} cannot be read: {error}") from None
    if not isinstance(settings, dict):
        raise SettingsInvalid(f"{path} must hold a JSON object")
    if "timezone" in settings:
        try:
            check_timezone(settings["timezone"], f"{path}: timezone")
        except ValueError as error:
            raise SettingsInvalid(str(error)) from None
    expected = {
        "landing": lambda v: v in ("files", "synthetic"),
        "engine": lambda v: v in ENGINES,
        "pseudonymised": lambda v: isinstance(v, bool),
        "pseudonym_key_fingerprint": lambda v: v is None or isinstance(v, str),
        "pending_withdrawals": lambda v: isinstance(v, list) and all(_is_day(d) for d in v),
    }
    for key, valid in expected.items():
        if key in settings and not valid(settings[key]):
            raise SettingsInvalid(f"{path}: {key} holds {settings[key]!r}, which shopseq never writes there")
    return settings


def _is_day(value: Any) -> bool:
    try:
        return isinstance(value, str) and dt.date.fromisoformat(value).isoformat() == value
    except ValueError:
        return False


def write_settings(home: str, **values: Any) -> None:
    """Merge ``values`` into the settings; the file is replaced whole (written beside it, then renamed). Writers
    take turns on ``settings.lock`` beside it (``flock``, which the kernel drops with a process that dies): two
    processes starting on a new home at once both record its engine, and each must read what the other wrote and
    rename its own staged file."""
    path = home_paths(home)["settings"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name("settings.lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        staged = path.with_name(f".{path.name}.partial")
        staged.write_text(json.dumps({**read_settings(home), **values}, indent=2, sort_keys=True) + "\n")
        staged.replace(path)
