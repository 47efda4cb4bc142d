import datetime as dt
import os

from assets.logic.synthetic import ShopParams

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

SMALL_SHOP = ShopParams(seed=11, events_per_day=1500, shop_start=dt.date(2025, 3, 1))


def shop_days(n: int, params: ShopParams = SMALL_SHOP) -> list[dt.date]:
    return [params.shop_start + dt.timedelta(days=i) for i in range(n)]
