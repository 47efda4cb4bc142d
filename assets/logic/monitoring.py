"""Advisory data monitors: daily volume against an ARMA forecast, and shifts in the event-type mix.

Both look at a daily series that ends with the days just materialised and say,
per day, whether it looks like the days before it. They warn; they do not block.
"""

import warnings

import numpy as np
import pandas as pd

MIN_HISTORY_DAYS = 7
VOLUME_INTERVAL = 0.99
MIX_TRAILING_DAYS = 7
MIX_MAX_DISTANCE = 0.15


def volume_anomalies(daily: pd.Series, judged: list, interval: float = VOLUME_INTERVAL) -> pd.DataFrame:
    """One-step-ahead forecasts of daily row counts from an AR(1) model with a constant on log counts.

    ``daily`` is indexed by day (every day, zeros included), oldest first. Each judged day
    is compared with the forecast made from the days before it (Kalman filter, parameters
    fitted on the whole series); days with fewer than ``MIN_HISTORY_DAYS`` before them
    are not judged. Returns day, observed, expected, lower, upper, anomalous.
    """
    from statsmodels.tsa.arima.model import ARIMA

    y = np.log1p(daily.to_numpy(dtype=float))
    columns = ["day", "observed", "expected", "lower", "upper", "anomalous"]
    if len(y) <= MIN_HISTORY_DAYS or np.ptp(y) == 0:
        return pd.DataFrame(columns=columns)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # short series: convergence warnings are expected
        fitted = ARIMA(y, order=(1, 0, 0), trend="c").fit()
    prediction = fitted.get_prediction()
    mean, bounds = prediction.predicted_mean, prediction.conf_int(alpha=1 - interval)
    rows = []
    for day in judged:
        i = daily.index.get_loc(day)
        if i < MIN_HISTORY_DAYS:
            continue
        lower, upper = np.expm1(bounds[i])
        observed = float(daily.iloc[i])
        rows.append({
            "day": str(day), "observed": int(observed), "expected": round(float(np.expm1(mean[i])), 1),
            "lower": round(float(lower), 1), "upper": round(float(upper), 1),
            "anomalous": bool(observed < lower or observed > upper),
        })
    return pd.DataFrame(rows, columns=columns)


def mix_shifts(counts: pd.DataFrame, judged: list, max_distance: float = MIX_MAX_DISTANCE) -> pd.DataFrame:
    """Total variation distance between each judged day's event-type shares and those of the
    ``MIX_TRAILING_DAYS`` days before it. ``counts``: index day (oldest first), one column per type."""
    shares = counts.div(counts.sum(axis=1).replace(0, np.nan), axis=0).fillna(0.0)
    rows = []
    for day in judged:
        i = counts.index.get_loc(day)
        before = counts.iloc[max(0, i - MIX_TRAILING_DAYS):i].sum()
        if i < 3 or before.sum() == 0:
            continue
        distance = 0.5 * float((shares.iloc[i] - before / before.sum()).abs().sum())
        biggest = (shares.iloc[i] - before / before.sum()).abs().idxmax()
        rows.append({
            "day": str(day), "distance": round(distance, 4), "largest_change": str(biggest),
            "share": round(float(shares.iloc[i][biggest]), 4), "trailing_share": round(float(before[biggest] / before.sum()), 4),
            "shifted": distance > max_distance,
        })
    return pd.DataFrame(rows, columns=["day", "distance", "largest_change", "share", "trailing_share", "shifted"])
