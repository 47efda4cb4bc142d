"""Scoring the sequences of a log file (``shopseq predict``).

A sequence is a user of the file (formats without users give each session its own
user id, ``s<session>``, so a sequence is then a session). Each is scored as of its
last event: its history is its own events of the ``HISTORY_DAYS`` before that, read
by the same SQL that builds the daily features and candidates, with a cut-off just
after the last event. The item side (item statistics, co-visitation, category and
global popularity) is the warehouse's as of the day the ranker was trained with.

The file is read by ``shopseq ingest``'s readers and the rules of ``raw_events``
and ``cleaned_events`` (the same quarantine reasons, event-id de-duplication and
30-minute sessions); no bot flag: a file's sequences are all scored. Unknown users
are the norm here; unknown items have no item statistics (LightGBM reads them as
missing) and every sequence gets the popular items as candidates, so every
sequence gets ``k`` items unless the warehouse knows fewer.
"""

import datetime as dt
import tempfile
from pathlib import Path

import duckdb
import lightgbm as lgb
import pandas as pd

from assets.logic.candidates import candidates_sql, covis_pairs_sql, ranker_rows_sql
from assets.logic.events import CLEAN_SQL, accepted_sql, classify_landing
from assets.logic.features import HISTORY_DAYS, USER_FEATURE_COLUMNS, user_features_sql
from assets.logic.ingest import place
from assets.logic.lake import attached_read_only
from assets.logic.next_event import EVENT_CLASSES, NEXT_EVENT_FEATURES, session_states_sql
from assets.logic.serving import BusinessRules, recommend
from assets.logic.warehouse_sql import day_bounds, ensure_table

NO_BOT_LIMIT = 2**62
_SEQUENCE_HISTORY = f"""
SELECT e.*, c.cutoff FROM sequence_events e
JOIN (SELECT user_id, max(event_time) + INTERVAL 1 MICROSECOND AS cutoff
    FROM sequence_events GROUP BY user_id) c USING (user_id)
WHERE e.event_time >= c.cutoff - INTERVAL {HISTORY_DAYS} DAY
"""


def read_sequences(conn: duckdb.DuckDBPyConnection, paths: list[str], format_name: str, tz: str) -> dict[str, int]:
    """Read log files into the table ``sequence_events`` (cleaned events); returns the rows read, accepted,
    quarantined and a count per quarantine reason. Raises ``IngestError`` for an unreadable file."""
    place(conn, paths, format_name, tz)
    with tempfile.TemporaryDirectory(prefix="shopseq-predict-") as folder:
        placed = str(Path(folder) / "placed.parquet")
        conn.execute(
            "COPY (SELECT * EXCLUDE (day, file_row) FROM placed ORDER BY source_file, file_row) TO ?", [placed]
        )
        first, last = conn.execute(
            "SELECT min(event_time), max(event_time) FROM placed WHERE ingest_reason IS NULL"
        ).fetchone()
        if first is None:
            raise ValueError(f"{', '.join(paths)}: no line could be read as {format_name}")
        counts = classify_landing(conn, [placed], None, tz, window=(first, last + dt.timedelta(seconds=1)))
        ensure_table(conn, "raw_events")
        conn.execute(f"INSERT INTO raw_events BY NAME {accepted_sql(conn, [placed])}", {"files": [placed]})
    conn.execute("DROP TABLE landing_rejected")
    conn.execute("DROP TABLE placed")
    read, accepted = sum(counts.values()), counts.pop("accepted", 0)
    if accepted == 0:
        raise ValueError(f"{', '.join(paths)}: no event could be accepted ({counts})")
    conn.execute(
        f"CREATE TABLE sequence_events AS {CLEAN_SQL}",
        {
            "start": first,
            "end": last + dt.timedelta(seconds=1),
            "day": first.date(),
            "bot_events_per_day": NO_BOT_LIMIT,
        },
    )
    return {"read": read, "accepted": accepted, "quarantined": read - accepted, **counts}


def load_item_side(conn: duckdb.DuckDBPyConnection, warehouse: str, day: dt.date, tz: str) -> int:
    """Copy the warehouse's item statistics and co-visitation pairs as of the end of ``day`` into
    temp tables (``predict_item_now``, ``predict_covis_pairs``); the warehouse is attached read-only
    for this copy only. Returns the number of items."""
    _, cutoff = day_bounds(day, tz)
    with attached_read_only(conn, warehouse, "wh"):
        conn.execute("CREATE TEMP TABLE predict_item_now AS SELECT * FROM wh.item_features WHERE as_of_date = ?", [day])
        conn.execute(
            f"CREATE TEMP TABLE predict_covis_pairs AS {covis_pairs_sql('wh.cleaned_events')}", {"cutoff": cutoff}
        )
    items = conn.execute("SELECT count(*) FROM predict_item_now").fetchone()[0]
    if items == 0:
        raise ValueError(
            f"the warehouse {warehouse} has no item features as of {day} (the day the ranker was "
            "trained with): re-materialise that partition"
        )
    return items


def known_items(conn: duckdb.DuckDBPyConnection, known: str, params=None) -> tuple[int, int]:
    """How many of the file's events (``sequence_events``) have an item, and how many of those are on an item of
    ``known`` (a SELECT of ``item_id``): a file from another shop knows next to none."""
    [(events, on_known)] = conn.execute(
        f"""SELECT count(*), count(*) FILTER (WHERE item_id IN ({known}))
            FROM memory.main.sequence_events WHERE item_id IS NOT NULL""",
        params,
    ).fetchall()
    return events, on_known


def next_event_probabilities(conn: duckdb.DuckDBPyConnection, model, sequence: str) -> pd.DataFrame:
    """``p_next_<type>`` of the next event of each sequence of ``sequence_events`` (``sequence``: the SQL of its
    key, a user or a user's session), from the state after its last event. Columns sequence_id, p_next_*."""
    states = conn.execute(
        f"""SELECT {sequence} AS sequence_id, * FROM ({session_states_sql("SELECT * FROM sequence_events")})
            QUALIFY row_number() OVER (PARTITION BY {sequence} ORDER BY state_time DESC, event_id DESC) = 1"""
    ).df()
    p = model.predict(states[NEXT_EVENT_FEATURES].astype(float)).reshape(len(states), -1)
    return pd.DataFrame(p, columns=[f"p_next_{t}" for t in EVENT_CLASSES]).assign(sequence_id=states["sequence_id"])


def score_sequences(
    conn: duckdb.DuckDBPyConnection,
    ranker: lgb.Booster,
    action_models: dict[str, lgb.Booster],
    item_day: dt.date,
    k: int,
    rules: BusinessRules,
    next_event_model: lgb.Booster | None = None,
) -> pd.DataFrame:
    """Top-k items per sequence of ``sequence_events`` (with source, reason, rules); per action of
    ``action_models``, the probability ``p_<action>`` that the sequence's shopper does it within a day; with
    ``next_event_model``, the probability ``p_next_<type>`` of each type for the sequence's next event.

    Needs ``read_sequences`` and ``load_item_side`` first. One row per (sequence, rank)."""
    params = {"as_of_date": item_day}
    conn.execute(f"CREATE OR REPLACE TEMP TABLE sequence_features AS {user_features_sql(_SEQUENCE_HISTORY)}", params)
    candidates = conn.sql(  # an Arrow table: the scorer reads it without pandas
        ranker_rows_sql(
            candidates_sql(_SEQUENCE_HISTORY, "SELECT * FROM predict_covis_pairs", "SELECT * FROM predict_item_now"),
            "SELECT * FROM sequence_features",
            "SELECT * FROM predict_item_now",
        ),
        params=params,
    ).to_arrow_table()
    features = conn.execute(
        """SELECT f.*, s.events FROM sequence_features f
           JOIN (SELECT user_id, count(*) AS events FROM sequence_events GROUP BY ALL) s USING (user_id)
           ORDER BY user_id"""
    ).df()
    recs = recommend(ranker, candidates, features["user_id"], k, rules).to_pandas()
    per_sequence = features[["user_id", "events", "last_event_time"]].assign(
        **{
            f"p_{action}": booster.predict(features[USER_FEATURE_COLUMNS].astype(float))
            for action, booster in action_models.items()
        },
    )
    if next_event_model is not None:
        next_event = next_event_probabilities(conn, next_event_model, "user_id")
        per_sequence = per_sequence.merge(
            next_event.rename(columns={"sequence_id": "user_id"}), on="user_id", how="left"
        )
    out = recs.merge(per_sequence, on="user_id", how="left").rename(columns={"user_id": "sequence_id"})
    columns = ["sequence_id", "events", "last_event_time", "rank", "item_id", "score", "source", "reason", "rules"]
    probabilities = [c for c in per_sequence.columns if c.startswith("p_")]
    return out.sort_values(["sequence_id", "rank"])[columns + probabilities].reset_index(drop=True)


# What each in-session candidate source tells a shopper.
SESSION_REASONS = {
    "session": "you looked at it earlier in this session",
    "sr": "often viewed right after the items you just looked at",
    "sr3": "often viewed right after the items you just looked at",
    "markov": "often viewed right after the item you just looked at",
    "sknn": "viewed in sessions like yours",
    "popular": "popular with shoppers right now",
}


def score_sessions(
    conn: duckdb.DuckDBPyConnection, warehouse: str, model, k: int, next_event_model: lgb.Booster | None = None
) -> tuple[pd.DataFrame, dt.datetime, tuple[int, int]]:
    """Each session of ``sequence_events`` (see ``read_sequences``) as of its last event, with the in-session model
    (a booster or a rule policy): its top ``k`` next items with their source and a reason. The item side (rules,
    neighbours, popularity) is read from the warehouse (attached read-only for this call only), from its events
    before the file's first event and before the warehouse's last one: no prefix's list uses an event after it.
    With ``next_event_model``, each session's ``p_next_<type>``. Returns the rows, that cut-off and ``known_items``
    of the warehouse's events (of any time: is the file of the warehouse's shop?)."""
    from assets.logic.session_model import score_prefixes

    events = conn.execute(
        """SELECT user_id || '/' || session_id AS session_id, item_id, event_time FROM sequence_events
           WHERE item_id IS NOT NULL ORDER BY 1, event_time, event_id"""
    ).df()
    sizes = conn.execute(
        """SELECT user_id || '/' || session_id AS sequence_id, count(*) AS events, max(event_time) AS last_event_time
           FROM sequence_events GROUP BY ALL"""
    ).df()
    with attached_read_only(conn, warehouse, "wh"):
        conn.execute("USE wh")
        try:
            [(last,)] = conn.execute("SELECT max(event_time) FROM cleaned_events").fetchall()
            cutoff = min(events["event_time"].min(), last + dt.timedelta(microseconds=1))
            top = score_prefixes(conn, events, model, cutoff, k)
            known = known_items(conn, "SELECT item_id FROM wh.cleaned_events")  # the shop's: any time
        finally:
            conn.execute("USE memory")
    out = top.rename(columns={"session_id": "sequence_id"}).merge(sizes, on="sequence_id", how="left")
    out = out.assign(reason=out["source"].map(SESSION_REASONS), rules=None)
    columns = ["sequence_id", "events", "last_event_time", "rank", "item_id", "score", "source", "reason", "rules"]
    if next_event_model is not None:
        next_event = next_event_probabilities(conn, next_event_model, "user_id || '/' || session_id")
        out = out.merge(next_event, on="sequence_id", how="left")
        columns += [c for c in next_event.columns if c.startswith("p_next_")]
    return out.sort_values(["sequence_id", "rank"])[columns].reset_index(drop=True), cutoff, known
