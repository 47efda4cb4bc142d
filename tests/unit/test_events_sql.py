import datetime as dt

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from assets.logic.events import clean_day, cleaning_counts, load_raw_day
from assets.logic.features import build_user_features_day

DAY = dt.date(2025, 3, 2)


def _row(t, user="u1", etype="view", item="i1", price=1.0, event_id=None, session=None):
    return {
        "event_time": pd.Timestamp(t),
        "user_id": user,
        "session_id": session,
        "event_type": etype,
        "item_id": item,
        "category_id": "c1",
        "price": price,
        "query": None,
        "event_id": event_id,
    }


@pytest.fixture
def conn():
    c = duckdb.connect()
    yield c
    c.close()


def _landing(tmp_path, rows, name="events.parquet"):
    path = tmp_path / name
    pd.DataFrame(rows).to_parquet(path, index=False)
    return [str(path)]


BAD_ROWS = [
    (_row("2025-03-02 10:00", user=None, event_id="a"), "missing_user"),
    (_row("2025-03-02 10:01", user="  ", event_id="b"), "missing_user"),
    (_row("2025-03-02 10:02", etype="teleport", event_id="c"), "unknown_event_type"),
    (_row("2025-03-02 10:03", item=None, event_id="d"), "missing_item"),
    (_row("2025-03-01 23:59", event_id="e"), "late_event"),
    (_row("2025-03-03 00:00", event_id="f"), "out_of_partition"),
    (_row("2025-03-02 10:04", price=-3.0, event_id="g"), "negative_price"),
    (_row("2025-03-02 10:06", price=float("inf"), event_id="i"), "bad_price"),
    (_row("2025-03-02 10:07", price=1e12, event_id="j"), "bad_price"),
]


def test_every_row_is_accepted_or_quarantined_with_its_reason(conn, tmp_path):
    good = [
        _row("2025-03-02 09:00", event_id="ok1"),
        _row("2025-03-02 09:05", etype=" Purchase ", event_id="ok2"),
        _row("2025-03-02 09:06", etype="search", item=None, event_id="ok3"),
    ]
    dup = _row("2025-03-02 09:00", event_id="ok1")
    files = _landing(tmp_path, good + [dup] + [r for r, _ in BAD_ROWS])
    counts = load_raw_day(conn, files, DAY)
    assert counts["read"] == 13 and counts["accepted"] == 3 and counts["quarantined"] == 10
    reasons = dict(conn.execute("SELECT reason, count(*) FROM raw_events_quarantine GROUP BY 1").fetchall())
    expected = pd.Series([r for _, r in BAD_ROWS] + ["exact_duplicate"]).value_counts().to_dict()
    assert reasons == expected
    q = conn.execute(
        "SELECT source_line, raw FROM raw_events_quarantine WHERE reason = 'unknown_event_type'"
    ).fetchone()
    assert q[0] == 7 and '"teleport"' in q[1]  # 1-based line in the file, raw text kept
    assert conn.execute("SELECT event_type FROM raw_events WHERE event_id = 'ok2'").fetchone()[0] == "purchase"


def test_exact_duplicates_keep_the_first_copy_across_files_and_only_identical_rows_count(conn, tmp_path):
    row = _row("2025-03-02 09:00", event_id=None)  # null event id, session and query: nulls compare equal
    first = _landing(tmp_path, [row, row, _row("2025-03-02 09:00", event_id=None, price=2.0)], "a.parquet")
    second = _landing(tmp_path, [row, _row("2025-03-02 09:01", event_id=None)], "b.parquet")
    counts = load_raw_day(conn, first + second, DAY)
    assert counts["read"] == 5 and counts["accepted"] == 3 and counts["exact_duplicate"] == 2
    copies = conn.execute(
        "SELECT source_file, source_line FROM raw_events_quarantine WHERE reason = 'exact_duplicate' ORDER BY ALL"
    ).fetchall()
    assert [(f.rsplit("/", 1)[1], line) for f, line in copies] == [("a.parquet", 2), ("b.parquet", 1)]
    kept = conn.execute("SELECT source_file, source_line, price FROM raw_events ORDER BY ALL").fetchall()
    assert [(f.rsplit("/", 1)[1], line, price) for f, line, price in kept] == [
        ("a.parquet", 1, 1.0),
        ("a.parquet", 3, 2.0),
        ("b.parquet", 2, 1.0),
    ]


def test_reloading_a_day_replaces_it(conn, tmp_path):
    files = _landing(
        tmp_path, [_row("2025-03-02 09:00", event_id="x"), _row("2025-03-02 09:01", user=None, event_id="y")]
    )
    load_raw_day(conn, files, DAY)
    load_raw_day(conn, files, DAY)
    assert conn.execute("SELECT count(*) FROM raw_events").fetchone()[0] == 1
    assert conn.execute("SELECT count(*) FROM raw_events_quarantine").fetchone()[0] == 1


def test_cleaning_dedups_ids_derives_sessions_and_flags_bots(conn, tmp_path):
    rows = [
        _row("2025-03-02 09:00", event_id="e1"),
        _row("2025-03-02 09:10", event_id="e1", item="i2"),  # same id, other content: the earliest wins
        _row("2025-03-02 09:20", event_id="e2"),
        _row("2025-03-02 11:00", event_id="e3"),  # > 30 min gap: new session
        _row("2025-03-02 11:00", user="given", session="S9", event_id="e4"),
    ] + [_row(f"2025-03-02 12:{i:02d}", user="bot", event_id=f"b{i}") for i in range(5)]
    load_raw_day(conn, _landing(tmp_path, rows), DAY)
    counts = cleaning_counts(conn, DAY, clean_day(conn, DAY, bot_events_per_day=4))
    assert counts == {"raw": 10, "cleaned": 9, "duplicates_removed": 1, "bot_users": 1}
    u1 = conn.execute(
        "SELECT event_id, item_id, session_id FROM cleaned_events WHERE user_id = 'u1' ORDER BY event_time"
    ).fetchall()
    assert [r[0] for r in u1] == ["e1", "e2", "e3"] and u1[0][1] == "i1"
    assert u1[0][2] == u1[1][2] != u1[2][2]
    assert conn.execute("SELECT session_id FROM cleaned_events WHERE event_id = 'e4'").fetchone()[0] == "S9"
    assert conn.execute("SELECT bool_and(is_bot) FROM cleaned_events WHERE user_id = 'bot'").fetchone()[0]


def test_an_event_id_is_unique_within_its_day_and_kept_on_each_day_it_occurs(conn, tmp_path):
    """An id on two days is kept on both (each day's rows depend on its own landing files only); a repeated id
    within a day keeps the earliest. The rows of a day do not depend on whether the other day is loaded."""
    next_day = DAY + dt.timedelta(days=1)
    first = _landing(
        tmp_path,
        [
            _row("2025-03-02 09:00", event_id="r1"),
            _row("2025-03-02 09:10", event_id="r1", item="i2"),
            _row("2025-03-02 09:20", event_id="s1"),
        ],
        "first.parquet",
    )
    second = _landing(
        tmp_path,
        [_row("2025-03-03 08:00", event_id="r1", item="i3"), _row("2025-03-03 08:05", event_id="s2")],
        "second.parquet",
    )
    load_raw_day(conn, second, next_day)
    assert clean_day(conn, next_day, 1000) == 2
    alone = conn.execute("SELECT * FROM cleaned_events ORDER BY ALL").df()
    load_raw_day(conn, first, DAY)
    counts = cleaning_counts(conn, DAY, clean_day(conn, DAY, 1000))
    assert counts == {"raw": 3, "cleaned": 2, "duplicates_removed": 1, "bot_users": 0}
    assert clean_day(conn, next_day, 1000) == 2  # re-run with its neighbour loaded: the same rows
    rows = conn.execute(
        "SELECT CAST(event_time AS DATE), event_id, item_id FROM cleaned_events ORDER BY ALL"
    ).fetchall()
    assert rows == [(DAY, "r1", "i1"), (DAY, "s1", "i1"), (next_day, "r1", "i3"), (next_day, "s2", "i1")]
    again = conn.execute("SELECT * FROM cleaned_events WHERE event_time >= '2025-03-03' ORDER BY ALL").df()
    pd.testing.assert_frame_equal(again, alone)


def test_features_as_of_a_day_ignore_later_events(conn, tmp_path):
    """Point in time: adding events after the cut-off changes no feature of that day."""
    base = [_row("2025-03-02 09:00", event_id="p1"), _row("2025-03-02 10:00", etype="add_to_cart", event_id="p2")]
    load_raw_day(conn, _landing(tmp_path, base), DAY)
    clean_day(conn, DAY, 1000)
    build_user_features_day(conn, DAY)
    before = conn.execute("SELECT * FROM user_features ORDER BY user_id").df()
    later = [_row("2025-03-03 08:00", etype="purchase", event_id="p3")]
    next_day = DAY + dt.timedelta(days=1)
    load_raw_day(conn, _landing(tmp_path, later, "later.parquet"), next_day)
    clean_day(conn, next_day, 1000)
    build_user_features_day(conn, DAY)
    after = conn.execute("SELECT * FROM user_features WHERE as_of_date = ? ORDER BY user_id", [DAY]).df()
    pd.testing.assert_frame_equal(before, after)
    assert before.loc[0, "carts_1d"] == 1 and before.loc[0, "purchases_28d"] == 0
    assert before.loc[0, "hours_since_last_event"] == pytest.approx(14.0)


def test_a_table_of_another_layout_is_refused_not_half_filled(conn):
    from assets.logic.warehouse_sql import SchemaChanged, ensure_table

    ensure_table(conn, "sessions")
    ensure_table(conn, "sessions")  # the same layout: nothing to do
    conn.execute("ALTER TABLE sessions DROP COLUMN converted")
    with pytest.raises(SchemaChanged, match=r"sessions .*missing columns \['converted'\]"):
        ensure_table(conn, "sessions")


def test_a_window_written_from_frames_is_replaced_whole_or_not_at_all(conn):
    from assets.logic.warehouse_sql import replace_window_from_frames

    conn.execute("CREATE TABLE t (day DATE, v INTEGER)")
    day = (DAY, DAY + dt.timedelta(days=1))
    replace_window_from_frames(conn, "t", "day", *day, [pd.DataFrame({"day": [DAY] * 3, "v": [1, 2, 3]})])
    made = []

    def batches(fail_after: int | None):
        for i in range(3):
            if i == fail_after:
                raise RuntimeError("scoring failed")
            made.append(i)
            assert conn.execute("SELECT count(*) FROM t WHERE v >= 10").fetchall() == [
                (10 * i,)
            ]  # the previous batch is in
            frame = pd.DataFrame({"day": [DAY] * 10, "v": range(10 * (i + 1), 10 * (i + 2))})
            yield pa.Table.from_pandas(frame) if i == 1 else frame  # an Arrow table or a pandas frame

    with pytest.raises(RuntimeError, match="scoring failed"):
        replace_window_from_frames(conn, "t", "day", *day, batches(fail_after=2))
    assert made == [0, 1] and conn.execute("SELECT list(v ORDER BY v) FROM t").fetchone()[0] == [1, 2, 3]
    assert replace_window_from_frames(conn, "t", "day", *day, batches(None)) == 30
    assert conn.execute("SELECT count(*), min(v) FROM t").fetchone() == (30, 10)


def _two_days(conn, tmp_path, rows_by_day):
    from assets.logic.candidates import build_candidates_day
    from assets.logic.features import build_item_features_day

    for i, (day, rows) in enumerate(rows_by_day.items()):
        load_raw_day(conn, _landing(tmp_path, rows, f"d{i}.parquet"), day)
        clean_day(conn, day, 1000)
        build_user_features_day(conn, day)
        build_item_features_day(conn, day)
        build_candidates_day(conn, day)


def test_category_affinity_is_the_users_weighted_share_of_the_candidates_category(conn, tmp_path):
    def event(t, user, etype, item, category, event_id):
        return {**_row(t, user=user, etype=etype, item=item, event_id=event_id), "category_id": category}

    rows = [event(f"2025-03-02 09:0{k}", "u1", "view", "i1", "c1", f"v{k}") for k in range(3)]  # weight 3 in c1
    rows += [
        event("2025-03-02 10:00", "u1", "add_to_cart", "i2", "c2", "cart"),  # weight 4 in c2
        event("2025-03-02 10:05", "u1", "remove_from_cart", "i3", "c3", "remove"),  # negative: counts 0 in c3
        event("2025-03-02 11:00", "u2", "view", "i4", "c4", "other"),
    ]
    _two_days(conn, tmp_path, {DAY: rows})
    affinity = {
        (u, i): a
        for u, i, a in conn.execute("SELECT user_id, item_id, category_affinity FROM ranking_candidates").fetchall()
    }
    assert affinity[("u1", "i1")] == pytest.approx(3 / 7) and affinity[("u1", "i2")] == pytest.approx(4 / 7)
    assert (
        affinity[("u1", "i3")] == 0 and affinity[("u1", "i4")] == 0
    )  # i4: a popular item of a category u1 never touched
    assert affinity[("u2", "i4")] == 1 and affinity[("u2", "i1")] == 0


def test_training_sets_read_features_before_the_cutoff_and_labels_only_from_the_next_day(conn, tmp_path):
    from assets.logic import training

    d1, d2, d3 = DAY, DAY + dt.timedelta(days=1), DAY + dt.timedelta(days=2)
    _two_days(
        conn,
        tmp_path,
        {
            d1: [
                _row("2025-03-02 09:00", item="a", event_id="1"),
                _row("2025-03-02 23:59:59", user="u2", item="b", event_id="2"),
            ],
            d2: [
                _row("2025-03-03 00:00", etype="purchase", item="a", event_id="3"),
                _row("2025-03-03 12:00", user="u2", item="c", event_id="4"),
            ],
            d3: [_row("2025-03-04 10:00", etype="purchase", user="u2", item="b", event_id="5")],
        },
    )
    frame = training.next_action_frame(conn, [d1, d2], "UTC")
    assert (frame["last_event_time"] < frame["cutoff"]).all()
    labels = frame.set_index(["as_of_date", "user_id"])["label_purchase"]
    # u1 buys at the very first instant of D + 1: a label of D, never a feature of D.
    assert labels[(pd.Timestamp(d1), "u1")] == 1 and labels[(pd.Timestamp(d1), "u2")] == 0
    assert labels[(pd.Timestamp(d2), "u2")] == 1  # the purchase on D + 2 labels the cut-off D + 1 only
    ranker = training.ranker_frame(conn, [d1], positives_only=False, tz="UTC")
    assert set(ranker.loc[ranker["relevance"] > 0, "item_id"]) == {"a"}


def test_markov_baseline_and_holdout_segments(conn, tmp_path):
    from assets.logic import training

    d1, d2 = DAY, DAY + dt.timedelta(days=1)
    _two_days(
        conn,
        tmp_path,
        {
            d1: [
                _row("2025-03-02 09:00", user="u1", item="a", event_id="1"),
                _row("2025-03-02 09:01", user="u1", item="b", event_id="2"),
                _row("2025-03-02 10:00", user="u2", item="a", event_id="3"),
                _row("2025-03-02 10:01", user="u2", item="b", event_id="4"),
                _row("2025-03-02 11:00", user="u3", item="c", event_id="5"),
                _row("2025-03-02 11:01", user="u3", item="a", event_id="6"),
            ],
            d2: [
                _row("2025-03-03 09:00", user="u3", item="b", event_id="7"),
                _row("2025-03-03 09:05", user="u3", item="z", event_id="8"),
            ],
        },
    )
    markov = training.markov_recommendations(conn, d1, ["u3"], 20)
    assert markov.values.tolist() == [["u3", "b", 2]]  # u3 ended on a; a -> b twice
    targets = training.holdout_targets(conn, d1, "UTC").set_index("item_id")
    # b was first seen the day before the targets: cold, and reachable; z never before them: unseen, not cold
    assert targets["cold_item"].to_dict() == {"b": True, "z": False}
    assert targets["unseen_item"].to_dict() == {"b": False, "z": True}
    assert targets["new_user"].all()  # u3's history is the one day before the targets


def _cold_shop(conn, tmp_path):
    """o: an old item of c1 (first seen on d1); n: a new one (first seen on d4, carted); x: new in c2, which u1 never
    browses; late: first seen on d5, after the cut-off of d4. u1 browses c1."""
    d1, d4, d5 = DAY, DAY + dt.timedelta(days=3), DAY + dt.timedelta(days=4)

    def event(t, user, etype, item, category, event_id):
        return {**_row(t, user=user, etype=etype, item=item, event_id=event_id), "category_id": category}

    _two_days(
        conn,
        tmp_path,
        {
            d1: [
                event("2025-03-02 09:00", "u1", "view", "o", "c1", "1"),
                event("2025-03-02 09:01", "u1", "view", "a", "c1", "2"),
            ],
            d4: [
                event("2025-03-05 10:00", "u2", "view", "n", "c1", "3"),
                event("2025-03-05 10:01", "u2", "add_to_cart", "n", "c1", "4"),
                event("2025-03-05 11:00", "u3", "view", "x", "c2", "6"),
                event("2025-03-05 12:00", "u1", "view", "a", "c1", "7"),
            ],
            d5: [
                event("2025-03-06 08:00", "u3", "view", "late", "c1", "8"),
                event("2025-03-06 09:00", "u1", "view", "n", "c1", "9"),
                event("2025-03-06 09:01", "u1", "view", "late", "c1", "10"),
                event("2025-03-06 09:02", "u1", "view", "o", "c1", "11"),
            ],
        },
    )
    return d4, d5


def test_new_arrivals_of_a_browsed_category_are_proposed_and_never_an_item_first_seen_after_the_cutoff(conn, tmp_path):
    d4, d5 = _cold_shop(conn, tmp_path)
    new = conn.execute(
        "SELECT as_of_date, user_id, item_id, source FROM ranking_candidates WHERE in_new = 1 ORDER BY ALL"
    ).df()
    as_of = {day: set(zip(rows["user_id"], rows["item_id"])) for day, rows in new.groupby(new["as_of_date"].dt.date)}
    assert ("u1", "n") in as_of[d4]  # new in c1, which u1 browses, though u1 never touched it
    assert ("u1", "x") not in as_of[d4]  # new, but in a category u1 does not browse
    assert not any(item == "o" for _, item in as_of[d4] | as_of[d5])  # first seen more than COLD_ITEM_DAYS before
    assert new.loc[
        new["item_id"].eq("n") & new["user_id"].eq("u1") & new["as_of_date"].eq(pd.Timestamp(d4)), "source"
    ].tolist() == ["new"]
    seen_d4 = conn.execute(
        "SELECT count(*) FROM ranking_candidates WHERE as_of_date = ? AND item_id = 'late'", [d4]
    ).fetchone()[0]
    assert seen_d4 == 0 and ("u1", "late") in as_of[d5]  # proposed only once it has been seen before a cut-off


def test_cold_item_segment_is_the_items_first_seen_shortly_before_the_cutoff_and_the_new_source_reaches_it(
    conn, tmp_path
):
    from assets.logic import training
    from assets.logic.candidates import candidate_recall

    d4, _ = _cold_shop(conn, tmp_path)
    targets = training.holdout_targets(conn, d4, "UTC").set_index(["user_id", "item_id"])
    assert targets["cold_item"].to_dict() == {
        ("u1", "late"): False,
        ("u1", "n"): True,
        ("u1", "o"): False,
        ("u3", "late"): False,
    }
    assert targets["unseen_item"].to_dict() == {
        ("u1", "late"): True,
        ("u1", "n"): False,
        ("u1", "o"): False,
        ("u3", "late"): True,
    }
    recall = candidate_recall(conn, d4, "UTC")
    assert recall.loc["targets", "cold_found"] == 1 and recall.loc["new", "cold_found"] == 1
    assert recall.loc["unseen", "found"] == 2 and recall.loc["union", "found"] <= 2


def test_search_features_follow_the_session_and_stop_at_the_cutoff(conn, tmp_path):
    rows = [
        _row("2025-03-02 09:00", etype="search", item=None, session="s1", event_id="1"),
        {**_row("2025-03-02 09:01", session="s1", event_id="2"), "category_id": "c2"},  # the search led to c2
        _row("2025-03-02 10:00", etype="search", item=None, session="s2", event_id="3"),  # abandoned search
        _row("2025-03-02 23:59:59", etype="search", item=None, session="s3", event_id="4"),  # last event of the day
    ]
    load_raw_day(conn, _landing(tmp_path, rows), DAY)
    clean_day(conn, DAY, 1000)
    nxt = DAY + dt.timedelta(days=1)
    load_raw_day(conn, _landing(tmp_path, [_row("2025-03-03 00:00:01", session="s3", event_id="5")], "n.parquet"), nxt)
    clean_day(conn, nxt, 1000)  # the view that answers search 4 comes after the cut-off: it must not count
    build_user_features_day(conn, DAY)
    f = conn.execute("SELECT * FROM user_features WHERE as_of_date = ?", [DAY]).df().iloc[0]
    assert (f["searches_without_view_7d"], f["search_led_categories_7d"], f["last_event_is_search"]) == (2, 1, 1)


def test_events_at_the_same_time_share_their_session(conn, tmp_path):
    rows = [
        _row("2025-03-02 09:00", event_id="z1"),
        _row("2025-03-02 10:00", event_id="b2"),
        _row("2025-03-02 10:00", event_id="a3", item="i2"),
        _row("2025-03-02 10:20", event_id="c4"),
        _row("2025-03-02 11:00", event_id="d5"),
        _row("2025-03-02 11:00", event_id="e6"),
    ]
    load_raw_day(conn, _landing(tmp_path, rows), DAY)
    clean_day(conn, DAY, bot_events_per_day=100)
    sessions = dict(conn.execute("SELECT event_id, session_id FROM cleaned_events").fetchall())
    assert sessions["z1"] != sessions["b2"] == sessions["a3"] == sessions["c4"] != sessions["d5"] == sessions["e6"]
    assert sorted(set(sessions.values())) == ["u1-20250302-1", "u1-20250302-2", "u1-20250302-3"]


def test_a_nan_price_is_quarantined_not_averaged(conn, tmp_path):
    """NaN (which pandas would write as null) straight from Arrow, as DuckDB writes a canonical file's 'nan'."""
    rows = [
        _row("2025-03-02 09:00", price=2.0, event_id="a"),
        _row("2025-03-02 09:01", price=float("nan"), event_id="b"),
    ]
    frame = pd.DataFrame(rows)
    table = pa.table({c: pa.array(frame[c], from_pandas=c != "price") for c in frame.columns})
    path = tmp_path / "nan.parquet"
    pq.write_table(table, path)
    counts = load_raw_day(conn, [str(path)], DAY)
    assert counts["accepted"] == 1 and counts.get("bad_price") == 1


def test_a_cut_offs_next_day_is_the_shops_calendar_day_across_a_clock_change():
    """One definition of "the next day" (``day_bounds``): in Berlin, 30 March 2025 has 23 hours, so the event at
    00:30 on 31 March (22:30 UTC on the 30th, within 24 hours of the cut-off) labels the 30th's cut-off, not the
    29th's."""
    from assets.logic import training
    from assets.logic.warehouse_sql import ensure_table

    conn = duckdb.connect()
    ensure_table(conn, "cleaned_events")
    rows = [("2025-03-30 21:30:00", "a"), ("2025-03-30 22:30:00", "b")]  # UTC: 23:30 on the 30th, 00:30 on the 31st
    for i, (utc, user) in enumerate(rows):
        conn.execute(
            "INSERT INTO cleaned_events VALUES (CAST(? AS TIMESTAMP), ?, 's', 'view', 'i', 'c', 1.0, NULL, ?, false)",
            [utc, user, f"e{i}"],
        )
    conn.execute(
        "CREATE TABLE user_features AS SELECT CAST(d AS DATE) AS as_of_date, u AS user_id "
        "FROM (VALUES ('2025-03-29', 'a'), ('2025-03-29', 'b'), ('2025-03-30', 'a'), ('2025-03-30', 'b')) t(d, u)"
    )
    day = dt.date(2025, 3, 29)
    frame = training.next_action_frame(conn, [day, day + dt.timedelta(days=1)], "Europe/Berlin")
    labels = {(r.as_of_date.date(), r.user_id): r.label_return for r in frame.itertuples()}
    assert labels == {
        (day, "a"): 1,
        (day, "b"): 0,
        (day + dt.timedelta(days=1), "a"): 0,
        (day + dt.timedelta(days=1), "b"): 1,
    }


def test_fetch_frame_gives_what_duckdb_df_gives():
    from assets.logic import warehouse_sql

    conn = duckdb.connect()
    conn.execute("CREATE TYPE mood AS ENUM ('calm', 'busy')")
    conn.execute(
        """CREATE TABLE t AS SELECT * FROM (VALUES
           (1, 1::INTEGER, 'a', 1.5::DOUBLE, DATE '2025-03-01', TIMESTAMP '2025-03-01 10:00:00.123456', true,
            10::HUGEINT, [1, 2], 1.25::DECIMAL(10, 2), 3::TINYINT, 2.5::FLOAT,
            'c5d3bb6e-6b2f-4f7b-8a55-0f2f0d3c2a11'::UUID, 'calm'::mood, TIMESTAMPTZ '2025-03-01 10:00:00+00',
            TIMESTAMP_NS '2025-03-01 10:00:00.123456789'),
           (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)
        ) v(k, nullable_int, s, f, d, ts, b, h, l, dec, ti, fl, u, m, tz, ns)"""
    )
    queries = [
        "SELECT * FROM t ORDER BY k",
        "SELECT * FROM t WHERE k = $k",
        "SELECT k, s, f, d, ts, fl, ns FROM t ORDER BY k",  # converted by Arrow alone
        "SELECT k, b, ti FROM t WHERE k = 1",
        "SELECT k, s FROM t WHERE false",
    ] + [f"SELECT k, {column} FROM t ORDER BY k" for column in ("nullable_int", "b", "h", "l", "dec", "u", "m", "tz")]
    for query in queries:
        params = {"k": 1} if "$k" in query else None
        expected = conn.execute(query, params or {}).df()
        got = warehouse_sql.fetch_frame(conn, query, params)
        assert list(got.dtypes) == list(expected.dtypes) and got.equals(expected), query
        assert [type(v) for v in got.iloc[0]] == [type(v) for v in expected.iloc[0]] if len(got) else True, query
    # Arrow converts strings, floats, dates, timestamps and integers and booleans without NULLs itself
    relation = conn.sql("SELECT s, f, d, ts, fl, ns, k, nullable_int, b, u, m, h, tz FROM t")
    columns = relation.to_arrow_table().columns
    alike = [warehouse_sql._converts_alike(str(kind), c) for kind, c in zip(relation.types, columns, strict=True)]
    assert alike == [True, True, True, True, True, True, True, False, False, False, False, False, False]
