"""Candidates are stored narrow; the ranker's rows joined at read time are the wide rows they used to be."""

import datetime as dt
import hashlib
import json
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from assets.logic.candidates import (
    CANDIDATE_FEATURES,
    JOINED_FEATURES,
    RANKER_FEATURES,
    build_candidates_day,
    stored_ranker_rows_sql,
)
from assets.logic.events import clean_day, load_raw_day
from assets.logic.features import build_item_features_day, build_user_features_day
from assets.logic.synthetic import ShopParams, write_day

# Made by the code that stored every candidate 38 features wide (commit b72d2f5) from the same three days:
# a sha256 per column of the rows of ``ranking_candidates`` ordered by (as_of_date, user_id, item_id).
WIDE = json.loads((Path(__file__).parent / "wide_candidates_digest.json").read_text())


def _digest(frame: pd.DataFrame) -> dict[str, str]:
    """Per column, a sha256 of its values in row order: the exact doubles (NaN for null), or the strings."""
    return {
        c: hashlib.sha256(
            frame[c].astype(str).str.cat(sep="\n").encode()
            if frame[c].dtype == object
            else np.ascontiguousarray(frame[c].to_numpy(np.float64, na_value=np.nan)).tobytes()
        ).hexdigest()
        for c in ["user_id", "item_id", "category_id", "source", *RANKER_FEATURES]
    }


@pytest.fixture(scope="module")
def default_shop(tmp_path_factory):
    """The synthetic default shop's first three days, with candidates as of the second and the third."""
    params = ShopParams()
    days = [params.shop_start + dt.timedelta(days=i) for i in range(3)]
    root = str(tmp_path_factory.mktemp("landing"))
    conn = duckdb.connect()
    for day in days:
        load_raw_day(conn, [write_day(params, day, root)], day)
        clean_day(conn, day, 2000)
        build_user_features_day(conn, day)
        build_item_features_day(conn, day)
    for day in days[1:]:
        build_candidates_day(conn, day)
    yield conn, days[1:]
    conn.close()


def test_the_joined_rows_are_the_wide_rows_column_for_column(default_shop):
    conn, days = default_shop
    rows = conn.execute(
        stored_ranker_rows_sql("list_contains($days, as_of_date)") + " ORDER BY as_of_date, user_id, item_id",
        {"days": days},
    ).df()
    assert len(rows) == WIDE["rows"]
    differ = [c for c, digest in _digest(rows).items() if WIDE["digest"][c] != digest]
    assert differ == []


def test_the_candidates_table_stores_only_the_per_pair_features(default_shop):
    conn, _ = default_shop
    stored = [r[0] for r in conn.execute("DESCRIBE ranking_candidates").fetchall()]
    assert set(CANDIDATE_FEATURES) <= set(stored) and not set(JOINED_FEATURES) & set(stored)
    assert sorted(CANDIDATE_FEATURES + JOINED_FEATURES) == sorted(RANKER_FEATURES)


def test_a_days_rows_join_that_days_features_only(default_shop):
    """The user and item features come from the candidates' own as_of_date, not from another day's."""
    conn, days = default_shop
    day = days[-1]
    rows = conn.execute(stored_ranker_rows_sql("as_of_date = $day"), {"day": day}).df()
    assert (
        len(rows)
        == conn.execute("SELECT count(*) FROM ranking_candidates WHERE as_of_date = ?", [day]).fetchall()[0][0]
    )
    items = conn.execute("SELECT item_id, item_views_7d FROM item_features WHERE as_of_date = ?", [day]).df()
    joined = rows[["item_id", "item_views_7d"]].merge(items, on="item_id", how="left", suffixes=("", "_day"))
    pd.testing.assert_series_equal(joined["item_views_7d"], joined["item_views_7d_day"], check_names=False)
    users = conn.execute("SELECT user_id, events_7d FROM user_features WHERE as_of_date = ?", [day]).df()
    joined = rows[["user_id", "user_events_7d"]].merge(users, on="user_id", how="left")
    pd.testing.assert_series_equal(joined["user_events_7d"], joined["events_7d"], check_names=False)


def test_the_passes_are_ordered_disjoint_ranges_that_cover_every_user(monkeypatch):
    from assets.logic import candidates
    from assets.logic.warehouse_sql import ensure_table

    conn = duckdb.connect()
    ensure_table(conn, "cleaned_events")
    cutoff = dt.datetime(2025, 3, 2)
    # 40 users of 1-9 events, and one user with more events than a pass: the quantiles repeat its id
    counts = {f"u{n:02d}": 1 + n % 9 for n in range(40)} | {"u20": 60}
    conn.execute(
        """INSERT INTO cleaned_events (event_time, user_id, session_id, event_type, event_id, is_bot)
           SELECT $cutoff - INTERVAL 1 HOUR, user_id, 's', 'view', user_id || '-' || i, false
           FROM (SELECT unnest($users) AS user_id, unnest($counts) AS n), range(n) r(i)""",
        {"cutoff": cutoff, "users": list(counts), "counts": list(counts.values())},
    )
    # the history in user order, as build_candidates_day stores it
    conn.execute("CREATE TABLE history AS SELECT user_id FROM cleaned_events ORDER BY user_id")
    events = sum(counts.values())
    monkeypatch.setattr(candidates, "EVENTS_PER_PASS", 20)
    bounds = candidates.pass_bounds(conn, "history", events)
    assert bounds[0][0] is None and bounds[-1][1] is None and len(bounds) >= 5
    assert all(high == low for (_, high), (low, _) in zip(bounds[:-1], bounds[1:]))  # adjacent
    assert all(low < high for low, high in bounds if low is not None and high is not None)  # none empty, ascending
    for user in counts:
        assert sum((low is None or user >= low) and (high is None or user < high) for low, high in bounds) == 1
    heavy = [b for b in bounds if b[0] == "u20"]
    assert heavy and sum(n for u, n in counts.items() if heavy[0][0] <= u < heavy[0][1]) >= 60
    # the bounds are the history's quantiles: each range but the heavy user's holds a pass of events, give or take
    # one user's (at most 9)
    passes = -(-events // 20)
    (quantiles,) = conn.execute(
        "SELECT quantile_disc(user_id, $f) FROM history", {"f": [k / passes for k in range(1, passes)]}
    ).fetchone()
    assert [low for low, _ in bounds[1:]] == sorted(set(quantiles))
    for low, high in bounds:
        if low != "u20":
            events_in = sum(n for u, n in counts.items() if (low is None or u >= low) and (high is None or u < high))
            assert 20 - 9 <= events_in <= 20 + 9, (low, high, events_in)
    monkeypatch.setattr(candidates, "EVENTS_PER_PASS", 10_000)
    assert candidates.pass_bounds(conn, "history", events) == [(None, None)]
