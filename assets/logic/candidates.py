"""Next-item candidates as of the end of a day, with the features the ranker reads per (user, item).

Sources, each point-in-time (events before the cut-off only):

* ``recent``: the user's own items of the last 28 days (the 100 strongest), scored by event type and
  recency (``sum(weight(type) * exp(-age_hours / 48))``); repeat behaviour is strong;
* ``covis``: items co-visited in the same session as the user's 10 strongest recent
  items over the last 7 days, weighted by what happened to the second item;
* ``category``: the most popular items of yesterday in the user's two strongest categories;
* ``new``: new arrivals (first seen in the ``COLD_ITEM_DAYS`` before the cut-off) in the user's two strongest
  categories, ranked by early traction: their weighted events per hour since they were first seen, so an item
  with a few carts in its first hours beats an older one with the same count: the source meant for items with
  little history, which co-visitation and yesterday's popularity need more of (first seen within the item features'
  28-day window: an item silent for longer counts as new again);
* ``trending``: the items whose last day most outgrew their 7-day mean (with at least ``TRENDING_MIN_SCORE`` of
  weighted events yesterday), for everyone;
* ``popular``: the most popular items of yesterday (the fallback for everyone).

An item first seen after the cut-off cannot be proposed by any source: "cold" here means first seen in the
``COLD_ITEM_DAYS`` before it (the evaluation's cold-item segment, see ``training.holdout_targets``).

Candidates are built for users with an event in the last ``CANDIDATE_USER_DAYS`` days.

The table holds the keys, the sources' scores and ranks and the user x item features (``CANDIDATE_FEATURES``: they
need the user's own history, and are computed with the candidates, per pair); the user-level and item-level
features (``JOINED_FEATURES``) are joined from ``user_features`` and ``item_features`` of the same ``as_of_date``
where the ranker's rows are read (``ranker_rows_sql``): a candidate is stored with 28 features instead of 42.
"""

import datetime as dt
import math

import duckdb
import pandas as pd

from assets.logic.features import ITEM_FEATURE_COLUMNS, daily_history_sql, exact_sum, type_weight_sql
from assets.logic.warehouse_sql import (
    date_bounds,
    day_bounds,
    ensure_table,
    replace_window,
)

CANDIDATE_USER_DAYS = 7
RECENT_PER_USER = 100
COVIS_PER_USER = 30
COVIS_NEIGHBOURS = 20
COVIS_DAYS = 7
CATEGORY_ITEMS = 10
POPULAR_ITEMS = 30
COLD_ITEM_DAYS = 3
NEW_ITEMS = 10  # per category
NEW_TRACTION_HOURS = 24.0  # added to an item's age: a single view in its first minutes is not a trend yet
TRENDING_ITEMS = 10
TRENDING_MIN_SCORE = 5
RECENCY_HOURS = 48.0
EVENTS_PER_PASS = 400_000  # history events per pass of the user side (see build_candidates_day)
SOURCES = ("recent", "covis", "category", "new", "trending", "popular")
# the columns of the history the user side reads
HISTORY_COLUMNS = "user_id, item_id, category_id, event_type, event_time, event_id, session_id, cutoff"

RANKER_FEATURES = [
    "recent_score",
    "recent_rank",
    "covis_score",
    "covis_rank",
    "category_rank",
    "new_rank",
    "trending_rank",
    "popular_rank",
    "in_recent",
    "in_covis",
    "in_category",
    "in_new",
    "in_trending",
    "in_popular",
    "ui_views",
    "ui_carts",
    "ui_purchases",
    "ui_favs",
    "ui_hours_since_touch",
    "ui_touched_last_day",
    "ui_hours_since_first_touch",
    "ui_sessions",
    "ui_days",
    "ui_events_1d",
    "ui_in_last_session",
    "ui_last_session_position",
    "in_last_category",
    "category_affinity",
    "user_events_7d",
    "user_hours_since_last_event",
    "price_vs_user_mean",
    *ITEM_FEATURE_COLUMNS,
]
# The ranker's features that depend on the user alone or on the item alone (and the price ratio of the two), restored
# from user_features and item_features of the candidates' as_of_date when their rows are read (``ranker_rows_sql``);
# the others are stored with the candidates.
JOINED_FEATURES = ["user_events_7d", "user_hours_since_last_event", "price_vs_user_mean", *ITEM_FEATURE_COLUMNS]
CANDIDATE_FEATURES = [f for f in RANKER_FEATURES if f not in JOINED_FEATURES]


def covis_pairs_sql(events: str = "cleaned_events") -> str:
    """Item-to-item co-visitation as of ``$cutoff``: for each item, its ``COVIS_NEIGHBOURS`` strongest
    session neighbours over the ``COVIS_DAYS`` before the cut-off, weighted by what happened to the neighbour."""
    return f"""
WITH session_items AS (
    SELECT session_id, item_id, max({type_weight_sql()}) AS weight, max(event_time) AS last_time
    FROM {events}
    WHERE event_time >= $cutoff - INTERVAL {COVIS_DAYS} DAY AND event_time < $cutoff AND NOT is_bot
        AND item_id IS NOT NULL
    GROUP BY session_id, item_id
    QUALIFY row_number() OVER (PARTITION BY session_id ORDER BY last_time DESC, item_id) <= 30
)
-- whole-number weights: their double sum is exact in any order
SELECT a.item_id AS item_a, b.item_id AS item_b, sum(greatest(b.weight, 1.0)) AS pair_weight
FROM session_items a JOIN session_items b ON a.session_id = b.session_id AND a.item_id <> b.item_id
GROUP BY a.item_id, b.item_id
QUALIFY row_number() OVER (PARTITION BY a.item_id ORDER BY pair_weight DESC, b.item_id) <= {COVIS_NEIGHBOURS}
"""


def candidates_sql(history: str, covis_pairs: str, item_now: str) -> str:
    """Candidates with their ``CANDIDATE_FEATURES`` (``ranker_rows_sql`` adds the others). The user side reads
    ``history`` (events with their user's ``cutoff``, see ``features.daily_history_sql``); the item side reads
    ``covis_pairs`` (``covis_pairs_sql``) and ``item_now`` (item features), both SELECTs. Param: ``$as_of_date`` (of
    the item side)."""
    recency_weight = f"{type_weight_sql()} * exp(-date_diff('second', event_time, h.cutoff) / 3600.0 / {RECENCY_HOURS})"
    return f"""
WITH events AS (SELECT {HISTORY_COLUMNS} FROM ({history}) e),
h AS (SELECT * FROM events WHERE item_id IS NOT NULL),
-- every recently active user gets candidates, also one who only searched (popular items at least)
users AS (
    SELECT user_id, cutoff FROM events GROUP BY user_id, cutoff
    HAVING max(event_time) >= cutoff - INTERVAL {CANDIDATE_USER_DAYS} DAY
),
last_touch AS (
    SELECT h.user_id, arg_max(session_id, (event_time, event_id)) AS last_session,
           arg_max(category_id, (event_time, event_id)) AS last_category
    FROM h JOIN users USING (user_id) GROUP BY h.user_id
),
last_session_items AS (
    SELECT h.user_id, item_id, min(position) AS ui_last_session_position FROM (
        SELECT h.user_id, item_id, row_number() OVER (PARTITION BY h.user_id ORDER BY event_time DESC,
            item_id) AS position
        FROM h JOIN last_touch l ON l.user_id = h.user_id AND h.session_id = l.last_session
    ) h GROUP BY ALL
),
-- what the user did with each item they touched; recent_rank orders them by the recency-weighted score
ui AS (
    SELECT ui.*, row_number() OVER (PARTITION BY ui.user_id ORDER BY recent_score DESC, ui.item_id) AS recent_rank,
           ls.item_id IS NOT NULL AS in_last_session, ls.ui_last_session_position
    FROM (
        SELECT h.user_id, item_id,
               {exact_sum(recency_weight, 12)}
                   AS recent_score,
               count(*) FILTER (WHERE event_type = 'view') AS ui_views,
               count(*) FILTER (WHERE event_type = 'add_to_cart') AS ui_carts,
               count(*) FILTER (WHERE event_type = 'purchase') AS ui_purchases,
               count(*) FILTER (WHERE event_type = 'favorite') AS ui_favs,
               date_diff('second', max(event_time), h.cutoff) / 3600.0 AS ui_hours_since_touch,
               date_diff('second', min(event_time), h.cutoff) / 3600.0 AS ui_hours_since_first_touch,
               count(DISTINCT session_id) AS ui_sessions,
               count(DISTINCT date_trunc('day', event_time)) AS ui_days,
               count(*) FILTER (WHERE event_time >= h.cutoff - INTERVAL 1 DAY) AS ui_events_1d,
               -- an item the item side does not know keeps the category the user's own events gave it
               arg_max(category_id, (event_time, event_id)) AS event_category
        FROM h JOIN users USING (user_id)
        GROUP BY h.user_id, item_id, h.cutoff
    ) ui
    LEFT JOIN last_session_items ls ON ls.user_id = ui.user_id AND ls.item_id = ui.item_id
),
recent AS (SELECT * FROM ui WHERE recent_score > 0 AND recent_rank <= {RECENT_PER_USER}),
covis_pairs AS ({covis_pairs}),
seeds AS (
    SELECT user_id, item_id, recent_score / max(recent_score) OVER (PARTITION BY user_id) AS seed_weight
    FROM recent WHERE recent_rank <= 10
),
covis AS (
    SELECT *, row_number() OVER (PARTITION BY user_id ORDER BY covis_score DESC, item_id) AS covis_rank
    FROM (
        SELECT s.user_id, p.item_b AS item_id, {exact_sum("s.seed_weight * p.pair_weight", 9)} AS covis_score
        FROM seeds s JOIN covis_pairs p ON p.item_a = s.item_id
        GROUP BY s.user_id, p.item_b
    )
    QUALIFY covis_rank <= {COVIS_PER_USER}
),
user_categories AS (
    -- whole-number weights: their double sums are exact in any order
    SELECT h.user_id, category_id, sum(greatest({type_weight_sql()}, 0)) AS weight,
           sum(sum(greatest({type_weight_sql()}, 0))) OVER (PARTITION BY h.user_id) AS total
    FROM h JOIN users USING (user_id)
    WHERE category_id IS NOT NULL
    GROUP BY h.user_id, category_id
),
top_categories AS (
    SELECT user_id, category_id FROM user_categories
    QUALIFY row_number() OVER (PARTITION BY user_id ORDER BY weight DESC, category_id) <= 2
),
item_now AS ({item_now}),
category_top AS (
    SELECT category_id, item_id,
           row_number() OVER (PARTITION BY category_id ORDER BY item_score_1d DESC NULLS LAST, item_views_7d DESC,
               item_id) AS category_rank
    FROM item_now WHERE category_id IS NOT NULL
    QUALIFY category_rank <= {CATEGORY_ITEMS}
),
-- new arrivals per category by early traction: weighted events per hour of their life (an item first seen in the
-- window has all its events in the 7-day counts), smoothed so that one view in the first minutes is not a trend
new_top AS (
    SELECT category_id, item_id,
           row_number() OVER (PARTITION BY category_id ORDER BY traction DESC, item_id) AS new_rank
    FROM (
        SELECT category_id, item_id,
               (item_views_7d + 4 * item_carts_7d + 3 * item_purchases_7d)
                   / (item_hours_since_first_seen + {NEW_TRACTION_HOURS}) AS traction
        FROM item_now
        WHERE category_id IS NOT NULL AND item_hours_since_first_seen <= {COLD_ITEM_DAYS * 24}
    )
    QUALIFY new_rank <= {NEW_ITEMS}
),
trending AS (
    SELECT item_id, row_number() OVER (ORDER BY item_trend_1d_vs_7d DESC, item_score_1d DESC, item_id) AS trending_rank
    FROM item_now WHERE item_score_1d >= {TRENDING_MIN_SCORE}
    QUALIFY trending_rank <= {TRENDING_ITEMS}
),
popular AS (
    SELECT item_id, row_number() OVER (ORDER BY item_score_1d DESC NULLS LAST, item_views_7d DESC,
        item_id) AS popular_rank
    FROM item_now
    QUALIFY popular_rank <= {POPULAR_ITEMS}
),
-- one row per (user, item) proposed by any source, with the rank every source gave it: the sources are stacked
-- and aggregated once (joining each source to their union cost a hash join of every candidate per source)
pairs AS (
    SELECT user_id, item_id, min(recent_rank) AS recent_rank, max(covis_score) AS covis_score,
        min(covis_rank) AS covis_rank,
           min(category_rank) AS category_rank, min(new_rank) AS new_rank, min(trending_rank) AS trending_rank,
           min(popular_rank) AS popular_rank
    FROM (
        SELECT user_id, item_id, recent_rank FROM recent
        UNION ALL BY NAME SELECT user_id, item_id, covis_score, covis_rank FROM covis
        UNION ALL BY NAME SELECT user_id, item_id, category_rank FROM top_categories
            JOIN category_top USING (category_id)
        UNION ALL BY NAME SELECT user_id, item_id, new_rank FROM top_categories JOIN new_top USING (category_id)
        UNION ALL BY NAME SELECT user_id, item_id, trending_rank FROM users CROSS JOIN trending
        UNION ALL BY NAME SELECT user_id, item_id, popular_rank FROM users CROSS JOIN popular
    )
    GROUP BY user_id, item_id
),
user_side AS (SELECT u.user_id, u.cutoff, lt.last_category FROM users u LEFT JOIN last_touch lt USING (user_id))
SELECT CAST($as_of_date AS DATE) AS as_of_date, u.cutoff, p.user_id, p.item_id,
       coalesce(i.category_id, ui.event_category) AS category_id,
       CASE WHEN p.recent_rank IS NOT NULL THEN 'recent' WHEN p.covis_rank IS NOT NULL THEN 'covis'
            WHEN p.new_rank IS NOT NULL THEN 'new' WHEN p.category_rank IS NOT NULL THEN 'category'
            WHEN p.trending_rank IS NOT NULL THEN 'trending' ELSE 'popular' END AS source,
       CASE WHEN p.recent_rank IS NOT NULL THEN ui.recent_score ELSE 0 END AS recent_score, coalesce(p.recent_rank,
           999) AS recent_rank,
       coalesce(p.covis_score, 0) AS covis_score, coalesce(p.covis_rank, 999) AS covis_rank,
       coalesce(p.category_rank, 999) AS category_rank, coalesce(p.new_rank, 999) AS new_rank,
       coalesce(p.trending_rank, 999) AS trending_rank, coalesce(p.popular_rank, 999) AS popular_rank,
       CAST(p.recent_rank IS NOT NULL AS INTEGER) AS in_recent, CAST(p.covis_rank IS NOT NULL AS INTEGER) AS in_covis,
       CAST(p.category_rank IS NOT NULL AS INTEGER) AS in_category, CAST(p.new_rank IS NOT NULL AS INTEGER) AS in_new,
       CAST(p.trending_rank IS NOT NULL AS INTEGER) AS in_trending,
           CAST(p.popular_rank IS NOT NULL AS INTEGER) AS in_popular,
       coalesce(ui.ui_views, 0) AS ui_views, coalesce(ui.ui_carts, 0) AS ui_carts,
       coalesce(ui.ui_purchases, 0) AS ui_purchases, coalesce(ui.ui_favs, 0) AS ui_favs,
       ui.ui_hours_since_touch, CAST(coalesce(ui.ui_hours_since_touch < 24, false) AS INTEGER) AS ui_touched_last_day,
       ui.ui_hours_since_first_touch, coalesce(ui.ui_sessions, 0) AS ui_sessions, coalesce(ui.ui_days, 0) AS ui_days,
       coalesce(ui.ui_events_1d, 0) AS ui_events_1d,
       CAST(coalesce(ui.in_last_session, false) AS INTEGER) AS ui_in_last_session, ui.ui_last_session_position,
       CAST(coalesce(coalesce(i.category_id, ui.event_category) = u.last_category,
           false) AS INTEGER) AS in_last_category,
       coalesce(uc.weight / nullif(uc.total, 0), 0) AS category_affinity
FROM pairs p
JOIN user_side u ON u.user_id = p.user_id
LEFT JOIN ui ON ui.user_id = p.user_id AND ui.item_id = p.item_id
LEFT JOIN item_now i ON i.item_id = p.item_id
LEFT JOIN user_categories uc ON uc.user_id = p.user_id AND uc.category_id = coalesce(i.category_id, ui.event_category)
"""


def ranker_rows_sql(candidates: str, user_features: str, item_features: str) -> str:
    """The ranker's rows: the candidates of ``candidates`` (rows of ``ranking_candidates``) with the
    ``JOINED_FEATURES`` from ``user_features`` and ``item_features`` (tables or SELECTs of their rows) of the same
    ``as_of_date``: the values ``candidates_sql`` wrote with every candidate before they were stored apart. A user or
    an item without features gets nulls there, as it did then."""
    return f"""
SELECT c.*, uf.events_7d AS user_events_7d, uf.hours_since_last_event AS user_hours_since_last_event,
       i.item_price / nullif(uf.mean_price_7d, 0) AS price_vs_user_mean,
       {", ".join(f"i.{c}" for c in ITEM_FEATURE_COLUMNS)}
FROM ({candidates}) c
LEFT JOIN ({user_features}) uf ON uf.as_of_date = c.as_of_date AND uf.user_id = c.user_id
LEFT JOIN ({item_features}) i ON i.as_of_date = c.as_of_date AND i.item_id = c.item_id
"""


def stored_ranker_rows_sql(days: str, users: str = "true") -> str:
    """``ranker_rows_sql`` over the warehouse's tables: the candidates of the days that match ``days`` and of the
    users that match ``users`` (conditions on ``as_of_date`` and ``user_id`` written in code, their values bound as
    parameters), the user features of the same days and users, the item features of the same days."""
    return ranker_rows_sql(
        f"SELECT * FROM ranking_candidates WHERE {days} AND {users}",
        f"SELECT * FROM user_features WHERE {days} AND {users}",
        f"SELECT * FROM item_features WHERE {days}",
    )


def build_candidates_day(conn: duckdb.DuckDBPyConnection, day: dt.date, tz: str = "UTC") -> int:
    """Replace the candidates as of the end of ``day`` (needs that day's item features).

    The item side (co-visitation pairs, item features) is computed once; the user side runs in passes over
    disjoint ranges of user ids (``pass_bounds``), one pass per ``EVENTS_PER_PASS`` events of history. Every CTE
    of the user side is per user, so the passes give exactly the rows of one pass over everyone, while their hash
    tables stay small: at 10M events one pass spilled and took 172 s, four took 52 s and 24 took 47 s."""
    _, cutoff = day_bounds(day, tz)
    ensure_table(conn, "ranking_candidates")
    conn.execute(f"CREATE OR REPLACE TEMP TABLE day_covis_pairs AS {covis_pairs_sql()}", {"cutoff": cutoff})
    conn.execute(
        "CREATE OR REPLACE TEMP TABLE day_item_features AS SELECT * FROM item_features WHERE as_of_date = $day",
        {"day": day},
    )
    history, params = daily_history_sql(), {"cutoff": cutoff, "as_of_date": day}
    events = conn.execute(f"SELECT count(*) FROM ({history})", {"cutoff": cutoff}).fetchone()[0]
    bounds = [(None, None)]
    if events > EVENTS_PER_PASS:
        # the history once, in user order: each pass reads its own range of it (DuckDB skips the rest), not every
        # event of the history again, so the passes' reads grow with the history, not with its square
        conn.execute(
            f"CREATE OR REPLACE TEMP TABLE day_history AS SELECT {HISTORY_COLUMNS} FROM ({history}) ORDER BY user_id",
            {"cutoff": cutoff},
        )
        bounds = pass_bounds(conn, "day_history", events)
        history, params = "SELECT * FROM day_history", {"as_of_date": day}
    # The passes are stored in the order of their ranges, so the day is clustered by user: serving reads a day's
    # users a batch at a time (a sorted slice of them, several passes' worth on a big day), and DuckDB skips the
    # passes outside the batch's range (a sixteenth of the users of a 10M-event day read in 0.27 s, sorted, instead
    # of 3.1 s when the day was not clustered at all). Within a pass the rows keep the order the query made them in:
    # sorting each pass by (user, item) cost 7 of the 10M-event day's 43 s of passes, and serving 1M users was no
    # faster for it (90.6 / 92.1 s sorted, 100.2 / 85.4 s not, alternating; the day's 8 batch reads 6.0-6.6 s
    # sorted against 6.6-6.8 s not).
    selects = []
    for low, high in bounds:
        bound, conditions = dict(params), ["true"]
        if low is not None:
            bound["low"] = low
            conditions.append("user_id >= $low")
        if high is not None:
            bound["high"] = high
            conditions.append("user_id < $high")
        select = candidates_sql(
            history=f"SELECT * FROM ({history}) WHERE {' AND '.join(conditions)}",
            covis_pairs="SELECT * FROM day_covis_pairs",
            item_now="SELECT * FROM day_item_features",
        )
        selects.append((select, bound))
    try:
        return replace_window(conn, "ranking_candidates", "as_of_date", *date_bounds(day), selects)
    finally:
        conn.execute(
            "; ".join(f"DROP TABLE IF EXISTS {t}" for t in ("day_covis_pairs", "day_item_features", "day_history"))
        )


def pass_bounds(conn: duckdb.DuckDBPyConnection, history: str, events: int) -> list[tuple[str | None, str | None]]:
    """The user-id ranges ``[low, high)`` of the candidates' passes over ``history`` (a table of ``events`` events
    stored in user order), in order (``None``: open), about ``EVENTS_PER_PASS`` events each: their bounds are the
    user ids at the k-th of the passes' equal shares of the rows (the history's quantiles, read by position, where
    computing the quantiles again took 0.6 s at 10M events), so they depend on the events alone. A user with more
    events than a pass is one range's bound, not split."""
    passes = max(1, math.ceil(events / EVENTS_PER_PASS))
    if passes == 1:
        return [(None, None)]
    positions = [math.ceil(k * events / passes) - 1 for k in range(1, passes)]
    ids = conn.execute(
        f"SELECT DISTINCT user_id FROM {history} WHERE rowid IN (SELECT unnest($positions))", {"positions": positions}
    ).fetchall()
    # ascending, a repeated bound once; sorted here, so the ranges stay disjoint and cover every user even if the
    # table were not in user order (the passes would only be uneven)
    edges = [None, *sorted(user for (user,) in ids), None]
    return list(zip(edges[:-1], edges[1:]))


def candidate_recall(conn: duckdb.DuckDBPyConnection, day: dt.date, tz: str) -> pd.DataFrame:
    """How many (user, item) targets of the next day (of the shop's time zone ``tz``) of the users with candidates
    each source, and their union, contains: per source (index), ``found`` and ``recall`` over all targets and
    ``cold_found`` and ``cold_recall`` over the targets on cold items (first seen in the ``COLD_ITEM_DAYS`` before
    the cut-off). The row ``targets`` counts them, and the row ``unseen`` the targets on items first seen after the
    cut-off, which no source can propose."""
    cutoff, label_end = day_bounds(day + dt.timedelta(days=1), tz)
    found = ", ".join(
        f"count(c.item_id) FILTER (WHERE c.in_{s} = 1) AS {s}, count(c.item_id) FILTER (WHERE c.in_{s} = 1 AND "
        f"cold) AS cold_{s}"
        for s in SOURCES
    )
    row = (
        conn.execute(
            f"""
        WITH c AS (SELECT $cutoff AS cutoff, $label_end AS label_end),
        targets AS (
            SELECT DISTINCT user_id, item_id FROM cleaned_events, c
            WHERE event_time >= c.cutoff AND event_time < c.label_end AND NOT is_bot
                AND item_id IS NOT NULL
              AND user_id IN (SELECT user_id FROM ranking_candidates WHERE as_of_date = $day)
        ),
        first_seen AS (
            SELECT item_id, min(event_time) AS first_seen FROM cleaned_events, c
            WHERE event_time < c.cutoff AND NOT is_bot AND item_id IN (SELECT item_id FROM targets) GROUP BY item_id
        ),
        labelled AS (
            SELECT t.*, coalesce(f.first_seen >= c.cutoff - INTERVAL {COLD_ITEM_DAYS} DAY, false) AS cold,
                   f.first_seen IS NULL AS unseen
            FROM targets t CROSS JOIN c LEFT JOIN first_seen f USING (item_id)
        )
        SELECT count(*) AS targets, count(*) FILTER (WHERE t.cold) AS cold_targets,
               count(*) FILTER (WHERE t.unseen) AS unseen, {found},
               count(c.item_id) AS "union", count(c.item_id) FILTER (WHERE cold) AS cold_union
        FROM labelled t LEFT JOIN ranking_candidates c
          ON c.as_of_date = $day AND c.user_id = t.user_id AND c.item_id = t.item_id
        """,
            {"day": day, "cutoff": cutoff, "label_end": label_end},
        )
        .df()
        .iloc[0]
    )
    names = [*SOURCES, "union"]
    table = pd.DataFrame(
        {
            "found": [row[n] for n in names] + [row["targets"], row["unseen"]],
            "cold_found": [row[f"cold_{n}"] for n in names] + [row["cold_targets"], 0],
        },
        index=[*names, "targets", "unseen"],
    ).astype(int)
    table["recall"] = table["found"] / row["targets"] if row["targets"] else float("nan")
    table["cold_recall"] = table["cold_found"] / row["cold_targets"] if row["cold_targets"] else float("nan")
    return table
