"""Point-in-time user and item features, as of the end of a day.

Every feature of ``as_of_date = D`` reads only cleaned events with
``event_time < D + 1 day`` (the cut-off) and within ``HISTORY_DAYS`` before it;
bots are excluded. Rows carry the cut-off so that the leakage check can prove it.

User-side SQL reads a *history*: events, each with the ``cutoff`` of its user.
Daily, every user has the end of the day as cut-off (``daily_history_sql``);
``shopseq predict`` gives each sequence its own (just after its last event).
"""

import datetime as dt

import duckdb

from assets.logic.warehouse_sql import (
    date_bounds,
    day_bounds,
    ensure_table,
    replace_window,
)

HISTORY_DAYS = 28
WINDOWS = (1, 3, 7, 28)
COUNTED_TYPES = {
    "view": "views",
    "add_to_cart": "carts",
    "purchase": "purchases",
    "favorite": "favs",
    "search": "searches",
}
# Weights of event types when a user's interest in an item or a category is summed. Whole numbers: their sums as
# doubles are exact whatever order DuckDB's threads add them in (other weights would need ``exact_sum``).
TYPE_WEIGHTS = {
    "view": 1.0,
    "search": 0.0,
    "favorite": 2.0,
    "add_to_cart": 4.0,
    "remove_from_cart": -1.0,
    "purchase": 3.0,
}


def _windowed_counts() -> str:
    cols = []
    for days in WINDOWS:
        cols.append(f"count(*) FILTER (WHERE event_time >= cutoff - INTERVAL {days} DAY) AS events_{days}d")
        for etype, short in COUNTED_TYPES.items():
            cols.append(
                f"count(*) FILTER (WHERE event_type = '{etype}' AND event_time >= cutoff - INTERVAL {days} DAY)"
                f" AS {short}_{days}d"
            )
    return ",\n       ".join(cols)


def type_weight_sql(column: str = "event_type") -> str:
    cases = " ".join(f"WHEN '{k}' THEN {v}" for k, v in TYPE_WEIGHTS.items())
    return f"(CASE {column} {cases} ELSE 0 END)"


def exact_sum(term: str, decimals: int, where: str | None = None) -> str:
    """``sum(term) FILTER (WHERE where)`` that does not depend on the order the rows are added in: each term rounded
    to ``decimals`` places and added as a decimal. Doubles added by DuckDB's threads in another order can differ in
    the last bit: that reorders ties among the ranks built on a sum (a range backfill once gave a covis_rank that
    day-by-day runs did not) and changes the models trained on it. Terms must stay below 10 ** (18 - decimals);
    DuckDB raises an error, not a wrong sum, if one does not."""
    only = f" FILTER (WHERE {where})" if where else ""
    return f"CAST(sum(CAST({term} AS DECIMAL(18, {decimals}))){only} AS DOUBLE)"


# Prices are averaged as decimals of 6 places (``exact_sum``), which hold values below 10 ** 12: raw_events
# quarantines a larger, infinite or NaN price (``bad_price``), so every cleaned price fits.
_PRICE_DECIMALS = 6


def mean_price_sql(where: str) -> str:
    """The mean price of the rows matching ``where``, the same whatever order DuckDB's threads read them in."""
    return f"({exact_sum('price', _PRICE_DECIMALS, where)} / count(price) FILTER (WHERE {where}))"


USER_FEATURE_COLUMNS = (
    [f"events_{d}d" for d in WINDOWS]
    + [f"{short}_{d}d" for d in WINDOWS for short in COUNTED_TYPES.values()]
    + [
        "hours_since_last_event",
        "hours_since_last_cart",
        "hours_since_last_purchase",
        "hours_since_first_event",
        "sessions_7d",
        "active_days_7d",
        "items_7d",
        "categories_7d",
        "cart_rate_28d",
        "purchase_per_cart_28d",
        "repeat_item_ratio_7d",
        "last_event_is_cart",
        "last_event_is_purchase",
        "mean_price_7d",
        "trend_events_1d_vs_7d",
        "searches_without_view_7d",
        "search_led_categories_7d",
        "last_event_is_search",
    ]
)


def daily_history_sql() -> str:
    """The history of every user as of ``$cutoff``: cleaned events (not bots) of the ``HISTORY_DAYS`` before it."""
    return f"""SELECT *, CAST($cutoff AS TIMESTAMP) AS cutoff FROM cleaned_events
               WHERE event_time >= $cutoff - INTERVAL {HISTORY_DAYS} DAY AND event_time < $cutoff AND NOT is_bot"""


def user_features_sql(history: str) -> str:
    """User features from ``history`` (a SELECT of events with their user's ``cutoff``); params: ``$as_of_date``."""
    return f"""
WITH h AS (
    -- next_type / next_category: what the user did next in the same session, before the cut-off
    SELECT *,
        lead(event_type) OVER (PARTITION BY user_id, session_id ORDER BY event_time, event_id) AS next_type,
        lead(category_id) OVER (PARTITION BY user_id, session_id ORDER BY event_time, event_id) AS next_category
    FROM ({history}) e
)
SELECT CAST($as_of_date AS DATE) AS as_of_date, cutoff, user_id,
       {_windowed_counts()},
       date_diff('second', max(event_time), cutoff) / 3600.0 AS hours_since_last_event,
       date_diff('second', max(event_time) FILTER (WHERE event_type = 'add_to_cart'), cutoff)
           / 3600.0 AS hours_since_last_cart,
       date_diff('second', max(event_time) FILTER (WHERE event_type = 'purchase'), cutoff)
           / 3600.0 AS hours_since_last_purchase,
       date_diff('second', min(event_time), cutoff) / 3600.0 AS hours_since_first_event,
       count(DISTINCT session_id) FILTER (WHERE event_time >= cutoff - INTERVAL 7 DAY) AS sessions_7d,
       count(DISTINCT CAST(event_time AS DATE)) FILTER (WHERE event_time >= cutoff - INTERVAL 7 DAY) AS active_days_7d,
       count(DISTINCT item_id) FILTER (WHERE event_time >= cutoff - INTERVAL 7 DAY) AS items_7d,
       count(DISTINCT category_id) FILTER (WHERE event_time >= cutoff - INTERVAL 7 DAY) AS categories_7d,
       (count(*) FILTER (WHERE event_type = 'add_to_cart') + 1.0)
           / (count(*) FILTER (WHERE event_type = 'view') + 10.0) AS cart_rate_28d,
       (count(*) FILTER (WHERE event_type = 'purchase') + 0.5)
           / (count(*) FILTER (WHERE event_type = 'add_to_cart') + 2.0) AS purchase_per_cart_28d,
       1.0 - count(DISTINCT item_id) FILTER (WHERE event_time >= cutoff - INTERVAL 7 DAY)
             / greatest(count(item_id) FILTER (WHERE event_time >= cutoff - INTERVAL 7 DAY), 1) AS repeat_item_ratio_7d,
       CAST(arg_max(event_type, (event_time, event_id)) = 'add_to_cart' AS INTEGER) AS last_event_is_cart,
       CAST(arg_max(event_type, (event_time, event_id)) = 'purchase' AS INTEGER) AS last_event_is_purchase,
       {mean_price_sql("event_time >= cutoff - INTERVAL 7 DAY")} AS mean_price_7d,
       (count(*) FILTER (WHERE event_time >= cutoff - INTERVAL 1 DAY) + 1.0)
         / (count(*) FILTER (WHERE event_time >= cutoff - INTERVAL 7 DAY) / 7.0 + 1.0) AS trend_events_1d_vs_7d,
       count(*) FILTER (WHERE event_type = 'search' AND coalesce(next_type, '') <> 'view'
                        AND event_time >= cutoff - INTERVAL 7 DAY) AS searches_without_view_7d,
       count(DISTINCT next_category) FILTER (WHERE event_type = 'search' AND next_type = 'view'
                                             AND event_time >= cutoff - INTERVAL 7 DAY) AS search_led_categories_7d,
       CAST(arg_max(event_type, (event_time, event_id)) = 'search' AS INTEGER) AS last_event_is_search,
       max(event_time) AS last_event_time
FROM h
GROUP BY user_id, cutoff
"""


ITEM_FEATURE_COLUMNS = [
    "item_views_1d",
    "item_carts_1d",
    "item_purchases_1d",
    "item_views_7d",
    "item_carts_7d",
    "item_purchases_7d",
    "item_users_7d",
    "item_conversion_7d",
    "item_trend_1d_vs_7d",
    "item_hours_since_first_seen",
    "item_price",
]

_ITEM_FEATURES_SQL = f"""
WITH h AS (
    SELECT * FROM cleaned_events
    WHERE event_time >= $cutoff - INTERVAL {HISTORY_DAYS} DAY AND event_time < $cutoff
      AND NOT is_bot AND item_id IS NOT NULL
)
SELECT CAST($as_of_date AS DATE) AS as_of_date, CAST($cutoff AS TIMESTAMP) AS cutoff, item_id,
       arg_max(category_id, (event_time, event_id)) AS category_id,
       count(*) FILTER (WHERE event_type = 'view' AND event_time >= $cutoff - INTERVAL 1 DAY) AS item_views_1d,
       count(*) FILTER (WHERE event_type = 'add_to_cart' AND event_time >= $cutoff - INTERVAL 1 DAY) AS item_carts_1d,
       count(*) FILTER (WHERE event_type = 'purchase' AND event_time >= $cutoff - INTERVAL 1 DAY) AS item_purchases_1d,
       count(*) FILTER (WHERE event_type = 'view' AND event_time >= $cutoff - INTERVAL 7 DAY) AS item_views_7d,
       count(*) FILTER (WHERE event_type = 'add_to_cart' AND event_time >= $cutoff - INTERVAL 7 DAY) AS item_carts_7d,
       count(*) FILTER (WHERE event_type = 'purchase' AND event_time >= $cutoff - INTERVAL 7 DAY) AS item_purchases_7d,
       count(DISTINCT user_id) FILTER (WHERE event_time >= $cutoff - INTERVAL 7 DAY) AS item_users_7d,
       (count(*) FILTER (WHERE event_type = 'purchase' AND event_time >= $cutoff - INTERVAL 7 DAY) + 0.1)
         / (count(*) FILTER (WHERE event_type = 'view'
             AND event_time >= $cutoff - INTERVAL 7 DAY) + 10.0) AS item_conversion_7d,
       (count(*) FILTER (WHERE event_time >= $cutoff - INTERVAL 1 DAY) + 1.0)
         / (count(*) FILTER (WHERE event_time >= $cutoff - INTERVAL 7 DAY) / 7.0 + 1.0) AS item_trend_1d_vs_7d,
       date_diff('second', min(event_time), $cutoff) / 3600.0 AS item_hours_since_first_seen,
       {mean_price_sql("event_time >= $cutoff - INTERVAL 7 DAY")} AS item_price,
       -- whole-number weights: their double sum is exact in any order
       sum({type_weight_sql()}) FILTER (WHERE event_time >= $cutoff - INTERVAL 1 DAY) AS item_score_1d,
       max(event_time) AS last_event_time
FROM h
GROUP BY item_id
"""


def build_user_features_day(conn: duckdb.DuckDBPyConnection, day: dt.date, tz: str = "UTC") -> int:
    """Replace the user features as of the end of ``day`` (a day in ``tz``); returns rows."""
    _, cutoff = day_bounds(day, tz)
    ensure_table(conn, "user_features")
    return replace_window(
        conn,
        "user_features",
        "as_of_date",
        *date_bounds(day),
        user_features_sql(daily_history_sql()),
        {"cutoff": cutoff, "as_of_date": day},
    )


def build_item_features_day(conn: duckdb.DuckDBPyConnection, day: dt.date, tz: str = "UTC") -> int:
    """Replace the item features as of the end of ``day`` (a day in ``tz``); returns rows."""
    _, cutoff = day_bounds(day, tz)
    ensure_table(conn, "item_features")
    return replace_window(
        conn,
        "item_features",
        "as_of_date",
        *date_bounds(day),
        _ITEM_FEATURES_SQL,
        {"cutoff": cutoff, "as_of_date": day},
    )
