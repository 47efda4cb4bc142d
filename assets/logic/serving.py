"""Scoring a day's active users with a champion model: top-k recommendations and next-action probabilities."""

import datetime as dt
import functools
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import duckdb
import lightgbm as lgb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from assets.logic.candidates import RANKER_FEATURES, stored_ranker_rows_sql
from assets.logic.explanations import WORDING_COLUMNS, leaf_indices, top_family, top_family_of_leaves, word
from assets.logic.features import USER_FEATURE_COLUMNS
from assets.logic.policies import RulePolicy

TOP_K = 20
FALLBACK_REASON = "popular with shoppers right now (fills the list)"
# Batches of at least this many candidates are scored by the ranker compiled to machine code by lleaves (same
# scores as LightGBM to ~1e-14; 1.1M candidates, 300 trees, 2 cores: 1.1-1.5 s against LightGBM's 5.1 s). Compiling
# costs ~3.5 s once per model and process, so small batches (tests, predict on a few users) keep LightGBM's predict.
COMPILED_SCORING_ROWS = 500_000
# A day's users are scored in batches of this many (about 55 candidates each): memory is bounded by two batches, the
# one scored and the next, read meanwhile (about 2.5 GiB each at 50,000 users; 50,000 and 100,000 took the same time
# for 200,000 users).
SCORE_BATCH_USERS = 50_000


def active_users(conn: duckdb.DuckDBPyConnection, day: dt.date) -> pd.Series:
    """Users (not bots) with an event in the 24 hours before the cut-off of ``day``."""
    return conn.execute(
        "SELECT user_id FROM user_features WHERE as_of_date = ? AND events_1d > 0 ORDER BY 1", [day]
    ).df()["user_id"]


def check_features(booster: lgb.Booster, expected: list[str], model: str) -> None:
    """Refuse a model whose inputs are not the features this code computes."""
    if booster.feature_name() != expected:
        missing = sorted(set(expected) ^ set(booster.feature_name()))
        raise ValueError(
            f"model {model} expects other features than the warehouse provides (differences: {missing[:10]})"
        )


@functools.lru_cache(maxsize=4)
def _compiled(model: str):
    import lleaves  # imports LLVM: only where a large batch is scored

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.txt"
        path.write_text(model)
        compiled = lleaves.Model(model_file=str(path))
        compiled.compile()
    return compiled


def ranker_scores(booster: lgb.Booster | RulePolicy, candidates: pd.DataFrame | list[np.ndarray]) -> np.ndarray:
    """The ranker's score for every candidate row, from a frame with the ranker's features or from row-major
    matrices of them, scored in turn (see ``COMPILED_SCORING_ROWS``). A rule policy leaves the candidates it does
    not propose unscored (NaN)."""
    if isinstance(candidates, pd.DataFrame):
        candidates = [np.ascontiguousarray(candidates[RANKER_FEATURES], dtype=np.float64)]
    rows = sum(len(part) for part in candidates)
    if not rows:
        return np.array([])
    compile_it = rows >= COMPILED_SCORING_ROWS and not isinstance(booster, RulePolicy)  # a rule is a sum already
    predict = _compiled(booster.model_to_string()).predict if compile_it else booster.predict
    return np.concatenate([predict(part) for part in candidates if len(part)])


@dataclass(frozen=True)
class BusinessRules:
    """Rules applied after ranking, in this order, and recorded in every row (column ``rules``).

    ``exclude_purchased`` is on by default: on the Taobao sample only 4% of next-day
    purchases (and 1.4% of next-day views) are of items the user had already bought,
    so a slot is worth more on an item not bought yet; shops with replenishment
    categories (groceries) should turn it off.
    """

    exclude_purchased: bool = True
    max_per_category: int = 5  # 0: no cap
    deny_items: tuple[str, ...] = ()
    min_items: int = TOP_K  # shorter lists are filled from the popular items (source "fallback")

    def describe(self) -> str:
        parts = ["exclude_purchased"] if self.exclude_purchased else []
        parts += [f"max_per_category={self.max_per_category}"] if self.max_per_category else []
        parts += [f"deny_items={len(self.deny_items)}"] if self.deny_items else []
        return ";".join(parts + [f"min_items={self.min_items}"])


RULE_COLUMNS = ["user_id", "item_id", "category_id", "source", "ui_purchases", "popular_rank"]


# The fill of the lists shorter than ``$fill``: the users' allowed candidates that are not in their lists, in
# popularity order, after the ranked items.
_FALLBACK_SQL = """
SELECT a.* REPLACE (CAST(NULL AS DOUBLE) AS score, 'fallback' AS source),
       s.n + row_number() OVER (PARTITION BY a.user_id ORDER BY a.popular_rank, a.item_id) AS rank
FROM allowed a JOIN short s USING (user_id)
WHERE a.popular_rank < 999 AND NOT EXISTS (SELECT 1 FROM ranked r WHERE r.user_id = a.user_id AND r.item_id = a.item_id)
QUALIFY rank <= $fill
"""


def _position_in_run(first: np.ndarray) -> np.ndarray:
    """For rows grouped in runs (``first`` marks the first row of each), each row's position in its run, from 0."""
    positions = np.arange(len(first))
    return positions - np.maximum.accumulate(np.where(first, positions, 0))


def _codes(column: pa.ChunkedArray) -> tuple[pa.DictionaryArray, np.ndarray]:
    """The strings of ``column`` dictionary-encoded (a null is an entry too), and each row's place among the
    distinct strings in sorted order, a null last: an integer sort key that orders the rows as their strings do
    (sorting 2.75M rows by two string keys cost more than encoding them)."""
    encoded = pc.dictionary_encode(column, null_encoding="encode").combine_chunks()
    place = pc.rank(encoded.dictionary, sort_keys="ascending").to_numpy()  # a null ranks last by default
    return encoded, place[encoded.indices.to_numpy()]


def ranked_table(
    scored: pd.DataFrame | pa.Table, users: pd.Series, rules: BusinessRules, k: int, keep: tuple[str, ...] = ()
) -> pa.Table:
    """Top-k per user from scored candidates (user_id, item_id, category_id, source, ui_purchases,
    popular_rank, score) under ``rules``; returns user_id, item_id, score, source, rank, rules and the ``keep``
    columns of ``scored``, ordered by user and rank.

    The allowed candidates' keys are sorted once, by user, then score (a null score after every other), then the
    more popular item, then item id, wherever a ranking is cut or numbered; the category cap and the ranks are
    counted along that order on integer codes (two SQL windows sorted every candidate twice), and only the rows
    kept are gathered. The users whose lists come out shorter than ``min_items`` are filled from their popular
    candidates, in DuckDB."""
    table = scored if isinstance(scored, pa.Table) else pa.Table.from_pandas(scored, preserve_index=False)
    table = table.select(list(dict.fromkeys([*RULE_COLUMNS, "score", *keep])))
    score = table["score"].cast(pa.float64())
    # NaN is a missing score too (DuckDB would rank it above every number)
    table = table.set_column(table.schema.get_field_index("score"), "score", pc.if_else(pc.is_nan(score), None, score))
    allowed = pc.is_in(table["user_id"], value_set=pa.array(users.to_numpy(), pa.string()))
    if rules.deny_items:
        allowed = pc.and_(allowed, pc.invert(pc.is_in(table["item_id"], value_set=pa.array(rules.deny_items))))
    if rules.exclude_purchased:
        allowed = pc.and_(allowed, pc.equal(pc.fill_null(table["ui_purchases"].cast(pa.float64()), 0.0), 0.0))
    rows = np.flatnonzero(allowed.to_numpy(zero_copy_only=False))  # the allowed rows of ``table``
    user, user_key = _codes(table["user_id"])
    user_of = user.indices.to_numpy()[rows]  # each allowed row's user, by code
    keys = pa.table(
        {
            "user": user_key[rows],
            "score": table["score"].take(rows),
            "popular_rank": table["popular_rank"].take(rows),
            "item": _codes(table["item_id"])[1][rows],
        }
    )
    order = pc.sort_indices(
        keys,
        sort_keys=[
            ("user", "ascending"),
            ("score", "descending"),
            ("popular_rank", "ascending"),
            ("item", "ascending"),
        ],
    ).to_numpy()  # nulls at the end, under either order: as DuckDB orders them
    user_code = user_of[order]
    new_user = np.ones(len(order), bool)
    new_user[1:] = user_code[1:] != user_code[:-1]
    # each user's place in user order, by code: the rows are sorted by user
    user_place = np.zeros(len(user.dictionary), np.int64)
    user_place[user_code] = np.cumsum(new_user) - 1
    kept = np.ones(len(order), bool)
    if rules.max_per_category:
        # each candidate's place among its user's candidates of the same category (the item itself without one)
        category = pc.coalesce(table["category_id"].cast(pa.string()), table["item_id"].cast(pa.string()))
        category = pc.dictionary_encode(category).combine_chunks()
        group = user_place[user_code] * len(category.dictionary) + category.indices.to_numpy()[rows[order]]
        by_group = np.argsort(group, kind="stable")  # stable: the sorted order within each (user, category)
        sorted_group = group[by_group]
        in_group = np.empty(len(order), np.int64)
        in_group[by_group] = _position_in_run(np.r_[True, sorted_group[1:] != sorted_group[:-1]])
        kept = in_group < rules.max_per_category
    rank = _position_in_run(new_user[kept]) + 1
    chosen = order[kept][rank <= k]
    rank = rank[rank <= k]
    ranked = table.take(rows[chosen]).append_column("rank", pa.array(rank))
    fill = min(rules.min_items, k)
    have = np.bincount(user_of[chosen], minlength=len(user.dictionary))
    # users with allowed candidates whose lists are short (the others get nothing)
    short = np.flatnonzero((have < fill) & (np.bincount(user_of, minlength=len(user.dictionary)) > 0))
    if len(short):
        short_users = pa.table({"user_id": user.dictionary.take(pa.array(short)), "n": pa.array(have[short])})
        with duckdb.connect() as conn:
            conn.register("allowed", table.take(rows[np.isin(user_of, short)]))
            conn.register("ranked", ranked.take(np.flatnonzero(np.isin(user_of[chosen], short))))
            conn.register("short", short_users)
            filled = conn.sql(_FALLBACK_SQL, params={"fill": fill}).to_arrow_table()
        filled = filled.select(ranked.column_names).cast(ranked.schema)
        filled_place = user_place[pc.index_in(filled["user_id"], value_set=user.dictionary).to_numpy()]
        place = np.concatenate([user_place[user_of[chosen]], filled_place])
        ranked = pa.concat_tables([ranked, filled])
        ranked = ranked.take(np.lexsort((ranked["rank"].to_numpy(), place)))
    ranked = ranked.append_column("rules", pa.repeat(pa.scalar(rules.describe(), pa.string()), len(ranked)))
    return ranked.select(list(dict.fromkeys(["user_id", "item_id", "score", "source", "rank", "rules", *keep])))


# The candidate columns the rules and the reasons' wording read; the features travel apart, as matrices.
_ROW_COLUMNS = list(dict.fromkeys(RULE_COLUMNS + WORDING_COLUMNS))


def scoring_sql(relation: str) -> str:
    """The candidate rows of ``relation`` as ``recommend_scored`` reads them: the columns the rules and reasons read,
    and the ranker's features as one fixed-size array per row, which DuckDB lays out row-major, as the scorers read
    them (a missing value is NaN, LightGBM's missing). Turning a frame's feature columns into rows in numpy cost
    5.7 s per 5.2M candidates, more than scoring them; the array costs DuckDB next to nothing beyond the read."""
    features = ", ".join(f"coalesce(CAST({c} AS DOUBLE), 'NaN'::DOUBLE)" for c in RANKER_FEATURES)
    return f"SELECT {', '.join(_ROW_COLUMNS)}, [{features}]::DOUBLE[{len(RANKER_FEATURES)}] AS features FROM {relation}"


def _take_rows(matrices: list[np.ndarray], rows: np.ndarray) -> np.ndarray:
    """Rows of the matrices stacked (by their position in the stack), without stacking them."""
    starts = np.cumsum([0] + [len(m) for m in matrices])
    which = np.searchsorted(starts, rows, side="right") - 1
    taken = np.empty((len(rows), len(RANKER_FEATURES)))
    for i, matrix in enumerate(matrices):
        mine = np.flatnonzero(which == i)  # positions, not a mask: half the time for a mask's 1.9M rows
        taken[mine] = np.take(matrix, rows[mine] - starts[i], axis=0)
    return taken


def recommend_scored(
    booster: lgb.Booster, batch: pa.Table, users: pd.Series, k: int = TOP_K, rules: BusinessRules = BusinessRules()
) -> pa.Table:
    """Top-k items per user of ``users`` from candidate rows read by ``scoring_sql``, under the business rules,
    each with the reason its largest feature contributions give: user_id, item_id, score, source, rank, rules, reason.
    The features are read in place, chunk by chunk, and the rows stay in Arrow (a pandas frame of 1M rows costs
    ~1 s to make and ~2 s more to write than the Arrow table)."""
    matrices = [
        chunk.flatten().to_numpy().reshape(len(chunk), len(RANKER_FEATURES))
        for chunk in batch.column("features").chunks
    ]
    # from_pandas: a rule's unscored candidates (NaN) are null, ranked after every score
    scores = pa.array(ranker_scores(booster, matrices), pa.float64(), from_pandas=True)
    scored = (
        batch.select(_ROW_COLUMNS).append_column("score", scores).append_column("row", pa.array(np.arange(len(batch))))
    )
    ranked = ranked_table(scored, users, rules, k, keep=("row", *WORDING_COLUMNS))
    chosen = ranked["row"].to_numpy()
    if not len(chosen):
        reason = pa.array([], pa.string())
    elif isinstance(booster, RulePolicy):  # a rule's terms are read from the chosen rows' features
        reason = word(ranked, top_family(booster, _take_rows(matrices, chosen)))
    else:  # the leaves of every candidate, read from the matrices in place: cheaper than gathering the chosen rows
        reason = word(ranked, top_family_of_leaves(booster, leaf_indices(booster, matrices)[chosen]))
    return ranked.select(["user_id", "item_id", "score", "source", "rank", "rules"]).append_column(
        "reason", pc.if_else(pc.equal(ranked["source"], "fallback"), FALLBACK_REASON, reason)
    )


def recommend(
    booster: lgb.Booster,
    candidates: pd.DataFrame | pa.Table,
    users: pd.Series,
    k: int = TOP_K,
    rules: BusinessRules = BusinessRules(),
) -> pa.Table:
    """Top-k items per user from candidates with the ranker's features (a frame or an Arrow table), see
    ``recommend_scored``."""
    with duckdb.connect() as conn:
        conn.register("candidates", candidates)
        batch = conn.sql(scoring_sql("candidates")).to_arrow_table()
    return recommend_scored(booster, batch, users, k, rules)


# The tables ``recommend_day`` reads (``candidates.stored_ranker_rows_sql``).
_SCORED_TABLES = ("ranking_candidates", "user_features", "item_features")


def _reader(conn: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """A cursor of ``conn`` (a connection of its own to the same database, for another thread) with ``conn``'s
    temporary views of the tables scoring reads: on a spark home the daily tables are temporary views over the lake
    (``lake.attach_lake``), each a read of Parquet files that depends on nothing else of the connection."""
    reader = conn.cursor()
    for (create,) in conn.execute(
        "SELECT sql FROM duckdb_views() WHERE temporary AND NOT internal AND list_contains($tables, view_name)",
        {"tables": list(_SCORED_TABLES)},
    ).fetchall():
        reader.execute(create)
    return reader


def recommend_day(
    conn: duckdb.DuckDBPyConnection,
    booster: lgb.Booster,
    day: dt.date,
    k: int = TOP_K,
    rules: BusinessRules = BusinessRules(),
    users: pd.Series | None = None,
    batch_users: int = SCORE_BATCH_USERS,
) -> Iterator[pa.Table]:
    """Top-k items for every user active on ``day`` (or for ``users``), as of its end, from the day's candidates in
    the warehouse (see ``recommend_scored``), yielded ``batch_users`` users at a time, in their order: memory is
    bounded by two batches (the one scored and the next, read meanwhile), not by the day, when each batch is written
    before the next is made. A batch of sorted users reads little more than its own rows, as the candidates are
    stored clustered by user (see ``build_candidates_day``), with its users' features and the day's item features joined
    (``candidates.stored_ranker_rows_sql``)."""
    users = active_users(conn, day) if users is None else users
    batch_rows = scoring_sql(
        f"({stored_ranker_rows_sql('as_of_date = $day', 'user_id IN (SELECT user_id FROM batch_users)')})"
    )
    batches = [users.iloc[start : start + batch_users] for start in range(0, len(users), batch_users)]

    def read(some: pd.Series) -> pa.Table:
        reader.register("batch_users", pa.table({"user_id": pa.array(some, pa.string())}))
        try:
            return reader.sql(batch_rows, params={"day": day}).to_arrow_table()
        finally:
            reader.unregister("batch_users")

    # The next batch is read (by DuckDB, on a cursor of its own, in a thread) while this one is scored, ranked and
    # explained (mostly numpy and Arrow on the main thread): memory holds two batches, not one. 1M users of the
    # 10M-event day: 100.3 and 107.8 s against 115.8 and 131.8 s read in turn (alternating, same rows). The read
    # has ended before a batch is yielded: a consumer that fails while it writes the batch leaves no query running
    # on the cursor (closing the connection under a running one fails and hides the consumer's error).
    with _reader(conn) as reader, ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(read, batches[0]) if batches else None
        for i, some in enumerate(batches):
            batch = pending.result()
            pending = pool.submit(read, batches[i + 1]) if i + 1 < len(batches) else None
            recs = recommend_scored(booster, batch, some, k, rules)
            del batch
            wait([pending] if pending else [])
            yield recs.append_column("as_of_date", pa.repeat(pa.scalar(day, pa.date32()), len(recs)))


def predict_next_action_day(conn: duckdb.DuckDBPyConnection, booster: lgb.Booster, day: dt.date) -> pd.DataFrame:
    """Each active user's probability, from a next-action model, of that action on the next day."""
    users = active_users(conn, day)
    features = conn.execute(
        "SELECT * FROM user_features WHERE as_of_date = ? AND user_id IN (SELECT unnest(?)) ORDER BY user_id",
        [day, users.tolist()],
    ).df()
    p = booster.predict(features[USER_FEATURE_COLUMNS].astype(float)) if len(features) else np.array([])
    return pd.DataFrame({"as_of_date": day, "user_id": features["user_id"], "probability": p})
