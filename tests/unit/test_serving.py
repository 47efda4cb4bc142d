import duckdb
import lightgbm as lgb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from assets.logic import serving
from assets.logic.candidates import CANDIDATE_FEATURES, JOINED_FEATURES, RANKER_FEATURES
from assets.logic.explanations import reasons
from assets.logic.features import ITEM_FEATURE_COLUMNS
from assets.logic.serving import BusinessRules, ranked_table


def _scored():
    rows = [  # user, item, category, source, purchases, popular rank, score
        ("u1", "a", "c1", "recent", 1, 999, 0.9),
        ("u1", "b", "c1", "recent", 0, 999, 0.8),
        ("u1", "c", "c1", "covis", 0, 999, 0.7),
        ("u1", "d", "c2", "covis", 0, 999, 0.6),
        ("u1", "p1", "c3", "popular", 0, 1, 0.1),
        ("u1", "p2", "c3", "popular", 0, 2, 0.05),
        ("u2", "p1", "c3", "popular", 0, 1, 0.2),
        ("u2", "p2", "c3", "popular", 0, 2, 0.3),
    ]
    return pd.DataFrame(
        rows, columns=["user_id", "item_id", "category_id", "source", "ui_purchases", "popular_rank", "score"]
    )


def test_rules_exclude_purchases_cap_categories_deny_items_and_record_themselves():
    users = pd.Series(["u1", "u2", "u3"])
    rules = BusinessRules(exclude_purchased=True, max_per_category=1, deny_items=("d",), min_items=3)
    recs = ranked_table(_scored(), users, rules, k=3).to_pandas()
    u1 = recs[recs["user_id"] == "u1"]
    # a was bought, c is a second c1 item, d is denied: b, then p1 (c3), then a fallback fills slot 3.
    assert u1["item_id"].tolist() == ["b", "p1", "p2"] and u1["rank"].tolist() == [1, 2, 3]
    assert u1["source"].tolist() == ["recent", "popular", "fallback"]
    assert (recs["rules"] == "exclude_purchased;max_per_category=1;deny_items=1;min_items=3").all()
    assert recs[recs["user_id"] == "u2"]["item_id"].tolist() == [
        "p2",
        "p1",
    ]  # the cap limits the ranked items; fills keep the cap off
    assert "u3" not in set(recs["user_id"])  # no candidates and no popular items known for u3


def test_without_rules_the_ranking_is_the_models():
    recs = ranked_table(
        _scored(), pd.Series(["u1"]), BusinessRules(exclude_purchased=False, max_per_category=0, min_items=0), k=4
    ).to_pandas()
    assert recs["item_id"].tolist() == ["a", "b", "c", "d"] and recs["source"].ne("fallback").all()


def test_a_missing_item_id_ranks_after_its_ties_and_a_missing_user_is_left_out():
    scored = pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u1", None],
            "item_id": [None, "b", "a", "c"],
            "category_id": ["c1", "c2", "c3", "c1"],
            "source": "covis",
            "ui_purchases": 0,
            "popular_rank": 999,
            "score": [0.5, 0.5, 0.9, 0.9],
        }
    )
    rules = BusinessRules(exclude_purchased=False, max_per_category=0, min_items=0)
    recs = ranked_table(scored, pd.Series(["u1"]), rules, k=5).to_pandas()
    assert recs["user_id"].tolist() == ["u1"] * 3 and recs["item_id"].tolist() == ["a", "b", None]


# The rules as two SQL windows over every candidate (the code before ``ranked_table`` sorted them once): the
# reference the one-pass rules must give row for row.
_TWO_WINDOWS_SQL = """
WITH allowed AS (
    SELECT * FROM scored
    WHERE user_id IN (SELECT user_id FROM users) AND NOT list_contains($deny, item_id)
      AND (NOT $exclude_purchased OR coalesce(ui_purchases, 0) = 0)
),
ranked AS (
    SELECT *, row_number() OVER (PARTITION BY user_id ORDER BY score DESC, popular_rank, item_id) AS rank FROM (
        SELECT * FROM allowed
        QUALIFY $cap = 0 OR row_number() OVER (PARTITION BY user_id, coalesce(category_id, item_id)
                                               ORDER BY score DESC, popular_rank, item_id) <= $cap
    )
    QUALIFY rank <= $k
),
have AS (SELECT user_id, count(*) AS n FROM ranked GROUP BY user_id),
short AS (SELECT user_id, coalesce(h.n, 0) AS n FROM users LEFT JOIN have h USING (user_id)
          WHERE coalesce(h.n, 0) < $fill),
fallback AS (
    SELECT a.* REPLACE (CAST(NULL AS DOUBLE) AS score, 'fallback' AS source),
           s.n + row_number() OVER (PARTITION BY a.user_id ORDER BY a.popular_rank, a.item_id) AS rank
    FROM allowed a JOIN short s USING (user_id)
    WHERE a.popular_rank < 999
      AND NOT EXISTS (SELECT 1 FROM ranked r WHERE r.user_id = a.user_id AND r.item_id = a.item_id)
    QUALIFY rank <= $fill
)
SELECT user_id, item_id, score, source, rank, $rules AS rules, row
FROM (SELECT * FROM ranked UNION ALL BY NAME SELECT * FROM fallback)
ORDER BY user_id, rank
"""


@pytest.mark.parametrize(
    "rules",
    [
        BusinessRules(),
        BusinessRules(exclude_purchased=False, max_per_category=0, min_items=0),
        BusinessRules(max_per_category=2, deny_items=("i3", "i7"), min_items=15),
        BusinessRules(exclude_purchased=False, max_per_category=1, min_items=20),
    ],
)
def test_the_one_pass_rules_give_the_rows_of_the_two_windows(rules):
    """Ties in score (a rule's whole-number scores), missing scores, missing categories, users without candidates
    and users whose lists the cap leaves short: the same rows in the same order as the SQL windows."""
    rng = np.random.default_rng(11)
    n = 3000
    frame = pd.DataFrame(
        {
            "user_id": [f"u{u:03d}" for u in rng.integers(0, 150, n)],
            "item_id": [f"i{i}" for i in rng.integers(0, 400, n)],
            "category_id": np.where(rng.random(n) < 0.1, None, [f"c{c}" for c in rng.integers(0, 6, n)]),
            "source": rng.choice(["recent", "covis", "popular"], n),
            "ui_purchases": np.where(rng.random(n) < 0.1, 1.0, np.where(rng.random(n) < 0.1, np.nan, 0.0)),
            "popular_rank": np.where(rng.random(n) < 0.4, rng.integers(1, 30, n), 999).astype(float),
            "score": np.where(rng.random(n) < 0.15, np.nan, rng.integers(0, 8, n).astype(float)),
        }
    ).drop_duplicates(["user_id", "item_id"])
    frame = frame.assign(row=np.arange(len(frame)))
    users = pd.Series([f"u{u:03d}" for u in range(0, 160, 2)])  # every other user, and ten without candidates
    table = pa.Table.from_pandas(frame, preserve_index=False)  # NaN scores become null, as the scorer passes them
    got = ranked_table(table, users, rules, k=20, keep=("row",)).to_pandas()
    with duckdb.connect() as conn:
        conn.register("scored", table)
        conn.register("users", pd.DataFrame({"user_id": users}))
        params = {"deny": list(rules.deny_items), "exclude_purchased": rules.exclude_purchased, "k": 20}
        params |= {"cap": rules.max_per_category, "fill": min(rules.min_items, 20), "rules": rules.describe()}
        want = conn.sql(_TWO_WINDOWS_SQL, params=params).df()
    assert len(want) > 900 and want["score"].isna().any()
    assert want["source"].eq("fallback").any() == (rules.min_items > 0)
    pd.testing.assert_frame_equal(got, want, check_dtype=False)


def test_large_batches_are_scored_by_the_compiled_ranker_with_lightgbms_scores(monkeypatch):
    rng = np.random.default_rng(2)
    frame = pd.DataFrame(rng.uniform(0, 1, (3000, len(RANKER_FEATURES))), columns=RANKER_FEATURES)
    frame.loc[rng.random(len(frame)) < 0.2, "ui_hours_since_touch"] = np.nan  # missing values take the default branch
    label = ((frame["recent_score"] + frame["ui_views"] > 1) & frame["ui_hours_since_touch"].notna()).astype(int)
    params = {"objective": "lambdarank", "num_leaves": 7, "verbosity": -1, "seed": 1, "deterministic": True}
    booster = lgb.train(params, lgb.Dataset(frame, label, group=[30] * 100), 50)
    expected = booster.predict(frame[RANKER_FEATURES])
    monkeypatch.setattr(serving, "COMPILED_SCORING_ROWS", 1000)
    serving._compiled.cache_clear()
    compiled = serving.ranker_scores(booster, frame)
    assert serving._compiled.cache_info().currsize == 1
    assert np.allclose(compiled, expected, rtol=0, atol=1e-9) and compiled.std() > 0


def _candidates_and_ranker(users: int = 40, per_user: int = 12):
    rng = np.random.default_rng(5)
    n = users * per_user
    frame = pd.DataFrame(rng.uniform(0, 1, (n, len(RANKER_FEATURES))), columns=RANKER_FEATURES)
    frame.loc[rng.random(n) < 0.2, "ui_hours_since_touch"] = np.nan  # missing values reach the scorer as NaN
    frame["ui_views"] = rng.integers(0, 4, n).astype(float)
    frame["ui_purchases"] = (rng.random(n) < 0.1).astype(float)
    frame["popular_rank"] = np.where(rng.random(n) < 0.5, rng.integers(1, 30, n), 999).astype(float)
    frame = frame.assign(
        as_of_date=pd.Timestamp("2025-03-01").date(),
        user_id=[f"u{i // per_user:03d}" for i in range(n)],
        item_id=[f"i{rng.integers(0, 10_000)}_{i}" for i in range(n)],
        category_id=[f"c{c}" for c in rng.integers(0, 4, n)],
        source=rng.choice(["recent", "covis", "category", "popular"], n),
    )
    # the features read from user_features are the user's, whichever item: the first row of each user's
    user = frame.groupby("user_id")
    frame["user_events_7d"] = user["user_events_7d"].transform("first")
    frame["user_hours_since_last_event"] = user["user_hours_since_last_event"].transform("first")
    frame["mean_price_7d"] = user["price_vs_user_mean"].transform("first") + 0.5
    frame["price_vs_user_mean"] = frame["item_price"] / frame["mean_price_7d"]
    label = (frame["ui_views"] + frame["recent_score"] > 2).astype(int)
    params = {"objective": "lambdarank", "num_leaves": 7, "verbosity": -1, "seed": 1, "deterministic": True}
    booster = lgb.train(params, lgb.Dataset(frame[RANKER_FEATURES], label, group=[per_user] * users), 30)
    return frame, booster


def _store(conn, frame: pd.DataFrame) -> None:
    """The frame's rows as the warehouse holds them: narrow candidates, and the user and item features they are
    read with."""
    keys = ["as_of_date", "user_id", "item_id", "category_id", "source"]
    conn.execute("CREATE TABLE ranking_candidates AS SELECT * EXCLUDE (mean_price_7d) FROM frame")
    for column in JOINED_FEATURES:
        conn.execute(f"ALTER TABLE ranking_candidates DROP COLUMN {column}")
    assert sorted(c for c in conn.sql("FROM ranking_candidates").columns if c not in keys) == sorted(CANDIDATE_FEATURES)
    conn.execute(
        """CREATE TABLE user_features AS SELECT DISTINCT as_of_date, user_id, user_events_7d AS events_7d,
           user_hours_since_last_event AS hours_since_last_event, mean_price_7d FROM frame"""
    )
    conn.execute(
        f"CREATE TABLE item_features AS SELECT as_of_date, item_id, {', '.join(ITEM_FEATURE_COLUMNS)} FROM frame"
    )


def test_a_day_scored_in_batches_of_users_gives_the_rows_of_one_batch():
    frame, booster = _candidates_and_ranker()
    users = pd.Series(sorted(frame["user_id"].unique())[:-3] + ["u_without_candidates"])
    with duckdb.connect() as conn:
        _store(conn, frame)
        day = frame["as_of_date"].iloc[0]
        whole = list(serving.recommend_day(conn, booster, day, k=5, users=users, batch_users=1000))
        batches = list(serving.recommend_day(conn, booster, day, k=5, users=users, batch_users=7))
    assert len(whole) == 1 and len(batches) == 6
    assert all(b.to_pandas()["user_id"].isin(users[i * 7 : (i + 1) * 7]).all() for i, b in enumerate(batches))
    whole, batched = whole[0].to_pandas(), pa.concat_tables(batches).to_pandas()
    pd.testing.assert_frame_equal(batched, whole)
    assert whole["as_of_date"].eq(day).all()
    assert (
        set(whole["user_id"]) == set(users) - {"u_without_candidates"} and whole.groupby("user_id").size().eq(5).all()
    )
    from_frame = serving.recommend(booster, frame, users, k=5).to_pandas()
    pd.testing.assert_frame_equal(whole.drop(columns="as_of_date"), from_frame)


def test_a_consumer_that_fails_mid_day_leaves_no_read_running(monkeypatch):
    """The next batch is read while one is scored, but no read runs once a batch is yielded: a consumer that fails
    while it writes a batch keeps its own error, and the connection closes (under a running read on its cursor,
    DuckDB refuses to close it)."""
    frame, booster = _candidates_and_ranker()
    users = pd.Series(sorted(frame["user_id"].unique()))
    slow = serving.scoring_sql  # each read takes a moment, so a read left running would still run
    monkeypatch.setattr(
        serving, "scoring_sql", lambda r: f"{slow(r)} WHERE (SELECT sum(i) FROM range(20000000) t(i)) > 0"
    )
    conn = duckdb.connect(config={"threads": 1})
    _store(conn, frame)
    batches = serving.recommend_day(conn, booster, frame["as_of_date"].iloc[0], k=5, users=users, batch_users=7)
    with pytest.raises(OSError, match="disk full"):
        for i, _ in enumerate(batches):
            if i == 1:
                raise OSError("disk full")
    conn.close()
    batches.close()


def test_batches_are_read_through_the_connections_temporary_views():
    """The next batch is read on a cursor of its own: on a spark home the daily tables are temporary views of the
    connection (over the lake), which a bare cursor does not see; here they hide empty tables of the same names."""
    frame, booster = _candidates_and_ranker()
    users = pd.Series(sorted(frame["user_id"].unique()))
    day = frame["as_of_date"].iloc[0]
    with duckdb.connect() as stored:
        _store(stored, frame)
        want = pa.concat_tables(serving.recommend_day(stored, booster, day, k=5, users=users, batch_users=7))
    with duckdb.connect() as conn:
        _store(conn, frame)
        for table in ("ranking_candidates", "user_features", "item_features"):
            conn.execute(f"ALTER TABLE {table} RENAME TO lake_{table}")
            conn.execute(f"CREATE TABLE {table} AS FROM lake_{table} LIMIT 0")
            conn.execute(f"CREATE TEMP VIEW {table} AS FROM lake_{table}")
        got = pa.concat_tables(serving.recommend_day(conn, booster, day, k=5, users=users, batch_users=7))
    assert len(got) == 5 * len(users) and got.equals(want)


def test_reasons_and_scores_follow_their_rows_across_chunks():
    frame, booster = _candidates_and_ranker()
    users = pd.Series(sorted(frame["user_id"].unique()))
    with duckdb.connect() as conn:
        batch = conn.sql(serving.scoring_sql("frame")).to_arrow_table()
    n = len(batch)
    chunked = pa.concat_tables([batch.slice(0, n // 3), batch.slice(n // 3, n // 3), batch.slice(2 * (n // 3))])
    assert chunked.column("features").num_chunks == 3
    recs = serving.recommend_scored(
        booster, chunked, users, k=5, rules=BusinessRules(exclude_purchased=False, min_items=0)
    ).to_pandas()
    rows = frame.set_index(["user_id", "item_id"]).loc[list(zip(recs["user_id"], recs["item_id"]))]
    assert np.allclose(recs["score"].to_numpy(), booster.predict(rows[RANKER_FEATURES]), rtol=0, atol=1e-12)
    assert recs["reason"].tolist() == reasons(booster, rows).tolist()
    assert recs.equals(
        serving.recommend_scored(
            booster, batch, users, k=5, rules=BusinessRules(exclude_purchased=False, min_items=0)
        ).to_pandas()
    )


def test_a_list_filled_from_popular_items_says_so():
    frame, booster = _candidates_and_ranker()
    users = pd.Series(sorted(frame["user_id"].unique()))
    recs = serving.recommend(booster, frame, users, k=6, rules=BusinessRules(max_per_category=1)).to_pandas()
    filled = recs["source"].eq("fallback")
    assert filled.any()  # 4 categories, one item each, then the popular items fill the list
    assert recs.loc[filled, "reason"].eq(serving.FALLBACK_REASON).all()
    assert not recs.loc[~filled, "reason"].isin([serving.FALLBACK_REASON]).any() and recs["reason"].notna().all()


def test_string_codes_order_rows_as_their_strings_a_null_last_without_a_warning():
    import warnings

    from assets.logic.serving import _codes

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pyarrow 25 deprecated rank's null_placement: a warning on every predict
        _, place = _codes(pa.chunked_array([["b", None], ["a", "b"]]))
    assert place.tolist() == [2, 3, 1, 2]
