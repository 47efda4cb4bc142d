"""The landing source: one folder of files per day under ``<home>/landing``."""

import datetime as dt
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from dagster import ConfigurableResource, InitResourceContext
from pydantic import PrivateAttr

from resources.home import SettingsInvalid, home_paths, read_settings

if TYPE_CHECKING:
    from assets.logic.synthetic import ShopParams

LANDING_SUFFIXES = (".parquet",)
LANDING_MODE_VARIABLE = "SHOPSEQ_LANDING_MODE"


class LandingSource(ConfigurableResource):
    """Daily landing folders ``<home>/landing/YYYY-MM-DD/*.parquet`` in the canonical schema.

    ``mode="synthetic"`` generates a missing day from the seeded synthetic shop
    described in ``landing/shop.json`` (written by ``shopseq demo``; the defaults
    otherwise). ``mode="files"`` only reads what ``shopseq ingest`` or another
    system put there and fails on a missing day. ``mode="auto"`` (the default) is
    ``files`` once ``shopseq ingest`` has marked the home so, else ``synthetic``:
    a home of real logs never gets synthetic days mixed in. Left empty, the mode is ``$SHOPSEQ_LANDING_MODE`` as
    the run starts, else ``auto``.
    """

    home: str
    mode: str = ""
    _environment_mode: str = PrivateAttr(default="")

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self._environment_mode = os.environ.get(LANDING_MODE_VARIABLE, "")

    @property
    def configured_mode(self) -> str:
        return self.mode or self._environment_mode or "auto"

    @property
    def effective_mode(self) -> str:
        """The mode to read the landing in; refuses what would mix made-up days into a shop's real logs: synthetic
        days in a home of ingested logs, or such a home read without its settings (as UTC synthetic days)."""
        from assets.logic.ingest import INGEST_LOCK

        mode = self.configured_mode
        recorded = read_settings(self.home).get("landing")
        if recorded is None and mode != "files" and (self.root / INGEST_LOCK).exists():
            raise SettingsInvalid(
                f"{home_paths(self.home)['settings']} is missing, but shopseq ingest wrote {self.root}: without it the "
                "home's days would be read as synthetic UTC days; restore the file, or ingest the logs again"
            )
        if mode == "auto":
            return recorded or "synthetic"
        if mode not in ("synthetic", "files"):
            raise ValueError(f"landing mode must be 'auto', 'synthetic' or 'files', not {mode!r}")
        if mode == "synthetic" and recorded == "files":
            raise SettingsInvalid(
                f"{self.root} holds ingested logs: synthetic days would mix made-up events into the "
                "shop's real landing and warehouse; use another --home for synthetic data"
            )
        return mode

    @property
    def root(self) -> Path:
        return home_paths(self.home)["landing"]

    def shop(self) -> "ShopParams":
        # imported here: importing assets.logic loads the asset modules, which import this package
        from assets.logic.synthetic import ShopParams

        spec = self.root / "shop.json"
        if not spec.exists():
            return ShopParams()
        raw = json.loads(spec.read_text())
        raw["shop_start"] = dt.date.fromisoformat(raw["shop_start"])
        return ShopParams(**raw)

    def save_shop(self, params: "ShopParams") -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        fields = {**params.__dict__, "shop_start": params.shop_start.isoformat()}
        (self.root / "shop.json").write_text(json.dumps(fields, indent=2))

    def landed_days(self) -> list[dt.date]:
        """The days that have a landing folder with at least one file, in order, listed after an ingest's
        killed publish is finished and while none is under way (see ``assets.logic.ingest.settled_landing``)."""
        from assets.logic.ingest import settled_landing  # imported here, as in shop()

        if not self.root.is_dir():
            return []
        days = []
        with settled_landing(self.root):
            for folder in self.root.iterdir():
                try:
                    day = dt.date.fromisoformat(folder.name)
                except ValueError:
                    continue
                if folder.is_dir() and any(f.suffix in LANDING_SUFFIXES for f in folder.iterdir()):
                    days.append(day)
        return sorted(days)

    def files_for_day(self, day: dt.date) -> list[str]:
        """The day's landing files (listed as in ``landed_days``), generating them first in synthetic mode."""
        from assets.logic.ingest import settled_landing

        mode = self.effective_mode
        folder = self.root / day.isoformat()
        files = []
        if self.root.is_dir():
            with settled_landing(self.root):  # a killed publish may still owe this day its folder
                if folder.is_dir():
                    files = sorted(str(f) for f in folder.glob("*") if f.suffix in LANDING_SUFFIXES)
        if files:
            return files
        if mode == "synthetic":
            from assets.logic.synthetic import write_day

            return [write_day(self.shop(), day, str(self.root))]
        raise FileNotFoundError(f"no landing files for {day} in {folder} (landing mode 'files')")
