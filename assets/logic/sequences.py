"""Cleaned events -> sessions and per-user daily behaviour sequences."""

import datetime as dt

import duckdb

from assets.logic.warehouse_sql import (
    date_bounds,
    day_bounds,
    ensure_table,
    replace_window,
)

_SESSIONS_SQL = """
SELECT min(event_time) AS session_start, max(event_time) AS session_end, session_id, user_id,
       count(*) AS n_events,
       count(*) FILTER (WHERE event_type = 'view') AS n_views,
       count(*) FILTER (WHERE event_type = 'add_to_cart') AS n_carts,
       count(*) FILTER (WHERE event_type = 'purchase') AS n_purchases,
       count(*) FILTER (WHERE event_type = 'search') AS n_searches,
       count(DISTINCT item_id) AS n_items,
       date_diff('millisecond', min(event_time), max(event_time)) / 1000.0 AS duration_s,
       bool_or(event_type = 'purchase') AS converted
FROM cleaned_events
WHERE event_time >= $start AND event_time < $end AND NOT is_bot
GROUP BY session_id, user_id
"""

# One ordered list of (item, type) per user, split after: one sort per user instead of two.
_SEQUENCES_SQL = """
SELECT day, user_id, n_events, n_sessions,
       list_transform(events, lambda e: e.item) AS items, list_transform(events, lambda e: e.type) AS event_types
FROM (
    SELECT CAST($day AS DATE) AS day, user_id, count(*) AS n_events, count(DISTINCT session_id) AS n_sessions,
           list({'item': coalesce(item_id, ''), 'type': event_type} ORDER BY event_time, event_id) AS events
    FROM cleaned_events
    WHERE event_time >= $start AND event_time < $end AND NOT is_bot
    GROUP BY user_id
)
"""


def build_sessions_day(conn: duckdb.DuckDBPyConnection, day: dt.date, tz: str = "UTC") -> int:
    """Replace one day of sessions (keyed by their start, bots excluded); returns rows."""
    start, end = day_bounds(day, tz)
    ensure_table(conn, "sessions")
    return replace_window(conn, "sessions", "session_start", start, end, _SESSIONS_SQL, {"start": start, "end": end})


def build_user_sequences_day(conn: duckdb.DuckDBPyConnection, day: dt.date, tz: str = "UTC") -> int:
    """Replace one day of user_sequences: each user's ordered items and event types."""
    start, end = day_bounds(day, tz)
    ensure_table(conn, "user_sequences")
    return replace_window(
        conn, "user_sequences", "day", *date_bounds(day), _SEQUENCES_SQL, {"start": start, "end": end, "day": day}
    )
