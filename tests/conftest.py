import datetime as dt
import os

from assets.logic.synthetic import ShopParams

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

SMALL_SHOP = ShopParams(seed=11, events_per_day=1500, shop_start=dt.date(2025, 3, 1))


def shop_days(n: int, params: ShopParams = SMALL_SHOP) -> list[dt.date]:
    return [params.shop_start + dt.timedelta(days=i) for i in range(n)]


def dagster_home(home) -> str:
    """``<home>/dagster_home`` with shopseq's instance settings and its storage created (so processes started
    together do not race to create it), without touching this process's environment."""
    from pathlib import Path

    from dagster import DagsterInstance

    from workflows.cli import DAGSTER_YAML

    folder = Path(home) / "dagster_home"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dagster.yaml").write_text(DAGSTER_YAML.read_text())
    DagsterInstance.from_config(str(folder)).dispose()
    return str(folder)
