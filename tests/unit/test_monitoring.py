import datetime as dt

import numpy as np
import pandas as pd
import pytest

from assets.logic.monitoring import MIN_HISTORY_DAYS, mix_shifts, volume_anomalies
from expectations import validate

DAYS = [dt.date(2025, 3, 1) + dt.timedelta(days=i) for i in range(21)]


def _volumes(dip_at: int | None = None) -> pd.Series:
    rng = np.random.default_rng(3)
    counts = 20_000 + rng.normal(0, 300, len(DAYS))
    if dip_at is not None:
        counts[dip_at] = 4_000
    return pd.Series(counts.round(), index=DAYS)


def test_a_collapsed_day_is_flagged_and_normal_days_are_not():
    judged = DAYS[10:]
    assert not volume_anomalies(_volumes(), judged)["anomalous"].any()
    flagged = volume_anomalies(_volumes(dip_at=15), judged)
    assert flagged.loc[flagged["anomalous"], "day"].tolist() == [str(DAYS[15])]
    assert len(flagged) == len(judged)


def test_days_without_enough_history_are_not_judged():
    result = volume_anomalies(_volumes(), DAYS)
    assert result["day"].tolist() == [str(d) for d in DAYS[MIN_HISTORY_DAYS:]]


def test_an_event_type_mix_shift_is_flagged():
    counts = pd.DataFrame({"view": [900] * len(DAYS), "purchase": [100] * len(DAYS)}, index=DAYS)
    assert not mix_shifts(counts, DAYS[5:])["shifted"].any()
    counts.loc[DAYS[12], "purchase"] = 900
    shifted = mix_shifts(counts, DAYS[5:])
    row = shifted[shifted["shifted"]].iloc[0]
    assert row["day"] == str(DAYS[12]) and row["distance"] == pytest.approx(0.4, abs=1e-3)


def test_reconciliation_and_point_in_time_suites_fail_on_bad_numbers():
    counts = pd.DataFrame({"day": DAYS[:2], "expected": [10, 12], "actual": [10, 11]})
    result = validate(counts, "stage_reconciliation", "x")
    assert not result.passed and "(12, 11)" in str(result.metadata["failures"].data)
    leak = pd.DataFrame(
        {
            "as_of_date": DAYS[:2],
            "cutoff": pd.to_datetime(["2025-03-02", "2025-03-03"]),
            "latest_event_time": pd.to_datetime(["2025-03-01 23:59", "2025-03-03 00:00"]),
        }
    )
    assert not validate(leak, "point_in_time", "y").passed
    assert validate(leak.iloc[:1], "point_in_time", "y").passed


@pytest.mark.parametrize(
    "tz, midnight_utc",
    [
        ("Asia/Kathmandu", "2025-03-01 18:15"),  # UTC+5:45
        ("Europe/Berlin", "2025-03-29 23:00"),  # the night clocks go forward: 30 March starts at 23:00 UTC, ends 22:00
        ("UTC", "2025-03-02 00:00"),
    ],
)
def test_events_are_counted_on_the_shops_local_day(tz, midnight_utc):
    import duckdb

    from assets.logic.monitoring import daily_event_counts
    from assets.logic.warehouse_sql import day_bounds

    midnight = pd.Timestamp(midnight_utc)
    local_day = (midnight + pd.Timedelta(hours=14)).tz_localize("UTC").tz_convert(tz).date()
    minute = pd.Timedelta(minutes=1)
    events = pd.DataFrame(
        {
            "event_time": [
                midnight - minute,
                midnight,
                midnight + 7 * minute,
                day_bounds(local_day, tz)[1] - minute,
                day_bounds(local_day, tz)[1],
            ],
            "event_type": ["view", "view", "purchase", "view", "view"],
        }
    )
    with duckdb.connect() as conn:
        conn.from_df(events).create("raw_events")
        counts = daily_event_counts(conn, local_day - dt.timedelta(days=3), local_day + dt.timedelta(days=1), tz)
    before, after = local_day - dt.timedelta(days=1), local_day + dt.timedelta(days=1)
    assert counts.index.tolist() == [before, local_day, after]  # from the first day with events
    assert counts.loc[local_day].to_dict() == {"purchase": 1, "view": 2}
    assert counts.loc[before].to_dict() == {"purchase": 0, "view": 1} and counts.loc[after, "view"] == 1
