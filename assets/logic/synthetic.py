"""A deterministic synthetic shop: daily landing files in the canonical event schema.

The shop is a pure function of ``(seed, shop_start, day)``: every user and item
attribute that must persist across days (category preferences, popularity,
shopping missions) comes from a counter-based hash of ids, never from state
carried over from the previous day. Generating one day alone therefore gives
exactly the rows that a multi-day run gives for that day.

Structure a model can learn and a popularity baseline cannot:

* items have Zipf-like popularity within Zipf-sized categories;
* users prefer two categories and run *missions*: a few days spent on a small
  set of items of one category, viewing first, then adding to cart, then
  buying on the mission's last days (repeat behaviour and a funnel);
* a new mission's items come from the category of the previous one half of
  the time, so a user's recent categories predict tomorrow's items;
* new users and new items arrive every day; some searches carry a query;
* a small rate of realistic faults: exact duplicates, missing users or items,
  unknown event types, late events (stamped the day before) and bad prices.
"""

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pandas as pd

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a fast, well-mixed bijection on uint64."""
    with np.errstate(over="ignore"):
        z = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        return z ^ (z >> np.uint64(31))


def hash_uniform(seed: int, salt: int, *keys: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) numbers that depend only on ``(seed, salt, keys)``."""
    h = _splitmix64(np.uint64(seed) * np.uint64(1_000_003) + np.uint64(salt))
    for key in keys:
        with np.errstate(over="ignore"):
            h = _splitmix64(h ^ (np.asarray(key).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)))
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


@dataclass(frozen=True)
class ShopParams:
    """Size and shape of the synthetic shop. All fields are part of its identity."""

    seed: int = 7
    shop_start: dt.date = dt.date(2025, 3, 1)
    events_per_day: int = 20_000
    n_categories: int = 40
    mission_days: int = 4
    fault_rate: float = 0.004

    @property
    def initial_users(self) -> int:
        return max(50, self.events_per_day // 8)

    @property
    def new_users_per_day(self) -> int:
        return max(1, self.initial_users // 50)

    @property
    def initial_items(self) -> int:
        return max(200, self.events_per_day // 4)

    @property
    def new_items_per_day(self) -> int:
        return max(1, self.initial_items // 100)


def _population(initial: int, per_day: int, day_index: int) -> int:
    return initial + per_day * day_index


def _birth_day(ids: np.ndarray, initial: int, per_day: int) -> np.ndarray:
    return np.where(ids < initial, 0, (ids - initial) // per_day + 1)


def item_categories(p: ShopParams, item_ids: np.ndarray) -> np.ndarray:
    """Category of each item; category sizes follow a Zipf law."""
    weights = 1.0 / np.arange(1, p.n_categories + 1) ** 0.8
    cdf = np.cumsum(weights) / weights.sum()
    return np.searchsorted(cdf, hash_uniform(p.seed, 1, item_ids), side="right").clip(0, p.n_categories - 1)


def item_popularity(p: ShopParams, item_ids: np.ndarray) -> np.ndarray:
    """Zipf-like popularity weight of each item (heavy tail, a few hits)."""
    u = hash_uniform(p.seed, 2, item_ids)
    return (1.0 - u) ** -1.2  # Pareto tail, alpha ~ 0.83


def item_prices(p: ShopParams, item_ids: np.ndarray, categories: np.ndarray) -> np.ndarray:
    base = np.exp(2.0 + 2.5 * hash_uniform(p.seed, 3, categories))
    spread = np.exp(0.6 * (hash_uniform(p.seed, 4, item_ids) - 0.5))
    return np.round(base * spread, 2)


def user_preferences(p: ShopParams, user_ids: np.ndarray) -> np.ndarray:
    """Two preferred categories per user, shape (n, 2)."""
    first = item_categories(p, (user_ids.astype(np.int64) + 10_000_000))  # popular categories more often
    second = (hash_uniform(p.seed, 5, user_ids) * p.n_categories).astype(np.int64)
    return np.stack([first, second], axis=1)


class _Catalogue:
    """Items alive on a day, indexed by category for weighted sampling."""

    def __init__(self, p: ShopParams, n_items: int):
        ids = np.arange(n_items, dtype=np.int64)
        self.categories = item_categories(p, ids)
        self.popularity = item_popularity(p, ids)
        self.prices = item_prices(p, ids, self.categories)
        order = np.lexsort((ids, self.categories))
        self.sorted_ids = ids[order]
        sorted_cats = self.categories[order]
        self.cat_start = np.searchsorted(sorted_cats, np.arange(p.n_categories), side="left")
        self.cat_end = np.searchsorted(sorted_cats, np.arange(p.n_categories), side="right")
        self.cum_weight = np.cumsum(self.popularity[order])
        self.global_cdf = np.cumsum(self.popularity) / self.popularity.sum()

    def sample_in_category(self, categories: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Popularity-weighted item of each category, driven by uniforms ``u``."""
        start, end = self.cat_start[categories], self.cat_end[categories]
        empty = start == end
        lo = np.where(start > 0, self.cum_weight[np.maximum(start - 1, 0)], 0.0)
        hi = self.cum_weight[np.maximum(end - 1, 0)]
        target = lo + u * (hi - lo)
        pos = np.searchsorted(self.cum_weight, target, side="right")
        pos = np.minimum(np.maximum(pos, start), np.maximum(end - 1, 0))
        picked = self.sorted_ids[pos]
        return np.where(empty, self.sample_global(u), picked)

    def sample_global(self, u: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.global_cdf, u, side="right").clip(0, len(self.global_cdf) - 1)


MISSION_ITEMS = 4


def _missions(p: ShopParams, user_ids: np.ndarray, day_index: int):
    """Each user's mission on a day: (has_mission, category, day_in_mission, item ids[n, 4])."""
    phase = (hash_uniform(p.seed, 10, user_ids) * p.mission_days).astype(np.int64)
    segment = (day_index + phase) // p.mission_days
    day_in_mission = (day_index + phase) % p.mission_days
    has_mission = hash_uniform(p.seed, 11, user_ids, segment) < 0.55
    prefs = user_preferences(p, user_ids)
    pick = (hash_uniform(p.seed, 12, user_ids, segment) < 0.5).astype(np.int64)
    category = prefs[np.arange(len(user_ids)), pick]
    # Items come from the catalogue as it was when the mission started.
    segment_start = np.maximum(segment * p.mission_days - phase, 0)
    items = np.empty((len(user_ids), MISSION_ITEMS), dtype=np.int64)
    for start_day in np.unique(segment_start):
        rows = np.flatnonzero(segment_start == start_day)
        catalogue = _Catalogue(p, _population(p.initial_items, p.new_items_per_day, int(start_day)))
        for k in range(MISSION_ITEMS):
            u = hash_uniform(p.seed, 20 + k, user_ids[rows], segment[rows])
            items[rows, k] = catalogue.sample_in_category(category[rows], u)
    return has_mission, category, day_in_mission, items


def generate_day(p: ShopParams, day: dt.date) -> pd.DataFrame:
    """All landing rows of one day, faults included, in the canonical schema."""
    day_index = (day - p.shop_start).days
    if day_index < 0:
        raise ValueError(f"day {day} is before the synthetic shop opened on {p.shop_start}")
    rng = np.random.default_rng([p.seed, day_index])
    n_users = _population(p.initial_users, p.new_users_per_day, day_index)
    n_items = _population(p.initial_items, p.new_items_per_day, day_index)
    users = np.arange(n_users, dtype=np.int64)
    catalogue = _Catalogue(p, n_items)
    has_mission, _category, day_in_mission, mission_items = _missions(p, users, day_index)

    activity = 0.25 + 1.5 * hash_uniform(p.seed, 30, users) ** 2
    born_today = (users >= p.initial_users) & (_birth_day(users, p.initial_users, p.new_users_per_day) == day_index)
    p_active = np.where(has_mission, 0.75, 0.12) * np.minimum(activity, 1.0)
    p_active = np.where(born_today, 1.0, p_active)
    active = users[rng.random(n_users) < p_active]
    m = len(active)
    if m == 0:
        return _empty_frame()

    lam = p.events_per_day / max(1, m)
    n_events = np.maximum(1, rng.poisson(lam * activity[active] / activity[active].mean()))
    ev_user = np.repeat(active, n_events)
    n = len(ev_user)

    # What each event touches: mission items, preferred categories or global hits.
    source = rng.random(n)
    in_mission = has_mission[ev_user]
    prefs = user_preferences(p, ev_user)
    pref_cat = prefs[np.arange(n), (rng.random(n) < 0.35).astype(np.int64)]
    item = catalogue.sample_in_category(pref_cat, rng.random(n))
    use_global = source > 0.9
    item = np.where(use_global, catalogue.sample_global(rng.random(n)), item)
    use_mission = in_mission & (source < 0.6)
    mission_pick = mission_items[ev_user, rng.integers(0, MISSION_ITEMS, n)]
    item = np.where(use_mission, mission_pick, item)

    # The funnel: carts late in a mission, purchases on its last day.
    stage = day_in_mission[ev_user]
    last = p.mission_days - 1
    r = rng.random(n)
    p_cart = np.where(use_mission, np.where(stage >= last - 1, 0.22, 0.05), 0.015)
    p_buy = np.where(use_mission, np.where(stage == last, 0.16, 0.0), 0.003)
    p_fav = np.where(use_mission, 0.04, 0.01)
    etype = np.full(n, "view", dtype=object)
    etype[r < p_fav + p_cart + p_buy] = "favorite"
    etype[r < p_cart + p_buy] = "add_to_cart"
    etype[r < p_buy] = "purchase"
    etype[(r > 0.985) & (etype == "view")] = "remove_from_cart"
    is_search = rng.random(n) < 0.04
    etype[is_search] = "search"

    # Sessions: one or two per active user, events a minute or two apart, the funnel in order.
    sessions_of_user = 1 + (rng.random(m) < 0.3)
    session_no = (rng.random(n) * np.repeat(sessions_of_user, n_events)).astype(np.int64)
    session_start = rng.uniform(0, 86_400 - 7_200, size=(m, 2))
    user_pos = np.repeat(np.arange(m), n_events)
    stage_rank = (
        pd.Series(etype)
        .map({"search": 0, "view": 1, "favorite": 2, "add_to_cart": 3, "remove_from_cart": 4, "purchase": 5})
        .to_numpy()
    )
    order = np.lexsort((rng.random(n), stage_rank, session_no, user_pos))
    ev_user, item, etype, session_no, user_pos = (a[order] for a in (ev_user, item, etype, session_no, user_pos))
    is_search = etype == "search"
    gaps = rng.exponential(70.0, n)
    key = user_pos * 2 + session_no
    starts = np.r_[True, key[1:] != key[:-1]]
    group_id = np.cumsum(starts) - 1
    cum = np.cumsum(gaps)
    offset = cum - cum[np.flatnonzero(starts)][group_id]
    seconds = np.minimum(session_start[user_pos, session_no] + offset, 86_399.0)
    event_time = pd.Timestamp(day) + pd.to_timedelta(np.round(seconds * 1000).astype(np.int64), unit="ms")

    categories = catalogue.categories[item]
    frame = pd.DataFrame(
        {
            "event_time": event_time,
            "user_id": pd.Series([f"u{u}" for u in ev_user], dtype=object),
            "session_id": [f"s{u}-{day_index}-{s}" for u, s in zip(ev_user, session_no)],
            "event_type": etype,
            "item_id": np.where(is_search, None, np.char.add("i", item.astype(str)).astype(object)),
            "category_id": np.char.add("c", categories.astype(str)).astype(object),
            "price": np.where(is_search, np.nan, catalogue.prices[item]),
            "query": np.where(is_search, np.char.add("category ", categories.astype(str)).astype(object), None),
        }
    )
    frame["event_id"] = [f"e{day_index}-{i}" for i in range(len(frame))]
    return _inject_faults(frame, p, rng, day)


def _inject_faults(frame: pd.DataFrame, p: ShopParams, rng: np.random.Generator, day: dt.date) -> pd.DataFrame:
    n = len(frame)
    n_faults = int(round(n * p.fault_rate))
    if n_faults == 0:
        return frame
    out = frame.copy()
    pick = lambda k: rng.choice(n, size=min(k, n), replace=False)  # noqa: E731
    out.loc[pick(n_faults // 4), "user_id"] = None
    views = np.flatnonzero(out["event_type"].to_numpy() == "view")
    if len(views):
        out.loc[rng.choice(views, size=min(len(views), max(1, n_faults // 8)), replace=False), "item_id"] = None
    out.loc[pick(max(1, n_faults // 8)), "event_type"] = "click"
    out.loc[pick(max(1, n_faults // 8)), "price"] = -1.0
    late = pick(max(1, n_faults // 8))
    out.loc[late, "event_time"] = out.loc[late, "event_time"] - pd.Timedelta(days=1)
    dupes = out.iloc[pick(max(1, n_faults // 2))]
    out = pd.concat([out, dupes], ignore_index=True)
    return out.sort_values(["event_time", "event_id"], kind="stable", ignore_index=True)


def _empty_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "event_time": pd.Series([], dtype="datetime64[ms]"),
            **{
                c: pd.Series([], dtype=object)
                for c in ("user_id", "session_id", "event_type", "item_id", "category_id")
            },
            "price": pd.Series([], dtype=float),
            "query": pd.Series([], dtype=object),
            "event_id": pd.Series([], dtype=object),
        }
    )


def write_day(p: ShopParams, day: dt.date, landing_root: str) -> str:
    """Write one day's landing file atomically; returns its path."""
    import os

    frame = generate_day(p, day)
    folder = os.path.join(landing_root, day.isoformat())
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "events.parquet")
    tmp = path + ".tmp"
    frame.assign(event_time=frame["event_time"].astype("datetime64[us]")).to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return path
