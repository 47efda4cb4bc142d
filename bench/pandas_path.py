"""The same stages written the obvious way in pandas (read, drop_duplicates, sort, groupby), as the baseline of
``shopseq bench``. It keeps the pipeline's rules where it computes a column (accept / quarantine, de-duplication by
event id, 30-minute sessions, bot flag, session and sequence aggregates) and a representative subset of the
user and item features (``USER_COLUMNS``, ``ITEM_COLUMNS``); ``compare`` checks it against the warehouse tables on
a small input. It does not build ranking candidates (a co-visitation self-join is out of reach in memory)."""

import datetime as dt
from collections.abc import Callable

import numpy as np
import pandas as pd

from assets.logic.events import EVENT_TYPE_ALIASES, SESSION_GAP_MINUTES
from assets.logic.schema import CANONICAL_COLUMNS, EVENT_TYPES

CANONICAL = list(CANONICAL_COLUMNS)
USER_COLUMNS = [
    "events_1d",
    "views_1d",
    "carts_1d",
    "purchases_1d",
    "searches_1d",
    "items_7d",
    "categories_7d",
    "sessions_7d",
    "mean_price_7d",
    "hours_since_last_event",
    "last_event_is_cart",
]
ITEM_COLUMNS = ["item_views_1d", "item_carts_1d", "item_purchases_1d", "item_users_7d"]


def _strip(series: pd.Series) -> pd.Series:
    values = series.astype("string").str.strip()
    return values.mask(values == "")


def raw_events(files: list[str], day: dt.date) -> tuple[pd.DataFrame, pd.DataFrame]:
    frame = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    for column in ("user_id", "session_id", "item_id", "category_id"):
        frame[column] = _strip(frame[column])
    types = frame["event_type"].astype("string").str.strip().str.lower()
    frame["event_type"] = types.replace(EVENT_TYPE_ALIASES)
    start, end = pd.Timestamp(day), pd.Timestamp(day + dt.timedelta(days=1))
    reason = pd.Series(pd.NA, index=frame.index, dtype="string")
    rules = [
        ("missing_user", frame["user_id"].isna()),
        ("unknown_event_type", ~frame["event_type"].isin(EVENT_TYPES)),
        ("missing_item", frame["item_id"].isna() & (frame["event_type"] != "search")),
        ("bad_timestamp", frame["event_time"].isna()),
        ("late_event", frame["event_time"] < start),
        ("out_of_partition", frame["event_time"] >= end),
        ("negative_price", frame["price"] < 0),
        ("exact_duplicate", frame.duplicated(subset=CANONICAL, keep="first")),
    ]
    for name, mask in rules:
        reason = reason.mask(reason.isna() & mask.fillna(False).astype(bool), name)
    return frame[reason.isna()].reset_index(drop=True), frame[reason.notna()].assign(reason=reason[reason.notna()])


def cleaned_events(raw: pd.DataFrame, day: dt.date, bot_events_per_day: int = 2000) -> pd.DataFrame:
    frame = raw.sort_values(["event_time"], kind="stable").drop_duplicates("event_id", keep="first")
    frame = frame.sort_values(["user_id", "event_time", "event_id"], ignore_index=True)
    gap = frame.groupby("user_id")["event_time"].diff()
    new_session = (gap.isna() | (gap > pd.Timedelta(minutes=SESSION_GAP_MINUTES))).astype(int)
    session_no = new_session.groupby(frame["user_id"]).cumsum()
    derived = frame["user_id"] + "-" + day.strftime("%Y%m%d") + "-" + session_no.astype(str)
    frame["session_id"] = frame["session_id"].fillna(derived)
    frame["is_bot"] = frame.groupby("user_id")["event_id"].transform("size") > bot_events_per_day
    return frame


def sessions(cleaned: pd.DataFrame) -> pd.DataFrame:
    events = cleaned[~cleaned["is_bot"]]
    for etype, name in (
        ("view", "n_views"),
        ("add_to_cart", "n_carts"),
        ("purchase", "n_purchases"),
        ("search", "n_searches"),
    ):
        events = events.assign(**{name: (events["event_type"] == etype).astype(int)})
    grouped = events.groupby(["session_id", "user_id"])
    out = grouped.agg(
        session_start=("event_time", "min"),
        session_end=("event_time", "max"),
        n_events=("event_id", "size"),
        n_views=("n_views", "sum"),
        n_carts=("n_carts", "sum"),
        n_purchases=("n_purchases", "sum"),
        n_searches=("n_searches", "sum"),
        n_items=("item_id", "nunique"),
    )
    out["duration_s"] = (out["session_end"] - out["session_start"]).dt.total_seconds()
    out["converted"] = out["n_purchases"] > 0
    return out.reset_index()


def user_sequences(cleaned: pd.DataFrame) -> pd.DataFrame:
    events = cleaned[~cleaned["is_bot"]].sort_values(["user_id", "event_time", "event_id"])
    grouped = events.groupby("user_id")
    return pd.DataFrame(
        {
            "n_events": grouped.size(),
            "n_sessions": grouped["session_id"].nunique(),
            "items": grouped["item_id"].agg(lambda s: list(s.fillna(""))),
            "event_types": grouped["event_type"].agg(list),
        }
    ).reset_index()


def user_features(cleaned: pd.DataFrame, cutoff: pd.Timestamp) -> pd.DataFrame:
    """One day of history: every window (1, 7 days) holds the whole day."""
    events = cleaned[~cleaned["is_bot"]]
    counts = pd.crosstab(events["user_id"], events["event_type"])
    grouped = events.groupby("user_id")
    out = pd.DataFrame({"events_1d": grouped.size()})
    for etype, name in (
        ("view", "views_1d"),
        ("add_to_cart", "carts_1d"),
        ("purchase", "purchases_1d"),
        ("search", "searches_1d"),
    ):
        out[name] = counts.get(etype, 0)
    out["items_7d"] = grouped["item_id"].nunique()
    out["categories_7d"] = grouped["category_id"].nunique()
    out["sessions_7d"] = grouped["session_id"].nunique()
    out["mean_price_7d"] = grouped["price"].mean()
    last = events.sort_values(["event_time"]).groupby("user_id").tail(1).set_index("user_id")
    out["hours_since_last_event"] = (
        cutoff - last["event_time"].dt.floor("s")
    ).dt.total_seconds() / 3600.0  # whole seconds, as date_diff
    out["last_event_is_cart"] = (last["event_type"] == "add_to_cart").astype(int)
    return out.reset_index()


def item_features(cleaned: pd.DataFrame) -> pd.DataFrame:
    events = cleaned[~cleaned["is_bot"] & cleaned["item_id"].notna()]
    counts = pd.crosstab(events["item_id"], events["event_type"])
    out = pd.DataFrame({"item_users_7d": events.groupby("item_id")["user_id"].nunique()})
    for etype, name in (("view", "item_views_1d"), ("add_to_cart", "item_carts_1d"), ("purchase", "item_purchases_1d")):
        out[name] = counts.get(etype, 0)
    return out.reset_index()


def run(files: list[str], day: dt.date, timed: Callable[[str], object]) -> dict[str, pd.DataFrame]:
    """Every stage in order, each inside ``timed(stage)`` (a context manager that measures it)."""
    with timed("raw_events"):
        raw, quarantined = raw_events(files, day)
    with timed("cleaned_events"):
        cleaned = cleaned_events(raw, day)
    with timed("sessions"):
        session_table = sessions(cleaned)
    with timed("user_sequences"):
        sequences = user_sequences(cleaned)
    cutoff = pd.Timestamp(day + dt.timedelta(days=1))
    with timed("user_features"):
        users = user_features(cleaned, cutoff)
    with timed("item_features"):
        items = item_features(cleaned)
    return {
        "raw_events": raw,
        "raw_events_quarantine": quarantined,
        "cleaned_events": cleaned,
        "sessions": session_table,
        "user_sequences": sequences,
        "user_features": users,
        "item_features": items,
    }


def compare(pandas_tables: dict[str, pd.DataFrame], conn, day: dt.date) -> list[str]:
    """Where the pandas results differ from the warehouse's tables for ``day`` (empty: the same results)."""
    problems = []
    start, end = pd.Timestamp(day), pd.Timestamp(day + dt.timedelta(days=1))

    def table(sql: str) -> pd.DataFrame:
        return conn.execute(sql, [start, end]).df()

    counts = {
        "raw_events": table("SELECT count(*) AS n FROM raw_events WHERE event_time >= ? AND event_time < ?")["n"][0],
        "raw_events_quarantine": conn.execute(
            "SELECT count(*) FROM raw_events_quarantine WHERE partition_date = ?", [day]
        ).fetchone()[0],
        "cleaned_events": table("SELECT count(*) AS n FROM cleaned_events WHERE event_time >= ? AND event_time < ?")[
            "n"
        ][0],
        "sessions": table("SELECT count(*) AS n FROM sessions WHERE session_start >= ? AND session_start < ?")["n"][0],
    }
    for name, expected in counts.items():
        if len(pandas_tables[name]) != expected:
            problems.append(f"{name}: pandas {len(pandas_tables[name])} rows, warehouse {expected}")
    checks = [
        (
            "cleaned_events",
            "SELECT event_id, session_id, is_bot FROM cleaned_events WHERE event_time >= ? AND event_time < ?",
            ["event_id"],
            ["session_id", "is_bot"],
        ),
        (
            "sessions",
            "SELECT session_id, n_events, n_views, n_carts, n_purchases, n_items, duration_s FROM sessions "
            "WHERE session_start >= ? AND session_start < ?",
            ["session_id"],
            ["n_events", "n_views", "n_carts", "n_purchases", "n_items", "duration_s"],
        ),
        (
            "user_sequences",
            "SELECT user_id, n_events, n_sessions FROM user_sequences WHERE day >= CAST(? AS DATE) "
            "AND day < CAST(? AS DATE)",
            ["user_id"],
            ["n_events", "n_sessions"],
        ),
        (
            "user_features",
            f"SELECT user_id, {', '.join(USER_COLUMNS)} FROM user_features WHERE as_of_date >= CAST(? AS DATE) "
            "AND as_of_date < CAST(? AS DATE)",
            ["user_id"],
            USER_COLUMNS,
        ),
        (
            "item_features",
            f"SELECT item_id, {', '.join(ITEM_COLUMNS)} FROM item_features WHERE as_of_date >= CAST(? AS DATE) "
            "AND as_of_date < CAST(? AS DATE) AND (item_views_1d + item_carts_1d + item_purchases_1d) > 0",
            ["item_id"],
            ITEM_COLUMNS,
        ),
    ]
    for name, sql, keys, columns in checks:
        ours = pandas_tables[name]
        if name == "item_features":
            ours = ours[ours[["item_views_1d", "item_carts_1d", "item_purchases_1d"]].sum(axis=1) > 0]
        theirs = table(sql)
        merged = theirs.merge(
            ours[keys + columns], on=keys, how="outer", suffixes=("_duckdb", "_pandas"), indicator=True
        )
        unmatched = int((merged["_merge"] != "both").sum())
        if unmatched:
            problems.append(f"{name}: {unmatched} keys in only one of the two")
        both = merged[merged["_merge"] == "both"]
        for column in columns:
            a, b = both[f"{column}_duckdb"], both[f"{column}_pandas"]
            if a.dtype == object or b.dtype == object or str(b.dtype) == "string":
                differ = a.astype(str).to_numpy() != b.astype(str).to_numpy()
            else:
                differ = ~np.isclose(a.astype(float), b.astype(float), rtol=1e-9, atol=1e-6, equal_nan=True)
            if differ.any():
                problems.append(f"{name}.{column}: {int(differ.sum())} rows differ")
    return problems


def timed_noop(_: str):
    """A ``timed`` that measures nothing (for comparisons)."""
    from contextlib import nullcontext

    return nullcontext()
