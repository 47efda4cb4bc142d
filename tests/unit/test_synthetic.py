import datetime as dt

import numpy as np
import pandas as pd
import pytest

from assets.logic.schema import EVENT_TYPES
from assets.logic.synthetic import ShopParams, generate_day, hash_uniform
from tests.conftest import SMALL_SHOP, shop_days


def test_a_day_generated_alone_equals_the_same_day_of_a_run():
    run = {day: generate_day(SMALL_SHOP, day) for day in shop_days(6)}
    alone = generate_day(SMALL_SHOP, shop_days(6)[4])
    pd.testing.assert_frame_equal(alone, run[shop_days(6)[4]])


def test_other_seed_gives_other_rows():
    day = shop_days(2)[1]
    other = ShopParams(
        seed=SMALL_SHOP.seed + 1, events_per_day=SMALL_SHOP.events_per_day, shop_start=SMALL_SHOP.shop_start
    )
    assert not generate_day(SMALL_SHOP, day).equals(generate_day(other, day))


def test_hash_uniform_is_stable_and_uniform():
    keys = np.arange(100_000)
    u = hash_uniform(3, 1, keys)
    assert np.array_equal(u, hash_uniform(3, 1, keys))
    assert u.min() >= 0.0 and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 0.01


def test_day_has_funnel_searches_faults_and_growth():
    frames = [generate_day(SMALL_SHOP, d) for d in shop_days(5)]
    day = frames[-1]
    types = set(day["event_type"].dropna())
    assert {"view", "search", "add_to_cart", "purchase", "favorite"} <= types
    assert "click" in types  # unknown event type fault
    assert day["user_id"].isna().sum() > 0
    assert day.duplicated().sum() > 0
    assert (day["event_time"] < pd.Timestamp(shop_days(5)[-1])).sum() > 0  # late events
    assert day.loc[day["event_type"] == "search", "item_id"].isna().all()
    # new users and items arrive
    first_users = set(frames[0]["user_id"].dropna())
    assert len(set(day["user_id"].dropna()) - first_users) > 0
    assert set(EVENT_TYPES) >= types - {"click"}


def test_users_come_back_to_their_items():
    """Repeat behaviour: a good share of a user's items tomorrow were touched by that user before."""
    days = shop_days(6)
    frames = pd.concat([generate_day(SMALL_SHOP, d) for d in days]).dropna(subset=["user_id", "item_id"])
    history = frames[frames["event_time"] < pd.Timestamp(days[-1])][["user_id", "item_id"]].drop_duplicates()
    today = frames[frames["event_time"] >= pd.Timestamp(days[-1])][["user_id", "item_id"]].drop_duplicates()
    returning = today[today["user_id"].isin(history["user_id"])]
    repeat_share = returning.merge(history).shape[0] / len(returning)
    assert repeat_share > 0.2


def test_day_before_the_shop_opened_is_refused():
    with pytest.raises(ValueError, match="before the synthetic shop opened"):
        generate_day(SMALL_SHOP, SMALL_SHOP.shop_start - dt.timedelta(days=1))
