"""The in-session next-item model: candidates, features, a LambdaRank reranker and the session protocol.

Logs without users (or a user's current session) ask a different question from the next-day ranker: given the
events of a session so far (a *prefix*), which item comes next? Every prefix gets candidates from several sources,
each point-in-time (its item side reads only events before the cut-off ``target_start``, the prefix only its own
session's events up to its last one):

* ``session``: the prefix's own items (repeat clicks are frequent);
* ``sr``: sequential rules from the last item (session-rec SR: pairs of a session within ``SR_STEPS`` steps,
  weighted 1 / gap);
* ``sr3``: the same rules from the last three events, decayed by half per step back;
* ``sknn``: session-kNN, V-SkNN style: past sessions sharing the prefix's items (among each item's ``SKNN_SAMPLE``
  most recent), each shared item weighted by how recent it is in the prefix (linear decay), the
  ``SKNN_NEIGHBOURS`` most similar ones voting with their similarity;
* ``markov``: what most often directly followed the last item;
* ``popular``: the ``SOURCE_ITEMS`` items with the most events before the cut-off (every prefix gets them).

Each source's score and rank is a feature, so each baseline is a ``RulePolicy`` over the same rows
(``SESSION_RULES``): ranking the candidates by its own feature is exactly what the baseline recommends, because
each source contributes its whole top ``SOURCE_ITEMS`` (at least 20). The reranker starts from SR
(``train_session_ranker``) and is measured beside them on the same positions (``evaluate_sessions``).

Evaluation follows session-rec's next-item protocol (``session_targets``): the sessions with events in the target
window, their events on items never seen before the cut-off removed, sessions of at least two events left; every
position's next item is a target. A rule's list is the items it scores, then the other candidates by popularity
(as a served list is filled); a position whose next item is not among its candidates is a miss for every method.
"""

from __future__ import annotations

import datetime as dt
from concurrent.futures import ThreadPoolExecutor

import duckdb
import lightgbm as lgb
import numpy as np
import pandas as pd
from scipy import sparse

from assets.logic import training
from assets.logic.metrics import PairCodes, bootstrap_draws, bootstrap_intervals
from assets.logic.policies import RulePolicy
from assets.logic.training import LightGBMParams
from assets.logic.warehouse_sql import fetch_frame, with_columns

SR_STEPS = 10
# 1 / gap for every gap up to SR_STEPS is a whole number of 1 / 2520ths (2520 = lcm(1..10)): integer sums are exact
# in any order, so the rules, their ties and the models trained on them do not depend on DuckDB's thread order.
SR_UNIT = 2520
SR3_ITEMS = 3
SOURCE_ITEMS = 20  # per rule source and per prefix: every baseline's top 20 is among the candidates
SESSION_ITEMS = 30  # the prefix's most recent distinct items
SKNN_NEIGHBOURS = 100
# session-kNN looks for neighbours among each item's most recent sessions only (session-rec's V-SkNN samples the
# recent sessions too); a neighbour found votes with all its items. A popular item's thousands of sessions made the
# neighbour search most of the in-session training set's time (64M prefix x session pairs on the synthetic shop's
# hold-out day, 24M with 500).
SKNN_SAMPLE = 500
SKNN_BLOCK = 20_000  # prefixes in session-kNN's sparse products at once, over its threads' blocks (``_session_knn``)
SOURCES = ("session", "sr", "sknn", "markov", "sr3", "popular")
NO_RANK = 999

SESSION_FEATURES = [
    "position",
    "prefix_items",
    "prefix_seconds",
    "dwell_seconds",
    "mean_gap_seconds",
    "last_item_events",
    "last_item_successors",
    "in_session",
    "session_count",
    "steps_since_seen",
    "seconds_since_seen",
    "is_last_item",
    "sr_score",
    "sr_rank",
    "sr_share",
    "in_sr",
    "sr3_score",
    "sr3_rank",
    "in_sr3",
    "sknn_score",
    "sknn_rank",
    "sknn_share",
    "in_sknn",
    "markov_score",
    "markov_share",
    "markov_rank",
    "in_markov",
    "pop_all",
    "pop_1d",
    "pop_rank",
    "in_pop",
    "item_hours_since_last",
    "item_hours_since_first",
]

SESSION_RULES = {
    name: RulePolicy(name, tuple(SESSION_FEATURES), ((score, 1.0),), only_where=flag)
    for name, score, flag in (
        ("sr", "sr_score", "in_sr"),
        ("sr3", "sr3_score", "in_sr3"),
        ("sknn", "sknn_score", "in_sknn"),
        ("markov", "markov_score", "in_markov"),
        ("popularity", "pop_all", "in_pop"),
    )
}
# The reranker starts from SR (see ``train_session_ranker``).
SESSION_RULE_START = {"sr_score": 1.0}
METRIC_KS = (10, 20)


def _known_items(conn: duckdb.DuckDBPyConnection, cutoff: dt.datetime) -> None:
    """Temp tables ``sm_hist`` (each past session's events in order) and ``sm_items`` (each item's popularity and
    recency), from the events before ``cutoff`` only: the items a prefix may hold (``_target_prefixes``)."""
    params = {"cutoff": cutoff}
    conn.execute(
        """
        CREATE OR REPLACE TEMP TABLE sm_hist AS
        SELECT user_id, session_id, item_id, event_time,
               row_number() OVER (PARTITION BY user_id, session_id ORDER BY event_time, event_id) AS step
        FROM cleaned_events
        WHERE event_time < $cutoff AND NOT is_bot AND item_id IS NOT NULL
        """,
        params,
    )
    conn.execute(
        """
        CREATE OR REPLACE TEMP TABLE sm_items AS
        SELECT item_id, count(*) AS pop_all,
               count(*) FILTER (WHERE event_time >= $cutoff - INTERVAL 1 DAY) AS pop_1d,
               max(event_time) AS last_time, min(event_time) AS first_time,
               row_number() OVER (ORDER BY count(*) DESC, item_id) AS pop_rank
        FROM sm_hist GROUP BY item_id
        """,
        params,
    )


def _item_side(conn: duckdb.DuckDBPyConnection, cutoff: dt.datetime, width: int = SOURCE_ITEMS) -> None:
    """Temp tables of what the item side knows at ``cutoff``, from the events before it only: ``_known_items``'s,
    ``sm_rules`` (SR weight and Markov count of every pair within ``SR_STEPS`` steps), ``sm_sr`` / ``sm_markov``
    (each item's top ``width`` successors), ``sm_popular`` (the top ``width`` items), ``sm_session_items`` (each
    past session's items, the votes of session-kNN) and ``sm_item_sessions`` (its neighbour index: each item's
    ``SKNN_SAMPLE`` most recent sessions)."""
    _known_items(conn, cutoff)
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE sm_rules AS
        SELECT a.item_id AS item_a, b.item_id AS item_b,
               CAST(sum({SR_UNIT} // (b.step - a.step)) AS BIGINT) AS sr_units,
               count(*) FILTER (WHERE b.step = a.step + 1) AS markov_n
        FROM sm_hist a JOIN sm_hist b
          ON a.user_id = b.user_id AND a.session_id = b.session_id
         AND b.step > a.step AND b.step <= a.step + {SR_STEPS}
        GROUP BY a.item_id, b.item_id
        """
    )
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE sm_sr AS
        SELECT item_a, item_b, sr_units / {SR_UNIT}.0 AS sr_score,
               sr_units / sum(sr_units) OVER (PARTITION BY item_a) AS sr_share,
               row_number() OVER (PARTITION BY item_a ORDER BY sr_units DESC, item_b) AS sr_rank
        FROM sm_rules
        QUALIFY sr_rank <= $width
        """,
        {"width": width},
    )
    conn.execute(
        """
        CREATE OR REPLACE TEMP TABLE sm_markov AS
        SELECT item_a, item_b, markov_n AS markov_score,
               markov_n / sum(markov_n) OVER (PARTITION BY item_a) AS markov_share,
               row_number() OVER (PARTITION BY item_a ORDER BY markov_n DESC, item_b) AS markov_rank
        FROM sm_rules WHERE markov_n > 0
        QUALIFY markov_rank <= $width
        """,
        {"width": width},
    )
    conn.execute(
        """
        CREATE OR REPLACE TEMP TABLE sm_successors AS
        SELECT item_a AS item_id, count(*) AS successors FROM sm_rules GROUP BY item_a
        """
    )
    conn.execute(
        "CREATE OR REPLACE TEMP TABLE sm_popular AS SELECT item_id, pop_rank FROM sm_items WHERE pop_rank <= $width",
        {"width": width},
    )
    conn.execute(
        """
        CREATE OR REPLACE TEMP TABLE sm_session_items AS
        SELECT user_id || '/' || session_id AS neighbour, item_id,
               max(max(event_time)) OVER (PARTITION BY user_id, session_id) AS session_end
        FROM sm_hist GROUP BY user_id, session_id, item_id
        """
    )
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE sm_item_sessions AS
        SELECT * FROM sm_session_items
        QUALIFY row_number() OVER (PARTITION BY item_id ORDER BY session_end DESC, neighbour) <= {SKNN_SAMPLE}
        """
    )


# The events of the sessions with an event in [$start, $end), up to $end, numbered in order (step), each with its
# session's next item and time; the events on items the item side does not know are removed first (session-rec's
# protocol: nothing could recommend them), so a session's positions count its known events only.
_SEQUENCES_SQL = """
WITH target_sessions AS (
    SELECT user_id, session_id FROM cleaned_events
    WHERE NOT is_bot AND item_id IS NOT NULL
    GROUP BY ALL HAVING min(event_time) >= $start AND min(event_time) < $end
),
events AS (
    SELECT e.user_id, e.session_id, e.item_id, e.event_time, e.event_id, e.event_type
    FROM cleaned_events e JOIN target_sessions USING (user_id, session_id)
    WHERE NOT e.is_bot AND e.item_id IN (SELECT item_id FROM sm_items)
)
SELECT user_id, session_id, item_id, event_time, event_type,
       row_number() OVER w AS step,
       lead(item_id) OVER w AS next_item, lead(event_time) OVER w AS next_time,
       count(*) OVER (PARTITION BY user_id, session_id) AS session_events
FROM events
WINDOW w AS (PARTITION BY user_id, session_id ORDER BY event_time, event_id)
"""


def _target_prefixes(
    conn: duckdb.DuckDBPyConnection, start: dt.datetime, end: dt.datetime, positions_per_session: int = 0
) -> None:
    """Temp tables ``sm_prefixes`` (one row per prefix of a session that starts in ``[start, end)``: sessions
    belong to the day they start, as session-rec splits by session, so one running past midnight is evaluated
    whole and every prefix's events come after the item side's; with ``positions_per_session``, at most that many
    of each session's prefixes, a fixed pseudo-random choice) and ``sm_steps`` (each prefix's own events,
    ``step`` 1 .. ``position``), after ``_known_items``."""
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE sm_sequences AS
        SELECT * FROM ({_SEQUENCES_SQL}) WHERE session_events >= 2
        """,
        {"start": start, "end": end},
    )
    conn.execute(
        """
        CREATE OR REPLACE TEMP TABLE sm_prefixes AS
        SELECT user_id || '/' || session_id || '/' || step AS prefix_id, user_id, session_id, step AS position,
               event_time AS prefix_time, item_id AS last_item, next_item
        FROM sm_sequences WHERE next_item IS NOT NULL
        QUALIFY $per_session = 0 OR row_number() OVER (
            PARTITION BY user_id, session_id ORDER BY hash(user_id, session_id, step), step) <= $per_session
        """,
        {"per_session": positions_per_session},
    )
    conn.execute(
        """
        CREATE OR REPLACE TEMP TABLE sm_steps AS
        SELECT p.prefix_id, s.step, s.item_id, s.event_time
        FROM sm_prefixes p JOIN sm_sequences s
          ON s.user_id = p.user_id AND s.session_id = p.session_id AND s.step <= p.position
        """
    )


def _top_per_row(matrix: sparse.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(rows, columns, values, ranks) of the ``k`` largest entries of each row of ``matrix`` (integers >= 0), ties
    by the smaller column, in the order of rows and ranks (1-based).

    When a histogram of every row's values is no larger than the entries (the neighbour similarities: a few hundred
    values), only the entries at or above each row's k-th largest value are sorted, by one key of row, value
    (highest first) and column. Otherwise every entry is sorted by row and value, each row's columns put in order
    first (``matrix``'s indices, sorted in place)."""
    n, columns = matrix.shape
    rows = np.repeat(np.arange(n), np.diff(matrix.indptr))
    span = int(matrix.data.max()) + 1 if matrix.nnz else 1
    if n * span <= matrix.nnz and n * span * columns < 2**62:
        at_least = np.bincount(rows * span + matrix.data, minlength=n * span).reshape(n, span)
        at_least = np.cumsum(at_least[:, ::-1], axis=1)[:, ::-1]  # a row's entries of each value or more
        kth = np.maximum((at_least >= k).sum(axis=1) - 1, 0)  # the row's k-th largest value (0: fewer than k)
        kept = np.flatnonzero(matrix.data >= kth[rows])
        rows, values, indices = rows[kept], matrix.data[kept], matrix.indices[kept]
        order = np.argsort((rows * span + (span - 1 - values)) * columns + indices)  # one key per entry
        per_row = np.bincount(rows, minlength=n)
        starts = np.cumsum(per_row) - per_row
    else:
        matrix.sort_indices()
        values, indices = matrix.data, matrix.indices
        # by row, then value, highest first; a stable sort keeps each row's columns in order within a value
        order = np.argsort(rows * span + (span - 1 - values), kind="stable")
        starts = matrix.indptr[:-1]
    # sorted by row first, the i-th entry in that order is of row rows[i], ranked from its row's first entry
    rank = np.arange(len(rows)) - starts[rows] + 1
    listed = rank <= k
    top = order[listed]
    return rows[listed], indices[top], values[top], rank[listed]


def _block_votes(
    prefix_items: sparse.csr_matrix,
    item_sessions: sparse.csr_matrix,
    session_items: sparse.csr_matrix,
    own_session: np.ndarray,
    first: int,
    width: int,
) -> pd.DataFrame:
    """Session-kNN's top ``width`` votes (prefix, item, units, total, rank) of the prefixes ``first`` onwards whose
    item weights are the rows of ``prefix_items`` (see ``_session_knn``)."""
    similarity = prefix_items @ item_sessions
    own = own_session[first : first + similarity.shape[0]]
    if (own >= 0).any():  # a prefix's own session, when it is a past one, is no neighbour of it
        rows = np.repeat(np.arange(similarity.shape[0]), np.diff(similarity.indptr))
        similarity.data[similarity.indices == own[rows]] = 0
        similarity.eliminate_zeros()
    rows, columns, values, _ = _top_per_row(similarity, SKNN_NEIGHBOURS)
    neighbours = sparse.csr_matrix((values, (rows, columns)), shape=similarity.shape)
    votes = neighbours @ session_items
    total = np.asarray(votes.sum(axis=1)).ravel()
    rows, columns, units, rank = _top_per_row(votes, width)
    return pd.DataFrame({"prefix": rows + first, "item": columns, "units": units, "total": total[rows], "rank": rank})


def _session_knn(conn: duckdb.DuckDBPyConnection, width: int) -> None:
    """Temp table ``sm_sknn``: session-kNN's top ``width`` items of each prefix of ``sm_prefixes`` / ``sm_steps``
    (prefix_id, item_id, sknn_score, sknn_share, sknn_rank), after ``_item_side``.

    Each prefix item is weighted by its last position (step / position, linear decay); a past session's similarity
    is the sum of the weights of the prefix items it shares among each item's sampled sessions (``sm_item_sessions``),
    in whole steps: exact. The ``SKNN_NEIGHBOURS`` most similar sessions other than the prefix's own (then the most
    recent, then the first by name) vote for each of their items with their similarity; an item's ``sknn_units``
    are its votes, its score the units over the prefix's length, its share the units over the prefix's votes, its
    rank by units, then item id.

    As integer sparse matrices (the string join and group by of every prefix item with its sampled sessions was
    most of the in-session training set's time): similarities = prefix x item weights @ item x session sample,
    votes = neighbour similarities @ session x item incidence, integer sums, exact in any order. Sessions are
    numbered most recent first (then by name) and items by id, so each top-k is one sort by row, value (highest
    first) and number: the tie-breaks of the SQL it replaced, row for row."""
    conn.execute(
        """
        CREATE OR REPLACE TEMP TABLE sm_knn_items AS
        SELECT item_id, CAST(row_number() OVER (ORDER BY item_id) - 1 AS INTEGER) AS code FROM sm_items
        """
    )
    conn.execute(
        """
        CREATE OR REPLACE TEMP TABLE sm_knn_sessions AS
        SELECT neighbour,
               CAST(row_number() OVER (ORDER BY max(session_end) DESC, neighbour) - 1 AS INTEGER) AS code
        FROM sm_item_sessions GROUP BY neighbour
        """
    )
    conn.execute(
        """
        CREATE OR REPLACE TEMP TABLE sm_knn_prefixes AS
        SELECT p.prefix_id, p.position, CAST(row_number() OVER (ORDER BY p.prefix_id) - 1 AS INTEGER) AS code,
               coalesce(s.code, -1) AS own_session
        FROM sm_prefixes p LEFT JOIN sm_knn_sessions s ON s.neighbour = p.user_id || '/' || p.session_id
        """
    )
    own_session = conn.execute("SELECT own_session FROM sm_knn_prefixes ORDER BY code").fetchnumpy()["own_session"]
    items, sessions = (
        conn.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0] for table in ("sm_knn_items", "sm_knn_sessions")
    )
    weights = conn.execute(
        """
        SELECT p.code AS prefix, i.code AS item, max(s.step) AS weight
        FROM sm_steps s JOIN sm_knn_prefixes p USING (prefix_id) JOIN sm_knn_items i USING (item_id)
        GROUP BY p.code, i.code
        """
    ).fetchnumpy()
    sample = conn.execute(
        """
        SELECT i.code AS item, s.code AS session
        FROM sm_item_sessions JOIN sm_knn_items i USING (item_id) JOIN sm_knn_sessions s USING (neighbour)
        """
    ).fetchnumpy()
    incidence = conn.execute(
        """
        SELECT s.code AS session, i.code AS item
        FROM sm_session_items JOIN sm_knn_sessions s USING (neighbour) JOIN sm_knn_items i USING (item_id)
        """
    ).fetchnumpy()

    prefixes = len(own_session)
    prefix_items = sparse.csr_matrix(
        (weights["weight"].astype(np.int64), (weights["prefix"], weights["item"])), shape=(prefixes, items)
    )
    # duplicate (item, session) or (session, item) pairs (two sessions whose user/session names join to the same
    # neighbour) add up, as the rows of the join did
    item_sessions = sparse.csr_matrix(
        (np.ones(len(sample["item"]), dtype=np.int64), (sample["item"], sample["session"])), shape=(items, sessions)
    )
    session_items = sparse.csr_matrix(
        (np.ones(len(incidence["item"]), dtype=np.int64), (incidence["session"], incidence["item"])),
        shape=(sessions, items),
    )
    # A block of prefixes at a time: each prefix's row is its own, and the similarities of every prefix at once
    # (every catalogue item in ``item_next_items``) would not fit in memory where the SQL spilled to disk. The blocks
    # run on as many Python threads as DuckDB has (sparse products and sorts release the GIL), SKNN_BLOCK prefixes
    # in flight in all, and are put together in prefix order: the same rows whatever the threads.
    threads = max(1, min(int(conn.execute("SELECT current_setting('threads')").fetchall()[0][0]), prefixes))
    block = max(1, min(SKNN_BLOCK // threads, -(-prefixes // threads)))
    with ThreadPoolExecutor(max_workers=threads) as pool:
        votes = list(
            pool.map(
                lambda first: _block_votes(
                    prefix_items[first : first + block], item_sessions, session_items, own_session, first, width
                ),
                range(0, max(prefixes, 1), block),  # no prefix: one empty block, the frame's columns
            )
        )
    conn.register("sm_knn_votes", pd.concat(votes, ignore_index=True))
    try:
        # integer over integer: the same doubles as the SQL's sums divided
        conn.execute(
            """
            CREATE OR REPLACE TEMP TABLE sm_sknn AS
            SELECT p.prefix_id, i.item_id, v.units / p.position AS sknn_score, v.units / v.total AS sknn_share,
                   v.rank AS sknn_rank
            FROM sm_knn_votes v JOIN sm_knn_prefixes p ON p.code = v.prefix JOIN sm_knn_items i ON i.code = v.item
            """
        )
    finally:
        conn.unregister("sm_knn_votes")


_CANDIDATES_SQL = f"""
WITH prefixes AS (SELECT * FROM sm_prefixes),
steps AS (SELECT * FROM sm_steps),
prefix_side AS (
    SELECT s.prefix_id, count(DISTINCT s.item_id) AS prefix_items,
           date_diff('millisecond', min(s.event_time), max(s.event_time)) / 1000.0 AS prefix_seconds,
           -- how long the previous item held the shopper (the last item's own dwell lies in the future)
           date_diff('millisecond', max(s.event_time) FILTER (WHERE s.step = p.position - 1),
                     max(s.event_time) FILTER (WHERE s.step = p.position)) / 1000.0 AS dwell_seconds
    FROM steps s JOIN prefixes p USING (prefix_id)
    GROUP BY s.prefix_id, p.position
),
own AS (
    SELECT s.prefix_id, s.item_id, count(*) AS session_count, p.position - max(s.step) AS steps_since_seen,
           date_diff('millisecond', max(s.event_time), p.prefix_time) / 1000.0 AS seconds_since_seen
    FROM steps s JOIN prefixes p USING (prefix_id)
    GROUP BY s.prefix_id, s.item_id, p.position, p.prefix_time
    QUALIFY row_number() OVER (PARTITION BY s.prefix_id ORDER BY steps_since_seen, s.item_id) <= {SESSION_ITEMS}
),
sr AS (
    SELECT p.prefix_id, r.item_b AS item_id, r.sr_score, r.sr_share, r.sr_rank
    FROM prefixes p JOIN sm_sr r ON r.item_a = p.last_item
),
-- SR over the last three items: an item's units are the sum of its terms, one per step, decayed by 1/2 per step back
-- (whole units: an exact sum in any order). Summing every successor of the three items made tens of millions of sums
-- to keep 20 per prefix; the same top 20 are found among few: the 20th best sum over the three items' own top
-- successors (sm_sr) is at most the 20th best over every item, and an item reaching it has a term of at least a
-- third of it.
sr3_steps AS (
    SELECT p.prefix_id, s.item_id AS item_a, 1 << ({SR3_ITEMS} - 1 - (p.position - s.step)) AS weight
    FROM prefixes p JOIN steps s ON s.prefix_id = p.prefix_id AND s.step > p.position - {SR3_ITEMS}
),
sr3_seeds AS (
    SELECT t.prefix_id, CAST(sum(w.weight * r.sr_units) AS BIGINT) AS sr3_units
    FROM (SELECT DISTINCT w.prefix_id, r.item_b FROM sr3_steps w JOIN sm_sr r ON r.item_a = w.item_a) t
    JOIN sr3_steps w ON w.prefix_id = t.prefix_id
    JOIN sm_rules r ON r.item_a = w.item_a AND r.item_b = t.item_b
    GROUP BY t.prefix_id, t.item_b
),
sr3_floor AS (
    -- 0 when the seeds are fewer than $width: every successor is a candidate
    SELECT prefix_id, CASE WHEN count(*) = $width THEN min(sr3_units) ELSE 0 END AS floor_units
    FROM (
        SELECT * FROM sr3_seeds
        QUALIFY row_number() OVER (PARTITION BY prefix_id ORDER BY sr3_units DESC) <= $width
    )
    GROUP BY prefix_id
),
sr3_items AS (
    SELECT DISTINCT w.prefix_id, r.item_b
    FROM sr3_steps w JOIN sr3_floor f ON f.prefix_id = w.prefix_id
    JOIN sm_rules r ON r.item_a = w.item_a
    WHERE {SR3_ITEMS} * w.weight * r.sr_units >= f.floor_units
),
sr3 AS (
    SELECT prefix_id, item_id, sr3_units / {SR_UNIT * 2 ** (SR3_ITEMS - 1)}.0 AS sr3_score,
           row_number() OVER (PARTITION BY prefix_id ORDER BY sr3_units DESC, item_id) AS sr3_rank
    FROM (
        SELECT c.prefix_id, c.item_b AS item_id, CAST(sum(w.weight * r.sr_units) AS BIGINT) AS sr3_units
        FROM sr3_items c JOIN sr3_steps w ON w.prefix_id = c.prefix_id
        JOIN sm_rules r ON r.item_a = w.item_a AND r.item_b = c.item_b
        GROUP BY c.prefix_id, c.item_b
    )
    QUALIFY sr3_rank <= $width
),
markov AS (
    SELECT p.prefix_id, m.item_b AS item_id, m.markov_score, m.markov_share, m.markov_rank
    FROM prefixes p JOIN sm_markov m ON m.item_a = p.last_item
),
-- session-kNN (``_session_knn``): its top $width per prefix
sknn AS (SELECT * FROM sm_sknn),
pairs AS (
    SELECT prefix_id, item_id, max(session_count) AS session_count, min(sr_rank) AS sr_rank,
           min(sr3_rank) AS sr3_rank, min(sknn_rank) AS sknn_rank, min(markov_rank) AS markov_rank,
           min(pop_rank) AS pop_rank
    FROM (
        SELECT prefix_id, item_id, session_count FROM own
        UNION ALL BY NAME SELECT prefix_id, item_id, sr_rank FROM sr
        UNION ALL BY NAME SELECT prefix_id, item_id, sr3_rank FROM sr3
        UNION ALL BY NAME SELECT prefix_id, item_id, sknn_rank FROM sknn
        UNION ALL BY NAME SELECT prefix_id, item_id, markov_rank FROM markov
        UNION ALL BY NAME SELECT prefix_id, item_id, pop_rank FROM prefixes CROSS JOIN sm_popular
    )
    GROUP BY prefix_id, item_id
)
-- position (the prefix's length) is both a key column and the first feature
SELECT c.prefix_id, p.session_id, p.user_id, p.position, p.prefix_time, c.item_id,
       CAST(coalesce(c.item_id = p.next_item, false) AS INTEGER) AS relevance,
       CASE WHEN c.session_count IS NOT NULL THEN 'session' WHEN c.sr_rank IS NOT NULL THEN 'sr'
            WHEN c.sknn_rank IS NOT NULL THEN 'sknn' WHEN c.markov_rank IS NOT NULL THEN 'markov'
            WHEN c.sr3_rank IS NOT NULL THEN 'sr3' ELSE 'popular' END AS source,
       CAST(ps.prefix_items AS DOUBLE) AS prefix_items,
       ps.prefix_seconds, ps.dwell_seconds, ps.prefix_seconds / greatest(p.position - 1, 1) AS mean_gap_seconds,
       CAST(coalesce(li.pop_all, 0) AS DOUBLE) AS last_item_events,
       CAST(coalesce(ls.successors, 0) AS DOUBLE) AS last_item_successors,
       CAST(c.session_count IS NOT NULL AS DOUBLE) AS in_session,
       CAST(coalesce(o.session_count, 0) AS DOUBLE) AS session_count,
       CAST(o.steps_since_seen AS DOUBLE) AS steps_since_seen, o.seconds_since_seen,
       CAST(c.item_id = p.last_item AS DOUBLE) AS is_last_item,
       coalesce(sr.sr_score, 0.0) AS sr_score, CAST(coalesce(c.sr_rank, {NO_RANK}) AS DOUBLE) AS sr_rank,
       coalesce(sr.sr_share, 0.0) AS sr_share, CAST(c.sr_rank IS NOT NULL AS DOUBLE) AS in_sr,
       coalesce(sr3.sr3_score, 0.0) AS sr3_score, CAST(coalesce(c.sr3_rank, {NO_RANK}) AS DOUBLE) AS sr3_rank,
       CAST(c.sr3_rank IS NOT NULL AS DOUBLE) AS in_sr3,
       coalesce(sknn.sknn_score, 0.0) AS sknn_score, CAST(coalesce(c.sknn_rank, {NO_RANK}) AS DOUBLE) AS sknn_rank,
       coalesce(sknn.sknn_share, 0.0) AS sknn_share, CAST(c.sknn_rank IS NOT NULL AS DOUBLE) AS in_sknn,
       CAST(coalesce(m.markov_score, 0) AS DOUBLE) AS markov_score, coalesce(m.markov_share, 0.0) AS markov_share,
       CAST(coalesce(c.markov_rank, {NO_RANK}) AS DOUBLE) AS markov_rank,
           CAST(c.markov_rank IS NOT NULL AS DOUBLE) AS in_markov,
       CAST(coalesce(i.pop_all, 0) AS DOUBLE) AS pop_all, CAST(coalesce(i.pop_1d, 0) AS DOUBLE) AS pop_1d,
       CAST(coalesce(i.pop_rank, {NO_RANK}) AS DOUBLE) AS pop_rank, CAST(c.pop_rank IS NOT NULL AS DOUBLE) AS in_pop,
       date_diff('second', i.last_time, p.prefix_time) / 3600.0 AS item_hours_since_last,
       date_diff('second', i.first_time, p.prefix_time) / 3600.0 AS item_hours_since_first
FROM pairs c
JOIN prefixes p USING (prefix_id)
JOIN prefix_side ps USING (prefix_id)
LEFT JOIN own o ON o.prefix_id = c.prefix_id AND o.item_id = c.item_id
LEFT JOIN sr ON sr.prefix_id = c.prefix_id AND sr.item_id = c.item_id
LEFT JOIN sr3 ON sr3.prefix_id = c.prefix_id AND sr3.item_id = c.item_id
LEFT JOIN sknn ON sknn.prefix_id = c.prefix_id AND sknn.item_id = c.item_id
LEFT JOIN markov m ON m.prefix_id = c.prefix_id AND m.item_id = c.item_id
LEFT JOIN sm_items i ON i.item_id = c.item_id
LEFT JOIN sm_items li ON li.item_id = p.last_item
LEFT JOIN sm_successors ls ON ls.item_id = p.last_item
"""

_TEMP_TABLES = (
    "sm_hist",
    "sm_items",
    "sm_rules",
    "sm_sr",
    "sm_markov",
    "sm_successors",
    "sm_popular",
    "sm_session_items",
    "sm_item_sessions",
    "sm_sequences",
    "sm_prefixes",
    "sm_steps",
    "sm_knn_items",
    "sm_knn_sessions",
    "sm_knn_prefixes",
    "sm_sknn",
)


def _drop_temp(conn: duckdb.DuckDBPyConnection) -> None:
    conn.execute("; ".join(f"DROP TABLE IF EXISTS {name}" for name in _TEMP_TABLES))


def _candidates(conn: duckdb.DuckDBPyConnection, positives_only: bool, width: int = SOURCE_ITEMS) -> pd.DataFrame:
    """The candidate rows of the prefixes in ``sm_prefixes`` / ``sm_steps`` (see ``_CANDIDATES_SQL``), the top
    ``width`` of each rule source (at least ``_item_side``'s)."""
    _session_knn(conn, width)
    return fetch_frame(
        conn,
        f"""
        WITH candidates AS ({_CANDIDATES_SQL})
        SELECT *, (SELECT count(*) FROM sm_items) AS catalogue_items FROM candidates
        WHERE NOT $positives_only OR prefix_id IN (SELECT prefix_id FROM candidates WHERE relevance = 1)
        ORDER BY prefix_id, item_id
        """,
        {"positives_only": positives_only, "width": width},
    )


def session_frame(
    conn: duckdb.DuckDBPyConnection,
    target_start: dt.datetime,
    target_end: dt.datetime,
    *,
    positives_only: bool,
    positions_per_session: int = 0,
) -> pd.DataFrame:
    """One row per (prefix, candidate) for every prefix of the sessions that start in ``[target_start, target_end)``
    (UTC, naive like ``event_time``), with ``relevance`` 1 on the true next item. The item side reads the events
    before ``target_start`` only; a prefix reads its own session's events up to its last one, after the events on
    items unknown at ``target_start`` are removed (the protocol of ``session_targets``, whose ``prefix_id`` it
    shares). ``cutoff`` (= ``target_start``) tells the stacked days of a training set apart, ``window_end`` (=
    ``target_end``) closes the window for the evaluation's targets, and ``catalogue_items`` (items known at the
    cut-off) is the denominator of coverage. ``positives_only`` keeps the prefixes whose next item is among their
    candidates: the only ones LambdaRank learns from. ``positions_per_session`` (0: all) keeps at most that many
    prefixes of each session (``_target_prefixes``), for training: a long session's prefixes share most of their
    candidates and features."""
    try:
        _item_side(conn, target_start)
        _target_prefixes(conn, target_start, target_end, positions_per_session)
        frame = _candidates(conn, positives_only)
    finally:
        _drop_temp(conn)
    return with_columns(frame, cutoff=pd.Timestamp(target_start), window_end=pd.Timestamp(target_end))


def session_targets(
    conn: duckdb.DuckDBPyConnection, target_start: dt.datetime, target_end: dt.datetime
) -> pd.DataFrame:
    """The evaluation positions (session-rec's next-item protocol): the sessions that start in
    ``[target_start, target_end)``, their events on items never seen before ``target_start`` removed, sessions
    of at least two events left; every prefix of the sessions that start in the window is a position and its next
    item the target. Columns prefix_id, session_id, position, item_id (the true next item), and ``carts`` and
    ``orders``: the items the session adds to the cart and buys after the prefix (OTTO's labels)."""
    try:
        _known_items(conn, target_start)  # the item side's rules are not needed to find the positions
        _target_prefixes(conn, target_start, target_end)
        return conn.execute(
            """SELECT p.prefix_id, p.session_id, p.position, p.next_item AS item_id,
                      coalesce(list(DISTINCT s.item_id ORDER BY s.item_id) FILTER (WHERE s.event_type = 'add_to_cart'),
                          []) AS carts,
                      coalesce(list(DISTINCT s.item_id ORDER BY s.item_id) FILTER (WHERE s.event_type = 'purchase'),
                          []) AS orders
               FROM sm_prefixes p
               LEFT JOIN sm_sequences s ON s.user_id = p.user_id AND s.session_id = p.session_id AND s.step > p.position
               GROUP BY ALL ORDER BY p.prefix_id"""
        ).df()
    finally:
        _drop_temp(conn)


_session_dataset = training.ranking_dataset(["cutoff", "prefix_id"], SESSION_FEATURES)  # a group per prefix and cut-off


def train_session_ranker(frame: pd.DataFrame, params: LightGBMParams) -> lgb.Booster:
    """LambdaRank over the prefixes of ``frame`` (``session_frame`` of one or more cut-offs), started from SR
    (``SESSION_RULE_START``, calibrated by ``training.rule_offset``) and boosting the residual; the last cut-off
    is the validation day on which early stopping picks the rounds (``training.boost``), so the model keeps only
    the rounds that improve on SR there."""
    if frame.empty:
        raise ValueError("the session training set is empty: no prefix had its next item among its candidates")
    # Most features are ranks and counts of a few dozen values: 63 bins lose nothing and make each round cheaper.
    lgb_params = (
        {"max_bin": 63}
        | params.to_lightgbm("lambdarank")
        | {"lambdarank_truncation_level": 20, "metric": "ndcg", "eval_at": [20]}
    )
    # the days are split by as_of_date, the training set's cut-off day; session_frame's rows have their window's start
    days = frame if "as_of_date" in frame else frame.assign(as_of_date=frame["cutoff"])
    return training.boost(
        lgb_params,
        _session_dataset,
        days,
        params,
        start=lambda rows: training.rule_offset(
            rows, SESSION_FEATURES, SESSION_RULE_START, rows["relevance"].to_numpy() > 0
        ),
    )


def rank_candidates(
    frame: pd.DataFrame, scores: np.ndarray, codes: tuple[np.ndarray, np.ndarray] | None = None
) -> np.ndarray:
    """The 1-based rank of each row of ``frame`` within its prefix: by score (highest first, ties by item id);
    unscored rows (NaN, a rule that does not propose the item) after every scored one, by popularity, then item id.
    ``codes``: ``candidate_codes(frame)``, made once when the same rows are ranked by several methods."""
    prefix, item = candidate_codes(frame) if codes is None else codes
    scores = np.asarray(scores, dtype=float)
    unscored = np.isnan(scores)
    popularity = np.where(unscored, -frame["pop_all"].to_numpy(dtype=float), 0.0)
    order = np.lexsort((item, popularity, np.where(unscored, 0.0, -scores), unscored, prefix))
    ranks = np.empty(len(frame), dtype=np.int64)
    sorted_prefix = prefix[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_prefix)) + 1]
    position = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    ranks[order] = position + 1
    return ranks


def candidate_codes(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(prefix codes, item codes) of the rows of ``frame``, each in the order of its ids."""
    return pd.factorize(frame["prefix_id"], sort=True)[0], pd.factorize(frame["item_id"], sort=True)[0]


def _row_finder(holdout: pd.DataFrame):
    """A function from (prefix_id, item_id) pairs to the row of ``holdout`` holding each pair (a prefix's
    candidates are distinct items: an index of its pairs that are not raises), -1 for a pair that is not among the
    candidates. The pairs are integers (``metrics.PairCodes``), looked up in one index of the hold-out's pairs."""
    pairs = PairCodes(holdout["prefix_id"], holdout["item_id"])
    valid = np.flatnonzero(pairs.codes >= 0)
    rows = pd.Index(pairs.codes[valid])

    def rows_of(other: pd.DataFrame) -> np.ndarray:
        found = rows.get_indexer(pairs.encode(other["prefix_id"], other["item_id"]))
        return np.where(found >= 0, valid[found], -1)

    return rows_of


def _ranks_at(ranks: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``ranks`` of ``rows`` (``_row_finder``'s), NaN where a row is -1 (not a candidate)."""
    found = np.full(len(rows), np.nan)
    found[rows >= 0] = ranks[rows[rows >= 0]]
    return found


def _positions(holdout: pd.DataFrame, targets: pd.DataFrame, items: np.ndarray) -> dict:
    """What every method's metric rows read of the hold-out and its targets, found once: the candidate row of each
    target (and of each OTTO label), the candidate rows of the positions measured, the item codes (``items``:
    ``candidate_codes(holdout)[1]``)."""
    rows_of = _row_finder(holdout)
    positions = {
        "target_rows": rows_of(targets),
        "in_targets": holdout["prefix_id"].isin(targets["prefix_id"]).to_numpy(),
        "items": items,
    }
    if "carts" in targets and (targets["carts"].map(len).sum() or targets["orders"].map(len).sum()):
        for action in ("carts", "orders"):
            labels = targets[["prefix_id", action]].explode(action).dropna().rename(columns={action: "item_id"})
            positions[action] = rows_of(labels)
    return positions


def _method_rows(
    holdout: pd.DataFrame,
    targets: pd.DataFrame,
    ranks: np.ndarray,
    method: str,
    ks: tuple[int, ...],
    positions: dict,
    draws: np.ndarray | None = None,
) -> list[dict]:
    """The metric rows of one method from its candidate ranks: a position whose next item is not among its
    candidates is a miss. ``positions``: ``_positions(holdout, targets, ...)``, found once for every method, as
    the bootstrap's ``draws`` may be."""
    rank = _ranks_at(ranks, positions["target_rows"])  # NaN: not a candidate
    per_position = {}
    for k in ks:
        hit = np.nan_to_num(rank <= k)
        per_position |= {
            f"hr@{k}": hit.astype(float),
            f"mrr@{k}": np.where(hit > 0, 1.0 / np.nan_to_num(rank, nan=1.0), 0.0),
            f"ndcg@{k}": np.where(hit > 0, 1.0 / np.log2(np.nan_to_num(rank, nan=1.0) + 1.0), 0.0),
        }
    intervals = bootstrap_intervals(np.column_stack(list(per_position.values())), draws=draws)
    rows = [
        {
            "metric": metric,
            "value": float(values.mean()) if len(targets) else float("nan"),
            "ci_low": low,
            "ci_high": high,
        }
        for (metric, values), (low, high) in zip(per_position.items(), intervals)
    ]
    k = max(ks)
    listed = positions["in_targets"] & (ranks <= k)
    catalogue = float(holdout["catalogue_items"].iloc[0]) if len(holdout) else float("nan")
    top_pop = float(holdout["pop_all"].max()) if len(holdout) else float("nan")
    rows.append(
        {
            "metric": f"coverage@{k}",
            "value": len(np.unique(positions["items"][listed])) / catalogue if catalogue else float("nan"),
            "ci_low": float("nan"),
            "ci_high": float("nan"),
        }
    )
    pop = holdout["pop_all"].to_numpy(dtype=float)[listed]
    rows.append(
        {
            "metric": f"popularity_bias@{k}",
            "value": float(pop.mean() / top_pop) if len(pop) and top_pop else float("nan"),
            "ci_low": float("nan"),
            "ci_high": float("nan"),
        }
    )
    if "carts" in positions:
        labels = {action: _ranks_at(ranks, positions[action]) <= k for action in ("carts", "orders")}
        rows += _otto_rows(labels, targets, np.nan_to_num(rank <= k).astype(float), k)
    return [{"segment": "all", "method": method, "target": "next_item", **row, "users": len(targets)} for row in rows]


OTTO_WEIGHTS = {"clicks": 0.10, "carts": 0.30, "orders": 0.60}


def _otto_rows(listed: dict[str, np.ndarray], targets: pd.DataFrame, click_hits: np.ndarray, k: int) -> list[dict]:
    """OTTO's score, as its evaluation script defines it, with every position a test session cut there: the recall
    of clicks (the next item among the top ``k``), of carts and of orders (the later carted / bought items among
    the top ``k``, over min(k, how many) per position, summed over positions), weighted 0.1, 0.3 and 0.6.
    ``listed[action]``: whether each of the positions' later carted / bought items is among their top ``k``."""
    recalls = {"clicks": float(click_hits.mean()) if len(click_hits) else float("nan")}
    for action in ("carts", "orders"):
        hits = int(listed[action].sum())
        wanted = targets[action].map(lambda items: min(len(items), k)).sum()
        recalls[action] = hits / wanted if wanted else float("nan")
    score = sum(OTTO_WEIGHTS[action] * recall for action, recall in recalls.items())
    none = {"ci_low": float("nan"), "ci_high": float("nan")}
    return [{"metric": f"otto_recall_{action}@{k}", "value": recall, **none} for action, recall in recalls.items()] + [
        {"metric": f"otto_score@{k}", "value": score, **none}
    ]


def evaluate_sessions(
    holdout: pd.DataFrame, model, targets: pd.DataFrame, ks: tuple[int, ...] = METRIC_KS
) -> pd.DataFrame:
    """``model`` (a LightGBM booster, a ``RulePolicy`` or ``gru_model.FixedScores``) and every rule of
    ``SESSION_RULES`` on the hold-out positions ``targets`` (``session_targets``), each ranked by the same code from
    its ``predict``: HR, MRR and NDCG at each K with 95% bootstrap intervals over positions, catalogue coverage and
    popularity bias (the mean popularity of the listed items over the top item's) at the largest K. ``users``
    counts positions. ``predict`` gets the hold-out's rows in order: a float matrix of ``SESSION_FEATURES``, or the
    columns a policy names (``feature_name``) when they are others (a version registered before the features
    changed)."""
    methods = {"model": model, **SESSION_RULES}
    # what every method reads, made once: its features (one matrix: a frame is converted on every predict), the
    # rows' ranking codes, the targets' rows
    features = training.feature_matrix(holdout, SESSION_FEATURES)
    codes = candidate_codes(holdout)
    positions = _positions(holdout, targets, codes[1])
    draws = bootstrap_draws(len(targets)) if len(targets) >= 2 else None
    rows = []
    for method, policy in methods.items():
        names = _inputs(policy)
        read = features if names == SESSION_FEATURES else training.feature_matrix(holdout, names)
        scores = policy.predict(read) if len(holdout) else np.array([])
        rows += _method_rows(holdout, targets, rank_candidates(holdout, scores, codes), method, ks, positions, draws)
    return pd.DataFrame(rows)


def _inputs(policy) -> list[str]:
    """The columns ``policy``'s ``predict`` reads, in its order: ``SESSION_FEATURES``, or those it names
    (``feature_name``: a version registered before the features changed reads others)."""
    return list(policy.feature_name()) if hasattr(policy, "feature_name") else SESSION_FEATURES


def _top_k(frame: pd.DataFrame, model, k: int) -> pd.DataFrame:
    scores = (
        np.asarray(model.predict(training.feature_matrix(frame, _inputs(model))), dtype=float)
        if len(frame)
        else np.array([])
    )
    ranked = frame[["prefix_id", "item_id", "source"]].assign(score=scores, rank=rank_candidates(frame, scores))
    return ranked[ranked["rank"] <= k].sort_values(["prefix_id", "rank"], ignore_index=True)


def item_next_items(conn: duckdb.DuckDBPyConnection, model, end: dt.datetime, k: int = 50) -> pd.DataFrame:
    """For every item seen before ``end``: the top ``k`` next items of a one-event session on it (at ``end``),
    scored by ``model`` from the events before ``end``, so that a product page or a session's last item is one
    lookup. Columns item_id, rank, next_item_id, score, source."""
    width = max(SOURCE_ITEMS, k)
    try:
        _item_side(conn, end, width)
        conn.execute(
            """
            CREATE OR REPLACE TEMP TABLE sm_prefixes AS
            SELECT item_id AS prefix_id, '' AS user_id, item_id AS session_id, 1 AS position,
                   CAST($end AS TIMESTAMP) AS prefix_time, item_id AS last_item, CAST(NULL AS VARCHAR) AS next_item
            FROM sm_items
            """,
            {"end": end},
        )
        conn.execute(
            "CREATE OR REPLACE TEMP TABLE sm_steps AS SELECT prefix_id, 1 AS step, last_item AS item_id, "
            "prefix_time AS event_time FROM sm_prefixes"
        )
        frame = _candidates(conn, positives_only=False, width=width)
    finally:
        _drop_temp(conn)
    top = _top_k(frame, model, k)
    return pd.DataFrame(
        {
            "item_id": top["prefix_id"],
            "rank": top["rank"],
            "next_item_id": top["item_id"],
            "score": top["score"],
            "source": top["source"],
        }
    )


def score_prefixes(
    conn: duckdb.DuckDBPyConnection, prefixes: pd.DataFrame, model, end: dt.datetime, k: int = 20
) -> pd.DataFrame:
    """The top ``k`` next items of each session of ``prefixes`` (events: session_id, item_id, event_time), as of
    its last event, the item side from the warehouse's events before ``end``. Columns session_id, rank, item_id,
    score, source. Items the warehouse does not know stay in the prefix (they are the session's own items) but
    have no rules or statistics."""
    events = prefixes[["session_id", "item_id", "event_time"]].astype({"session_id": str, "item_id": str})
    conn.register("sm_prefix_events", events)
    width = max(SOURCE_ITEMS, k)
    try:
        _item_side(conn, end, width)
        conn.execute(
            """
            CREATE OR REPLACE TEMP TABLE sm_sequences AS
            SELECT '' AS user_id, session_id, item_id, CAST(event_time AS TIMESTAMP) AS event_time,
                   row_number() OVER (PARTITION BY session_id ORDER BY event_time, item_id) AS step
            FROM sm_prefix_events WHERE item_id IS NOT NULL
            """
        )
        conn.execute(
            """
            CREATE OR REPLACE TEMP TABLE sm_prefixes AS
            SELECT session_id AS prefix_id, user_id, session_id, step AS position, event_time AS prefix_time,
                   item_id AS last_item, CAST(NULL AS VARCHAR) AS next_item
            FROM sm_sequences QUALIFY step = max(step) OVER (PARTITION BY session_id)
            """
        )
        conn.execute(
            "CREATE OR REPLACE TEMP TABLE sm_steps AS SELECT session_id AS prefix_id, step, item_id, event_time "
            "FROM sm_sequences"
        )
        frame = _candidates(conn, positives_only=False, width=width)
    finally:
        conn.unregister("sm_prefix_events")
        _drop_temp(conn)
    top = _top_k(frame, model, k)
    return pd.DataFrame(
        {
            "session_id": top["prefix_id"],
            "rank": top["rank"],
            "item_id": top["item_id"],
            "score": top["score"],
            "source": top["source"],
        }
    )
