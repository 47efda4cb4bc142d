"""Landing files -> raw events (+ quarantine) -> cleaned events, as DuckDB SQL.

Rules, per row of a landing file for day D (the partition):

========================  ==========================================================
reason                    rule
========================  ==========================================================
missing_user              ``user_id`` null or blank
missing_item              ``item_id`` null or blank for any event except ``search``
unknown_event_type        ``event_type`` (trimmed, lower-cased) not in the canonical set
bad_timestamp             ``event_time`` null
late_event                ``event_time`` before D: it arrived a day late; quarantined, not
                          moved, so that partitions stay independent
out_of_partition          ``event_time`` at or after D + 1
negative_price            ``price`` < 0
exact_duplicate           the same row (every column) already seen earlier in the day
========================  ==========================================================

A row is quarantined with the first reason that applies; every other row is
accepted. ``read = accepted + quarantined`` holds per partition.

Cleaning (raw -> cleaned): one row per ``event_id`` (the earliest), event types
trimmed and lower-cased, missing ``session_id`` derived from 30 minutes of
inactivity, ``price`` kept null when unknown, and users with more than
``bot_events_per_day`` events in the day flagged ``is_bot`` (kept, not dropped;
features and recommendations skip them).
"""

import datetime as dt

import duckdb

from assets.logic.synthetic import EVENT_TYPES
from assets.logic.warehouse_sql import day_bounds, ensure_table, replace_window

SESSION_GAP_MINUTES = 30

_CLASSIFY_SQL = """
CREATE OR REPLACE TEMP TABLE landing_classified AS
WITH src AS (
    SELECT
        TRY_CAST(event_time AS TIMESTAMP) AS event_time,
        NULLIF(trim(CAST(user_id AS VARCHAR)), '') AS user_id,
        NULLIF(trim(CAST(session_id AS VARCHAR)), '') AS session_id,
        lower(trim(CAST(event_type AS VARCHAR))) AS event_type,
        NULLIF(trim(CAST(item_id AS VARCHAR)), '') AS item_id,
        NULLIF(trim(CAST(category_id AS VARCHAR)), '') AS category_id,
        TRY_CAST(price AS DOUBLE) AS price,
        CAST(query AS VARCHAR) AS query,
        CAST(event_id AS VARCHAR) AS event_id,
        filename AS source_file,
        file_row_number + 1 AS source_row
    FROM read_parquet($files, filename = true, file_row_number = true, union_by_name = true)
),
numbered AS (
    SELECT *, row_number() OVER (
        PARTITION BY event_time, user_id, session_id, event_type, item_id, category_id, price, query, event_id
        ORDER BY source_file, source_row) AS copy_no
    FROM src
)
SELECT *,
    CASE
        WHEN user_id IS NULL THEN 'missing_user'
        WHEN event_type IS NULL OR NOT list_contains($event_types, event_type) THEN 'unknown_event_type'
        WHEN item_id IS NULL AND event_type <> 'search' THEN 'missing_item'
        WHEN event_time IS NULL THEN 'bad_timestamp'
        WHEN event_time < $day_start THEN 'late_event'
        WHEN event_time >= $day_end THEN 'out_of_partition'
        WHEN price < 0 THEN 'negative_price'
        WHEN copy_no > 1 THEN 'exact_duplicate'
    END AS reason
FROM numbered
"""


def load_raw_day(conn: duckdb.DuckDBPyConnection, files: list[str], day: dt.date) -> dict[str, int]:
    """Classify one day's landing files and replace the day in raw_events and the quarantine.

    Returns ``{"read", "accepted", "quarantined"}`` plus one count per quarantine reason.
    """
    start, end = day_bounds(day)
    ensure_table(conn, "raw_events")
    ensure_table(conn, "raw_events_quarantine")
    conn.execute(
        _CLASSIFY_SQL,
        {"files": files, "event_types": list(EVENT_TYPES), "day_start": start, "day_end": end},
    )
    accepted = replace_window(
        conn,
        "raw_events",
        "event_time",
        start,
        end,
        """SELECT event_time, user_id, session_id, event_type, item_id, category_id, price, query,
                  coalesce(event_id, md5(concat_ws('|', event_time, user_id, event_type, item_id, source_row))) AS event_id,
                  source_file, source_row
           FROM landing_classified WHERE reason IS NULL""",
    )
    replace_window(
        conn,
        "raw_events_quarantine",
        "partition_date",
        start,
        end,
        """SELECT CAST(? AS DATE) AS partition_date, source_file, source_row, reason,
                  CAST(to_json(struct_pack(event_time, user_id, session_id, event_type, item_id,
                                           category_id, price, query, event_id)) AS VARCHAR) AS raw
           FROM landing_classified WHERE reason IS NOT NULL""",
        [day],
    )
    counts = dict(
        conn.execute(
            "SELECT coalesce(reason, 'accepted'), count(*) FROM landing_classified GROUP BY ALL"
        ).fetchall()
    )
    read = sum(counts.values())
    accepted_total = counts.pop("accepted", 0)
    if accepted_total != accepted:
        raise RuntimeError(f"raw_events for {day}: classified {accepted_total} accepted rows but stored {accepted}")
    conn.execute("DROP TABLE landing_classified")
    return {"read": read, "accepted": accepted, "quarantined": read - accepted, **counts}


_CLEAN_SQL = """
WITH day_rows AS (
    SELECT * EXCLUDE (source_file, source_row, rn) FROM (
        SELECT *, row_number() OVER (PARTITION BY event_id ORDER BY event_time, source_file, source_row) AS rn
        FROM raw_events WHERE event_time >= $start AND event_time < $end
    ) WHERE rn = 1
),
gaps AS (
    SELECT *,
        CASE WHEN lag(event_time) OVER w IS NULL
               OR event_time - lag(event_time) OVER w > INTERVAL (SESSION_GAP) MINUTE THEN 1 ELSE 0 END AS new_session
    FROM day_rows
    WINDOW w AS (PARTITION BY user_id ORDER BY event_time, event_id)
),
derived AS (
    SELECT *, sum(new_session) OVER (PARTITION BY user_id ORDER BY event_time, event_id) AS session_no
    FROM gaps
),
per_user AS (
    SELECT user_id, count(*) > $bot_events_per_day AS is_bot FROM day_rows GROUP BY user_id
)
SELECT d.event_time, d.user_id,
       coalesce(d.session_id, d.user_id || '-' || strftime(CAST($start AS TIMESTAMP), '%Y%m%d') || '-' || d.session_no) AS session_id,
       d.event_type, d.item_id, d.category_id, d.price, d.query, d.event_id, u.is_bot
FROM derived d JOIN per_user u USING (user_id)
""".replace("SESSION_GAP", str(SESSION_GAP_MINUTES))


def clean_day(conn: duckdb.DuckDBPyConnection, day: dt.date, bot_events_per_day: int) -> dict[str, int]:
    """Replace one day of cleaned_events from raw_events; returns row counts."""
    start, end = day_bounds(day)
    ensure_table(conn, "cleaned_events")
    raw = conn.execute(
        "SELECT count(*) FROM raw_events WHERE event_time >= ? AND event_time < ?", [start, end]
    ).fetchone()[0]
    cleaned = replace_window(
        conn,
        "cleaned_events",
        "event_time",
        start,
        end,
        _CLEAN_SQL,
        {"start": start, "end": end, "bot_events_per_day": bot_events_per_day},
    )
    bots = conn.execute(
        "SELECT count(DISTINCT user_id) FROM cleaned_events WHERE is_bot AND event_time >= ? AND event_time < ?",
        [start, end],
    ).fetchone()[0]
    return {"raw": int(raw), "cleaned": cleaned, "duplicates_removed": int(raw) - cleaned, "bot_users": int(bots)}
