import datetime as dt

import duckdb
import numpy as np
import pandas as pd
import pytest

from assets.logic.metrics import BOOTSTRAP_SAMPLES
from assets.logic.next_event import (
    EVENT_CLASSES,
    NEXT_EVENT_FEATURES,
    multiclass_intervals,
    multiclass_metrics,
    session_states_sql,
)

T0 = dt.datetime(2025, 3, 10, 12, 0)


def _states(events: list[tuple]) -> pd.DataFrame:
    frame = pd.DataFrame(events, columns=["user_id", "session_id", "event_time", "event_id", "event_type", "item_id"])
    with duckdb.connect() as conn:
        conn.register("events", frame)
        return conn.execute(
            f"SELECT * FROM ({session_states_sql('SELECT * FROM events')}) ORDER BY state_time, event_id"
        ).df()


EVENTS = [
    ("u", "old", T0 - dt.timedelta(days=2), "e0", "purchase", "Z"),
    ("u", "s", T0, "e1", "view", "A"),
    ("u", "s", T0 + dt.timedelta(seconds=30), "e2", "view", "B"),
    ("u", "s", T0 + dt.timedelta(seconds=90), "e3", "add_to_cart", "B"),
    ("u", "s", T0 + dt.timedelta(seconds=100), "e4", "purchase", "B"),
]


def test_a_state_describes_its_session_so_far_and_the_users_week_before():
    states = _states(EVENTS).set_index("event_id")
    after_b = states.loc["e2"]
    assert after_b["next_type"] == "add_to_cart"
    assert (after_b["session_events"], after_b["session_views"], after_b["session_carts"]) == (2, 2, 0)
    assert (after_b["last_is_view"], after_b["previous_is_view"], after_b["session_items"]) == (1, 1, 2)
    assert (after_b["gap_seconds"], after_b["session_seconds"], after_b["last_item_repeats"]) == (30, 30, 0)
    assert (after_b["user_events_7d"], after_b["user_purchases_7d"], after_b["user_sessions_7d"]) == (1, 1, 1)
    after_cart = states.loc["e3"]
    assert (after_cart["last_is_add_to_cart"], after_cart["previous_is_view"], after_cart["last_item_repeats"]) == (
        1,
        1,
        1,
    )
    assert after_cart["session_items"] == 2
    assert pd.isna(states.loc["e4", "next_type"])  # the session's last event has nothing to predict
    assert states.loc["e0", "user_events_7d"] == 0  # nothing before the first session


def test_a_state_never_reads_a_later_event():
    before = _states(EVENTS).set_index("event_id")
    later = [
        ("u", "s", T0 + dt.timedelta(seconds=200), "e5", "favorite", "C"),
        ("u", "s2", T0 + dt.timedelta(hours=3), "e6", "view", "D"),
    ]
    after = _states(EVENTS + later).set_index("event_id")
    earlier = ["e0", "e1", "e2", "e3"]
    pd.testing.assert_frame_equal(before.loc[earlier, NEXT_EVENT_FEATURES], after.loc[earlier, NEXT_EVENT_FEATURES])
    assert after.loc["e4", "next_type"] == "favorite"
    assert (after["state_time"] <= after["next_time"].fillna(after["state_time"])).all()


def test_multiclass_metrics_reward_the_right_class():
    y = np.array([0, 2, 5, 0, 2])
    perfect = np.eye(len(EVENT_CLASSES))[y] * 0.9 + 0.1 / len(EVENT_CLASSES)
    uniform = np.full((len(y), len(EVENT_CLASSES)), 1 / len(EVENT_CLASSES))
    good, flat = multiclass_metrics(y, perfect), multiclass_metrics(y, uniform)
    assert good["auc"] == 1.0 and good["accuracy"] == 1.0
    assert flat["auc"] == 0.5
    assert good["log_loss"] < flat["log_loss"] and good["brier"] < flat["brier"]
    assert "auc_search" not in good  # no hold-out state has a search next: its AUC is undefined, not reported


def test_multiclass_intervals_are_the_percentiles_of_the_metrics_of_each_resample():
    """Against the definition: ``multiclass_metrics`` of every resample of the states (the shared draws, over
    several blocks), a rare type missing from some resamples (left out of their macro AUC), one type missing from
    the hold-out, and tied scores."""
    rng = np.random.default_rng(4)
    n = 1500  # resampled 166 at a time: two blocks of draws
    y = rng.choice([0, 2, 3], size=n, p=[0.6, 0.3, 0.1])  # no search (1) nor favorite (4)
    y[[10, 20]] = 5  # two purchases: about one resample in seven draws neither
    p = rng.random((n, len(EVENT_CLASSES))) + 2.0 * np.eye(len(EVENT_CLASSES))[y] * rng.random((n, 1))
    p = np.round(p / p.sum(axis=1, keepdims=True), 2)  # probabilities of two decimals: many ties in every type
    values = multiclass_metrics(y, p)
    intervals = multiclass_intervals(y, p)
    draws = np.random.default_rng(7).integers(0, n, size=(BOOTSTRAP_SAMPLES, n))
    resampled = [multiclass_metrics(y[d], p[d]) for d in draws]
    assert sum("auc_purchase" not in r for r in resampled) > 0  # the rare type is missing from some resamples
    assert set(intervals) == {
        "auc",
        "auc_view",
        "auc_add_to_cart",
        "auc_remove_from_cart",
        "auc_purchase",
        "log_loss",
        "brier",
    }
    for metric, (low, high) in intervals.items():
        stats = np.array([r.get(metric, np.nan) for r in resampled])
        expected = (np.nanpercentile(stats, 2.5), np.nanpercentile(stats, 97.5))
        if metric.startswith("auc_"):
            assert (low, high) == expected  # to the bit
        else:  # a mean of means: equal up to the order of the sums
            assert (low, high) == pytest.approx(expected, rel=1e-12)
        assert low <= values[metric] <= high


def test_an_event_id_repeated_on_two_days_of_one_session_gives_one_state_per_event():
    # ids are unique per day (cleaned_events), so a source session over midnight may hold one id twice
    midnight = dt.datetime(2025, 3, 11)
    events = [
        ("u", "night", midnight - dt.timedelta(minutes=5), "x1", "view", "A"),
        ("u", "night", midnight + dt.timedelta(minutes=5), "x1", "add_to_cart", "A"),
    ]
    states = _states(events)
    assert len(states) == 2
    assert list(states["session_items"]) == [1, 1] and list(states["next_type"].fillna("-")) == ["add_to_cart", "-"]
