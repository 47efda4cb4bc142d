"""Landing files -> raw events (+ quarantine) -> cleaned events, as DuckDB SQL.

Landing files are Parquet in the canonical schema (``event_time`` in UTC). Files
written by ``shopseq ingest`` also carry ``source_file``, ``source_line``, ``raw``
(the original text) and ``ingest_reason`` (set when the line could not be parsed);
files written by another system (or the synthetic shop) need only the canonical
columns, and their rows are located by Parquet file and row number.

Rules, per row of the landing files of day D (the partition, a day in the shop's timezone):

=======================  ============================================================
reason                   rule
=======================  ============================================================
(ingest reasons)         ``non_utf8``, ``unparseable_line``, ``wrong_column_count``,
                         ``bad_type``, ``bad_timestamp``, ``timestamp_out_of_range``,
                         ``future_timestamp``: set by ``shopseq ingest``, kept as is
missing_user             ``user_id`` null or blank
unknown_event_type       ``event_type`` (trimmed, lower-cased, aliases applied) not canonical
missing_item             ``item_id`` null or blank for any event except ``search``
bad_timestamp            ``event_time`` null or not a timestamp
late_event               ``event_time`` before D: it arrived after its day was landed;
                         quarantined, not moved, so that partitions stay independent
                         (``shopseq ingest`` routes every event to its own day instead)
out_of_partition         ``event_time`` at or after D + 1
negative_price           ``price`` < 0
bad_price                ``price`` NaN, infinite or at least ``MAX_PRICE`` (10 ** 12): no shop sells at it,
                         and the exact decimal means of the features could not hold it
exact_duplicate          the same row (every canonical column) seen earlier in the day
=======================  ============================================================

A row is quarantined with the first reason that applies; every other row is
accepted. ``read = accepted + quarantined`` holds per partition.

Event types are normalised before they are checked: trimmed, lower-cased, and
mapped by ``EVENT_TYPE_ALIASES`` (Taobao ``pv``/``fav``/``cart``/``buy``, RetailRocket
``addtocart``/``transaction``, OTTO ``clicks``/``carts``/``orders``, ...).

Cleaning (raw -> cleaned): one row per ``event_id`` and day (the earliest of the day), missing
``session_id`` derived from 30 minutes of inactivity, ``price`` kept null when
unknown, and users with more than ``bot_events_per_day`` events in the day
flagged ``is_bot`` (kept, not dropped; features and recommendations skip them).

An event id is unique within its day, the partition, not across days: an id that also occurs on another day
is kept there too. A day's cleaned rows then depend on that day's raw rows only, so a day re-run alone, inside
a range backfill, or before or after its neighbours gives the same rows, and re-delivering one day changes no
other. Quarantining the later copy as a cross-day duplicate would make a day's rows depend on which earlier days
happen to be loaded, and silently change when one of them is re-run. Two copies of an id on two days are not one
event delivered twice (that has one event time, hence one day, and is removed within the day): they are two
events under a reused source id. Ids made for rows without one include the event time, so they never repeat
across days. The key of ``cleaned_events`` is (day, ``event_id``), and (``event_time``, ``event_id``) identifies
a row across days; the ``cleaned_events`` suite checks the first (``partition_date``, ``event_id``).
"""

import datetime as dt

import duckdb

from assets.logic.schema import CANONICAL_COLUMNS, EVENT_TYPES
from assets.logic.warehouse_sql import day_bounds, ensure_table, replace_window

SESSION_GAP_MINUTES = 30

EVENT_TYPE_ALIASES = {
    "pv": "view",
    "click": "view",
    "clicks": "view",
    "page_view": "view",
    "detail": "view",
    "cart": "add_to_cart",
    "carts": "add_to_cart",
    "addtocart": "add_to_cart",
    "add-to-cart": "add_to_cart",
    "remove": "remove_from_cart",
    "removefromcart": "remove_from_cart",
    "fav": "favorite",
    "favourite": "favorite",
    "wishlist": "favorite",
    "buy": "purchase",
    "order": "purchase",
    "orders": "purchase",
    "transaction": "purchase",
}

# A price at or above this is quarantined (``bad_price``).
MAX_PRICE = 1e12


def normalised_event_type_sql(column: str = "event_type") -> str:
    """SQL for the canonical event type of a raw value (NULL stays NULL, unknown stays itself)."""
    cases = " ".join(f"WHEN '{alias}' THEN '{canonical}'" for alias, canonical in EVENT_TYPE_ALIASES.items())
    value = f"lower(trim(CAST({column} AS VARCHAR)))"
    return f"(CASE {value} {cases} ELSE {value} END)"


def _landing_select(conn: duckdb.DuckDBPyConnection, files: list[str]) -> str:
    """SELECT of landing files in canonical types plus provenance, whatever optional columns they have."""
    described = conn.execute(
        "DESCRIBE SELECT * FROM read_parquet($files, union_by_name = true)", {"files": files}
    ).fetchall()
    types = {row[0]: row[1] for row in described}
    missing = [c for c in ("event_time", "user_id", "event_type") if c not in types]
    if missing:
        raise ValueError(f"landing files {files} lack the canonical columns {missing} (found {sorted(types)})")

    def col(name: str) -> str:
        return name if name in types else "NULL"

    event_time = (
        "timezone('UTC', event_time)"
        if types["event_time"] == "TIMESTAMP WITH TIME ZONE"
        else "TRY_CAST(event_time AS TIMESTAMP)"
    )
    return f"""
        SELECT
            {event_time} AS event_time,
            NULLIF(trim(CAST({col("user_id")} AS VARCHAR)), '') AS user_id,
            NULLIF(trim(CAST({col("session_id")} AS VARCHAR)), '') AS session_id,
            {normalised_event_type_sql(col("event_type"))} AS event_type,
            NULLIF(trim(CAST({col("item_id")} AS VARCHAR)), '') AS item_id,
            NULLIF(trim(CAST({col("category_id")} AS VARCHAR)), '') AS category_id,
            TRY_CAST({col("price")} AS DOUBLE) AS price,
            CAST({col("query")} AS VARCHAR) AS query,
            CAST({col("event_id")} AS VARCHAR) AS event_id,
            coalesce(CAST({col("source_file")} AS VARCHAR), filename) AS source_file,
            coalesce(CAST({col("source_line")} AS BIGINT), file_row_number + 1) AS source_line,
            CAST({col("raw")} AS VARCHAR) AS raw_text,
            CAST({col("ingest_reason")} AS VARCHAR) AS ingest_reason,
            filename AS landing_file, file_row_number AS landing_row
        FROM read_parquet($files, filename = true, file_row_number = true, union_by_name = true)"""


_DUPLICATE_KEY = ", ".join(CANONICAL_COLUMNS)

# The rejected landing rows (few) with their reason, into the temp table ``landing_rejected``; accepted rows are
# not materialised but read again from the files (``accepted_sql``). Exact duplicates: only rows whose canonical
# columns hash like another row's go through the window that numbers the copies. ``src`` is read three times, not
# materialised: reading the Parquet again is cheaper than storing every column of the day (classification of 10M
# events, accepted rows no longer stored in a temp table: 12.8 s -> 6.5 s).
_CLASSIFY_SQL = f"""
CREATE OR REPLACE TEMP TABLE landing_rejected AS
WITH src AS NOT MATERIALIZED ({{landing}}),
repeated AS (SELECT hash({_DUPLICATE_KEY}) AS copy_hash FROM src GROUP BY ALL HAVING count(*) > 1),
copies AS (
    SELECT landing_file, landing_row FROM src WHERE hash({_DUPLICATE_KEY}) IN (SELECT copy_hash FROM repeated)
    QUALIFY row_number() OVER (PARTITION BY {_DUPLICATE_KEY} ORDER BY source_file, source_line) > 1
),
classified AS (
    SELECT src.*,
        CASE
            WHEN ingest_reason IS NOT NULL THEN ingest_reason
            WHEN user_id IS NULL THEN 'missing_user'
            WHEN event_type IS NULL OR NOT list_contains($event_types, event_type) THEN 'unknown_event_type'
            WHEN item_id IS NULL AND event_type <> 'search' THEN 'missing_item'
            WHEN event_time IS NULL THEN 'bad_timestamp'
            WHEN event_time < $day_start THEN 'late_event'
            WHEN event_time >= $day_end THEN 'out_of_partition'
            WHEN price < 0 THEN 'negative_price'
            WHEN isnan(price) OR isinf(price) OR price >= $max_price THEN 'bad_price'
            WHEN copies.landing_row IS NOT NULL THEN 'exact_duplicate'
        END AS reason
    FROM src LEFT JOIN copies USING (landing_file, landing_row)
)
SELECT * FROM classified WHERE reason IS NOT NULL
"""


def classify_landing(
    conn: duckdb.DuckDBPyConnection,
    files: list[str],
    day: dt.date | None,
    tz: str = "UTC",
    window: tuple[dt.datetime, dt.datetime] | None = None,
) -> dict[str, int]:
    """Classify the landing files of ``day`` (or of the UTC ``window`` of event times): the rejected rows go to
    the temp table ``landing_rejected`` with their ``reason``; returns counts per outcome (``accepted`` and
    one per reason). ``accepted_sql`` reads the accepted rows."""
    start, end = window or day_bounds(day, tz)
    conn.execute(
        _CLASSIFY_SQL.format(landing=_landing_select(conn, files)),
        {"files": files, "event_types": list(EVENT_TYPES), "day_start": start, "day_end": end, "max_price": MAX_PRICE},
    )
    read = conn.execute("SELECT count(*) FROM read_parquet($files, union_by_name = true)", {"files": files}).fetchone()[
        0
    ]
    counts = dict(conn.execute("SELECT reason, count(*) FROM landing_rejected GROUP BY ALL ORDER BY 1").fetchall())
    return {"accepted": read - sum(counts.values()), **counts}


def accepted_sql(conn: duckdb.DuckDBPyConnection, files: list[str]) -> str:
    """The landing rows ``classify_landing`` accepted, as raw events (param ``$files``); an event without a
    source id gets a deterministic one."""
    return f"""
SELECT event_time, user_id, session_id, event_type, item_id, category_id, price, query,
       coalesce(event_id, md5(concat_ws('|', event_time, user_id, event_type, item_id, source_file,
           source_line))) AS event_id,
       source_file, source_line
FROM ({_landing_select(conn, files)}) src ANTI JOIN landing_rejected USING (landing_file, landing_row)"""


def load_raw_day(conn: duckdb.DuckDBPyConnection, files: list[str], day: dt.date, tz: str = "UTC") -> dict[str, int]:
    """Classify one day's landing files and replace the day in raw_events and the quarantine.

    Returns ``{"read", "accepted", "quarantined"}`` plus one count per quarantine reason.
    """
    start, end = day_bounds(day, tz)
    ensure_table(conn, "raw_events")
    ensure_table(conn, "raw_events_quarantine")
    counts = classify_landing(conn, files, day, tz)
    accepted = replace_window(conn, "raw_events", "event_time", start, end, accepted_sql(conn, files), {"files": files})
    replace_window(
        conn,
        "raw_events_quarantine",
        "partition_date",
        day,
        day + dt.timedelta(days=1),
        """SELECT CAST(? AS DATE) AS partition_date, source_file, source_line, reason,
                  coalesce(raw_text, CAST(to_json(struct_pack(event_time, user_id, session_id, event_type, item_id,
                                           category_id, price, query, event_id)) AS VARCHAR)) AS raw
           FROM landing_rejected""",
        [day],
    )
    conn.execute("DROP TABLE landing_rejected")
    read = sum(counts.values())
    accepted_total = counts.pop("accepted", 0)
    if accepted_total != accepted:
        raise RuntimeError(f"raw_events for {day}: classified {accepted_total} accepted rows but stored {accepted}")
    return {"read": read, "accepted": accepted, "quarantined": read - accepted, **counts}


# raw_events of [$start, $end) (one day: ids are unique per day, see the module docstring) -> cleaned events: one
# row per event_id of the window, derived sessions named after $day, users with more than $bot_events_per_day
# events flagged. Only repeated event ids go through the window that keeps
# the earliest copy, and the session windows sort the narrow keys, not every column (10M events: 27 s -> 22 s).
# Sessions order by time alone: events at the same time cannot change a session number (whichever comes first
# carries the gap, and the running sum's RANGE frame counts all of them), and a string tie-breaker in the sort key
# cost 2.7 s of 25 at 10M events. The day's rows are read from raw_events where they are used, not kept as CTEs
# (NOT MATERIALIZED): a materialised CTE holds every column of the day in memory while the windows sort, and at 10M
# events that spilled 1.5 GB; the query took 10.0 s that way and 6.0 s reading the table again.
CLEAN_SQL = """
WITH day_raw AS NOT MATERIALIZED (SELECT * FROM raw_events WHERE event_time >= $start AND event_time < $end),
repeated AS (SELECT event_id FROM day_raw GROUP BY event_id HAVING count(*) > 1),
day_rows AS NOT MATERIALIZED (
    SELECT * EXCLUDE (source_file, source_line) FROM day_raw WHERE event_id NOT IN (SELECT event_id FROM repeated)
    UNION ALL
    SELECT * EXCLUDE (source_file, source_line) FROM day_raw WHERE event_id IN (SELECT event_id FROM repeated)
    QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY event_time, source_file, source_line) = 1
),
gaps AS (
    SELECT user_id, event_time, event_id,
        CASE WHEN lag(event_time) OVER w IS NULL
               OR event_time - lag(event_time) OVER w > INTERVAL (SESSION_GAP) MINUTE THEN 1 ELSE 0 END AS new_session
    FROM day_rows
    WINDOW w AS (PARTITION BY user_id ORDER BY event_time)
),
derived AS (
    SELECT event_id, sum(new_session) OVER (PARTITION BY user_id ORDER BY event_time) AS session_no,
           count(*) OVER (PARTITION BY user_id) > $bot_events_per_day AS is_bot
    FROM gaps
)
SELECT d.event_time, d.user_id,
       coalesce(d.session_id, d.user_id || '-' || strftime(CAST($day AS DATE), '%Y%m%d') || '-'
           || s.session_no) AS session_id,
       d.event_type, d.item_id, d.category_id, d.price, d.query, d.event_id, s.is_bot
FROM day_rows d JOIN derived s USING (event_id)
""".replace("SESSION_GAP", str(SESSION_GAP_MINUTES))


def clean_day(conn: duckdb.DuckDBPyConnection, day: dt.date, bot_events_per_day: int, tz: str = "UTC") -> int:
    """Replace one day of cleaned_events from raw_events; returns the rows written."""
    start, end = day_bounds(day, tz)
    ensure_table(conn, "cleaned_events")
    return replace_window(
        conn,
        "cleaned_events",
        "event_time",
        start,
        end,
        CLEAN_SQL,
        {"start": start, "end": end, "day": day, "bot_events_per_day": bot_events_per_day},
    )


def cleaning_counts(conn: duckdb.DuckDBPyConnection, day: dt.date, cleaned: int, tz: str = "UTC") -> dict[str, int]:
    """What cleaning did to ``day``, which wrote ``cleaned`` rows: raw rows, duplicates removed, users flagged."""
    start, end = day_bounds(day, tz)
    raw = conn.execute(
        "SELECT count(*) FROM raw_events WHERE event_time >= ? AND event_time < ?", [start, end]
    ).fetchone()[0]
    bots = conn.execute(
        "SELECT count(DISTINCT user_id) FROM cleaned_events WHERE is_bot AND event_time >= ? AND event_time < ?",
        [start, end],
    ).fetchone()[0]
    return {"raw": int(raw), "cleaned": cleaned, "duplicates_removed": int(raw) - cleaned, "bot_users": int(bots)}
