"""Advisory data monitors: daily volume against an ARMA forecast, and shifts in the event-type mix.

Both look at a daily series that ends with the days just materialised and say,
per day, whether it looks like the days before it. They warn; they do not block.
"""

import datetime as dt
from statistics import NormalDist

import duckdb
import numpy as np
import pandas as pd

from assets.logic.warehouse_sql import day_bounds

MIN_HISTORY_DAYS = 7
VOLUME_INTERVAL = 0.99
MIX_TRAILING_DAYS = 7
MIX_MAX_DISTANCE = 0.15


def daily_event_counts(conn: duckdb.DuckDBPyConnection, first: dt.date, last: dt.date, tz: str) -> pd.DataFrame:
    """raw_events per day of the shop's timezone ``tz`` (rows, from ``first`` or the first day with events, to
    ``last``; a day without events counts 0) and event type (columns).

    Counted per quarter hour, then per local day: every timezone's offset is a whole number of quarter hours, and
    converting the quarters, not the 10M events of a day, takes 0.3 s instead of 3 s."""
    counts = conn.execute(
        """SELECT CAST(timezone($tz, timezone('UTC', quarter)) AS DATE) AS day, event_type, sum(n) AS n FROM (
               SELECT time_bucket(INTERVAL 15 MINUTE, event_time) AS quarter, event_type, count(*) AS n FROM raw_events
               WHERE event_time >= $start AND event_time < $end GROUP BY ALL
           ) GROUP BY ALL""",
        {"tz": tz, "start": day_bounds(first, tz)[0], "end": day_bounds(last, tz)[1]},
    ).df()
    calendar = [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]
    by_type = counts.pivot_table(index="day", columns="event_type", values="n", aggfunc="sum", fill_value=0)
    by_type.index = [pd.Timestamp(d).date() for d in by_type.index]
    by_type = by_type.reindex(calendar, fill_value=0)
    # Days before the shop's first event are not history: start the series at the first day with rows.
    active = by_type.sum(axis=1)
    return by_type.loc[active[active > 0].index.min() :] if active.any() else by_type.iloc[0:0]


def volume_anomalies(daily: pd.Series, judged: list, interval: float = VOLUME_INTERVAL) -> pd.DataFrame:
    """One-step-ahead forecasts of daily row counts from an AR(1) model with a constant on log counts.

    ``daily`` is indexed by day (every day, zeros included), oldest first. The model
    ``y[t] = c + phi * y[t-1] + e`` is fitted by conditional least squares (the AutoReg
    estimator) on the whole series; each judged day is compared with the forecast from
    the day before it, inside ``interval`` of a normal residual. Days with fewer than
    ``MIN_HISTORY_DAYS`` before them are not judged. Written with numpy: importing
    statsmodels costs 9-13 s, longer than the whole ingestion of a day.
    Returns day, observed, expected, lower, upper, anomalous.
    """
    columns = ["day", "observed", "expected", "lower", "upper", "anomalous"]
    y = np.log1p(daily.to_numpy(dtype=float))
    if len(y) <= MIN_HISTORY_DAYS or np.ptp(y) == 0:
        return pd.DataFrame(columns=columns)
    design = np.column_stack([np.ones(len(y) - 1), y[:-1]])
    coef, *_ = np.linalg.lstsq(design, y[1:], rcond=None)
    residuals = y[1:] - design @ coef
    sigma = float(np.sqrt(residuals @ residuals / max(len(residuals) - 2, 1)))
    z = NormalDist().inv_cdf(0.5 + interval / 2)
    rows = []
    for day in judged:
        i = daily.index.get_loc(day)
        if i < MIN_HISTORY_DAYS:
            continue
        mean = coef[0] + coef[1] * y[i - 1]
        lower, upper = np.expm1(mean - z * sigma), np.expm1(mean + z * sigma)
        observed = float(daily.iloc[i])
        rows.append(
            {
                "day": str(day),
                "observed": int(observed),
                "expected": round(float(np.expm1(mean)), 1),
                "lower": round(float(lower), 1),
                "upper": round(float(upper), 1),
                "anomalous": bool(observed < lower or observed > upper),
            }
        )
    return pd.DataFrame(rows, columns=columns)


def mix_shifts(counts: pd.DataFrame, judged: list, max_distance: float = MIX_MAX_DISTANCE) -> pd.DataFrame:
    """Total variation distance between each judged day's event-type shares and those of the
    ``MIX_TRAILING_DAYS`` days before it. ``counts``: index day (oldest first), one column per type."""
    shares = counts.div(counts.sum(axis=1).replace(0, np.nan), axis=0).fillna(0.0)
    rows = []
    for day in judged:
        i = counts.index.get_loc(day)
        before = counts.iloc[max(0, i - MIX_TRAILING_DAYS) : i].sum()
        if i < 3 or before.sum() == 0:
            continue
        distance = 0.5 * float((shares.iloc[i] - before / before.sum()).abs().sum())
        biggest = (shares.iloc[i] - before / before.sum()).abs().idxmax()
        rows.append(
            {
                "day": str(day),
                "distance": round(distance, 4),
                "largest_change": str(biggest),
                "share": round(float(shares.iloc[i][biggest]), 4),
                "trailing_share": round(float(before[biggest] / before.sum()), 4),
                "shifted": distance > max_distance,
            }
        )
    return pd.DataFrame(rows, columns=["day", "distance", "largest_change", "share", "trailing_share", "shifted"])
