import datetime as dt
import math

import duckdb
import numpy as np
import pandas as pd
import pytest

from assets.logic import session_model as sm
from assets.logic.policies import RulePolicy
from assets.logic.training import LightGBMParams

DAY = dt.datetime(2025, 5, 1)
PARAMS = LightGBMParams(num_boost_round=30, early_stopping_rounds=5, num_leaves=7, min_data_in_leaf=5)


def _warehouse(events: list[tuple[str, str, dt.datetime]]) -> duckdb.DuckDBPyConnection:
    """A fresh in-memory warehouse whose ``cleaned_events`` holds ``(session, item, time)`` clicks."""
    conn = duckdb.connect()
    frame = pd.DataFrame(events, columns=["session_id", "item_id", "event_time"])
    frame = frame.assign(
        user_id="s" + frame["session_id"],
        event_type="view",
        category_id=None,
        price=np.nan,
        query=None,
        event_id=[f"e{i:06d}" for i in range(len(frame))],
        is_bot=False,
    )
    conn.register("incoming", frame)
    conn.execute(
        "CREATE TABLE cleaned_events AS SELECT CAST(event_time AS TIMESTAMP) AS event_time, user_id, session_id, "
        "event_type, item_id, CAST(category_id AS VARCHAR) AS category_id, price, CAST(query AS VARCHAR) AS query, "
        "event_id, is_bot FROM incoming"
    )
    conn.unregister("incoming")
    return conn


def _random_log(seed: int = 0, days: int = 4, sessions_per_day: int = 60, items: int = 30) -> list[tuple]:
    """Sessions that walk a ring of items (mostly one or two steps on, sometimes back to an earlier item), so
    that rules and neighbours have something to find."""
    rng = np.random.default_rng(seed)
    events = []
    for day in range(days):
        for s in range(sessions_per_day):
            t = DAY + dt.timedelta(days=day, hours=float(rng.uniform(0, 22)))
            item, seen = int(rng.integers(items)), []
            for _ in range(int(rng.integers(2, 8))):
                events.append((f"{day}-{s}", f"i{item:02d}", t))
                seen.append(item)
                t += dt.timedelta(seconds=float(rng.integers(5, 300)))
                step = rng.random()
                item = seen[int(rng.integers(len(seen)))] if step < 0.2 else (item + (1 if step < 0.7 else 2)) % items
    return events


def _window(day: int) -> tuple[dt.datetime, dt.datetime]:
    return DAY + dt.timedelta(days=day), DAY + dt.timedelta(days=day + 1)


def test_a_prefix_reads_neither_its_later_events_nor_any_item_side_event_at_or_after_the_cutoff():
    events = _random_log()
    start, end = _window(3)
    before = sm.session_frame(_warehouse(events), start, end, positives_only=False)
    # a session of the target day with at least 4 events: its prefix of length 2 must not see events 4 and on
    session = next(
        s for s in sorted({e[0] for e in events if e[0].startswith("3-")}) if sum(e[0] == s for e in events) >= 4
    )
    own = [e for e in events if e[0] == session]
    later = {id(e) for e in own[3:]}
    altered = [
        (s, "i29" if id(e) in later else i, t + dt.timedelta(hours=1) if id(e) in later else t)
        for e in events
        for s, i, t in [e]
    ]
    # and new sessions at and after the cut-off that would change every rule and neighbour if the item side read them
    altered += [
        (f"late-{n}", f"i{(n * 7 + k) % 30:02d}", start + dt.timedelta(minutes=n, seconds=k))
        for n in range(50)
        for k in range(5)
    ]
    after = sm.session_frame(_warehouse(altered), start, end, positives_only=False)
    for position in (1, 2):
        prefix = f"s{session}/{session}/{position}"
        a = before[before["prefix_id"] == prefix].reset_index(drop=True)
        b = after[after["prefix_id"] == prefix].reset_index(drop=True)
        assert len(a) > 0
        pd.testing.assert_frame_equal(a, b)
    # every prefix of the original sessions keeps its candidates and features: the new sessions changed nothing
    kept = after[after["prefix_id"].isin(before["prefix_id"]) & ~after["session_id"].eq(session)].reset_index(drop=True)
    pd.testing.assert_frame_equal(before[~before["session_id"].eq(session)].reset_index(drop=True), kept)
    assert set(after["session_id"]) - set(before["session_id"])  # the new sessions were there to be read


def test_session_targets_remove_unseen_items_drop_short_sessions_and_keep_every_position():
    t0, t1 = DAY + dt.timedelta(hours=8), DAY + dt.timedelta(days=1, hours=8)
    m = lambda base, n: base + dt.timedelta(minutes=n)  # noqa: E731
    events = [
        ("A", "a", m(t0, 0)),
        ("A", "b", m(t0, 1)),
        ("A", "c", m(t0, 2)),
        ("B", "b", m(t0, 10)),
        ("B", "c", m(t0, 11)),
        # started the day before: it belongs to that day (sessions belong to the day they start)
        ("F", "a", DAY + dt.timedelta(hours=23, minutes=55)),
        ("F", "b", DAY + dt.timedelta(days=1, minutes=5)),
        # starts on the target day and runs past its end: evaluated whole
        ("H", "a", DAY + dt.timedelta(days=1, hours=23, minutes=55)),
        ("H", "b", DAY + dt.timedelta(days=2, minutes=5)),
        ("C", "a", m(t1, 0)),
        ("C", "new", m(t1, 1)),
        ("C", "b", m(t1, 2)),
        ("C", "c", m(t1, 3)),
        ("C", "c", m(t1, 4)),
        ("D", "new", m(t1, 10)),
        ("D", "a", m(t1, 11)),  # one known event left: dropped
        ("E", "c", m(t1, 20)),  # one event: dropped
        ("G", "a", DAY + dt.timedelta(days=2, minutes=1)),  # after the window
    ]
    conn = _warehouse(events)
    targets = sm.session_targets(conn, *_window(1))
    got = set(zip(targets["prefix_id"], targets["position"], targets["item_id"]))
    assert got == {("sC/C/1", 1, "b"), ("sC/C/2", 2, "c"), ("sC/C/3", 3, "c"), ("sH/H/1", 1, "b")}
    frame = sm.session_frame(conn, *_window(1), positives_only=False)
    assert list(frame.columns) == [
        "prefix_id",
        "session_id",
        "user_id",
        "position",
        "prefix_time",
        "item_id",
        "relevance",
        "source",
        *sm.SESSION_FEATURES[1:],
        "catalogue_items",
        "cutoff",
        "window_end",
    ]
    assert sm.SESSION_FEATURES[0] == "position"
    assert frame.equals(frame.sort_values(["prefix_id", "item_id"]))
    assert set(frame["prefix_id"]) == set(targets["prefix_id"])
    positives = frame[frame["relevance"] == 1]
    assert set(zip(positives["prefix_id"], positives["item_id"])) <= {(p, i) for p, _, i in got}
    assert not frame["item_id"].eq("new").any()


def test_sequential_rules_and_markov_match_a_hand_computation():
    t = lambda h, n: DAY + dt.timedelta(hours=h, minutes=n)  # noqa: E731
    events = [
        ("1", "a", t(1, 0)),
        ("1", "b", t(1, 1)),
        ("1", "c", t(1, 2)),
        ("1", "a", t(1, 3)),
        ("2", "a", t(2, 0)),
        ("2", "c", t(2, 1)),
        ("3", "b", t(3, 0)),
        ("3", "a", t(3, 1)),
        ("3", "c", t(3, 2)),
        ("T", "a", t(30, 0)),
        ("T", "c", t(30, 1)),
    ]
    frame = sm.session_frame(_warehouse(events), *_window(1), positives_only=False).set_index("item_id")
    # pairs within 10 steps weighted 1 / gap, from a: session 1 gives b 1, c 1/2, a 1/3; session 2 c 1; session 3 c 1
    assert frame.loc["c", "sr_score"] == pytest.approx(2.5)
    assert frame.loc["b", "sr_score"] == pytest.approx(1.0)
    assert frame.loc["a", "sr_score"] == pytest.approx(1 / 3)
    assert frame.loc[["c", "b", "a"], "sr_rank"].tolist() == [1, 2, 3]
    # a directly followed by: b once (session 1), c twice (sessions 2 and 3)
    assert frame.loc["c", "markov_score"] == 2 and frame.loc["b", "markov_score"] == 1
    assert frame.loc["c", "markov_share"] == pytest.approx(2 / 3)
    assert frame.loc["c", "relevance"] == 1 and frame["relevance"].sum() == 1
    assert frame.loc["a", "is_last_item"] == 1 and frame.loc["a", "in_session"] == 1


def _holdout(rows: list[tuple[str, str, float, float]]) -> pd.DataFrame:
    frame = pd.DataFrame(0.0, index=range(len(rows)), columns=sm.SESSION_FEATURES)
    frame.insert(0, "prefix_id", [r[0] for r in rows])
    frame.insert(1, "item_id", [r[1] for r in rows])
    frame["sknn_score"], frame["in_sknn"] = [r[2] for r in rows], 1.0
    frame["pop_all"] = [r[3] for r in rows]
    return frame.assign(catalogue_items=10)


def test_evaluate_sessions_matches_a_hand_computed_example():
    holdout = _holdout(
        [
            ("p1", "x", 0.9, 5),
            ("p1", "y", 0.5, 3),
            ("p1", "z", 0.1, 1),
            ("p2", "u", 0.7, 2),
            ("p2", "v", 0.7, 4),  # a tie: broken by item id, u first
            ("p3", "x", 0.2, 5),
        ]
    )
    targets = pd.DataFrame({"prefix_id": ["p1", "p2", "p3"], "item_id": ["y", "u", "w"]})  # w: not a candidate
    model = RulePolicy("scores", tuple(sm.SESSION_FEATURES), (("sknn_score", 1.0),))
    ev = sm.evaluate_sessions(holdout, model, targets, ks=(1, 2)).set_index(["method", "metric"])["value"]
    assert ev["model", "hr@1"] == pytest.approx(1 / 3) and ev["model", "hr@2"] == pytest.approx(2 / 3)
    assert ev["model", "mrr@2"] == pytest.approx((1 / 2 + 1) / 3)
    assert ev["model", "ndcg@2"] == pytest.approx((1 / math.log2(3) + 1) / 3)
    # top 2 lists: x y | u v | x: 4 distinct items of 10
    assert ev["model", "coverage@2"] == pytest.approx(0.4)
    assert ev["model", "popularity_bias@2"] == pytest.approx((5 + 3 + 2 + 4 + 5) / 5 / 5)
    # popularity ranks by pop_all where in_pop: nothing here is, so every row is unscored and follows popularity
    assert ev["popularity", "hr@1"] == 0.0  # p1: x (5) before y (3); p2: v (4) before u (2)
    assert ev["popularity", "mrr@2"] == pytest.approx((1 / 2 + 1 / 2) / 3)
    full = sm.evaluate_sessions(holdout, model, targets, ks=(1, 2))
    assert set(full["users"]) == {3} and set(full["target"]) == {"next_item"}


def _ranked(proposed: list[str], candidates: pd.DataFrame) -> list[str]:
    """A rule's list as a shop serves it: the items it proposes, then the other candidates by popularity."""
    rest = candidates[~candidates["item_id"].isin(proposed)].sort_values(
        ["pop_all", "item_id"], ascending=[False, True]
    )
    return proposed + rest["item_id"].tolist()


def _python_sr(
    events: list[tuple], start: dt.datetime, targets: pd.DataFrame, holdout: pd.DataFrame, k: int = 20
) -> tuple[float, float]:
    """session-rec's SR, written independently: HR@k and MRR@k over the positions of ``targets``."""
    history = sorted((e for e in events if e[2] < start), key=lambda e: (e[0], e[2]))
    rules: dict[str, dict[str, float]] = {}
    by_session: dict[str, list[str]] = {}
    for session, item, _ in history:
        by_session.setdefault(session, []).append(item)
    for items in by_session.values():
        for j, b in enumerate(items):
            for gap in range(1, min(10, j) + 1):
                rules.setdefault(items[j - gap], {}).setdefault(b, 0.0)
                rules[items[j - gap]][b] += 1.0 / gap
    known = {e[1] for e in history}
    sessions: dict[str, list[str]] = {}
    for session, item, time in sorted(events, key=lambda e: (e[0], e[2])):
        if item in known and time < start + dt.timedelta(days=1):
            sessions.setdefault(session, []).append(item)
    hits, rr = [], []
    for prefix_id, position, target in zip(targets["prefix_id"], targets["position"], targets["item_id"]):
        last = sessions[prefix_id.split("/")[1]][position - 1]
        ranked = sorted(rules.get(last, {}).items(), key=lambda kv: (-round(kv[1], 9), kv[0]))[: sm.SOURCE_ITEMS]
        names = _ranked([name for name, _ in ranked], holdout[holdout["prefix_id"] == prefix_id])[:k]
        hits.append(target in names)
        rr.append(1.0 / (names.index(target) + 1) if target in names else 0.0)
    return float(np.mean(hits)), float(np.mean(rr))


def test_a_rule_baselines_metrics_are_ranking_by_its_feature_and_sr_matches_an_independent_implementation():
    events = _random_log(seed=3)
    start, end = _window(3)
    conn = _warehouse(events)
    holdout = sm.session_frame(conn, start, end, positives_only=False)
    targets = sm.session_targets(conn, start, end)
    ev = sm.evaluate_sessions(holdout, sm.SESSION_RULES["sr"], targets).set_index(["method", "metric"])["value"]
    hr, mrr = _python_sr(events, start, targets, holdout)
    assert ev["sr", "hr@20"] == pytest.approx(hr) and ev["sr", "mrr@20"] == pytest.approx(mrr)
    assert ev["model", "hr@20"] == ev["sr", "hr@20"]  # the rule passed as the model is scored by the same code
    truth = dict(zip(targets["prefix_id"], targets["item_id"]))
    for name, rule in sm.SESSION_RULES.items():
        ((score, _),) = rule.weights
        ranks = []
        for prefix_id, candidates in holdout.groupby("prefix_id"):
            proposed = candidates[candidates[rule.only_where] == 1].sort_values(
                [score, "item_id"], ascending=[False, True]
            )
            top = _ranked(proposed["item_id"].tolist(), candidates)[:10]
            ranks.append(top.index(truth[prefix_id]) + 1 if truth[prefix_id] in top else math.inf)
        assert ev[name, "hr@10"] == pytest.approx(np.isfinite(ranks).sum() / len(targets)), name
        assert ev[name, "mrr@10"] == pytest.approx(np.sum(1.0 / np.array(ranks)) / len(targets)), name


def test_sr_over_the_last_three_items_keeps_the_top_of_every_successors_sum():
    """SR3's top ``width`` per prefix, found among few sums (``_CANDIDATES_SQL``), is the top of the sums over every
    successor of the last three items, computed here independently; a width of 3 makes the pruning bite."""
    events = _random_log(seed=7, sessions_per_day=80, items=60)
    start, end = _window(3)
    conn = _warehouse(events)
    width = 3
    try:
        sm._item_side(conn, start, width)
        sm._target_prefixes(conn, start, end)
        frame = sm._candidates(conn, positives_only=False, width=width)
    finally:
        sm._drop_temp(conn)
    units: dict[str, dict[str, int]] = {}
    history: dict[str, list[str]] = {}
    for session, item, _ in sorted((e for e in events if e[2] < start), key=lambda e: (e[0], e[2])):
        history.setdefault(session, []).append(item)
    for items in history.values():
        for j, b in enumerate(items):
            for gap in range(1, min(sm.SR_STEPS, j) + 1):
                units.setdefault(items[j - gap], {}).setdefault(b, 0)
                units[items[j - gap]][b] += sm.SR_UNIT // gap
    known = {item for items in history.values() for item in items}
    sessions: dict[str, list[str]] = {}
    for session, item, time in sorted(events, key=lambda e: (e[0], e[2])):
        if item in known and time < end:
            sessions.setdefault(session, []).append(item)
    pruned = 0
    for prefix_id, rows in frame.groupby("prefix_id"):
        _, session, position = prefix_id.split("/")
        last = sessions[session][max(0, int(position) - 3) : int(position)]
        sums: dict[str, int] = {}
        for back, item in enumerate(reversed(last)):
            for b, u in units.get(item, {}).items():
                sums[b] = sums.get(b, 0) + u * 2 ** (2 - back)
        expected = sorted(sums.items(), key=lambda kv: (-kv[1], kv[0]))[:width]
        listed = rows[rows["in_sr3"] == 1].sort_values("sr3_rank")
        assert listed["item_id"].tolist() == [b for b, _ in expected], prefix_id
        assert listed["sr3_score"].tolist() == pytest.approx([u / (sm.SR_UNIT * 4) for _, u in expected])
        pruned += len(sums) > width
    assert pruned > 100  # most prefixes have more successors than the width


def test_train_session_ranker_trains_from_sr_deterministically_and_scores_what_session_frame_scores():
    events = _random_log(seed=5, days=5)
    conn = _warehouse(events)
    train = pd.concat([sm.session_frame(conn, *_window(d), positives_only=True) for d in (1, 2, 3)], ignore_index=True)
    assert train.groupby("prefix_id")["relevance"].sum().eq(1).all()
    first, second = sm.train_session_ranker(train, PARAMS), sm.train_session_ranker(train, PARAMS)
    assert first.model_to_string() == second.model_to_string()
    start, end = _window(4)
    holdout = sm.session_frame(conn, start, end, positives_only=False)
    # the first iteration is SR calibrated: it orders every prefix's candidates as SR does
    offset = first.predict(holdout[sm.SESSION_FEATURES], num_iteration=1)
    by_sr = holdout.assign(offset=offset).sort_values(["sr_score", "offset"])
    assert by_sr.groupby("sr_score")["offset"].nunique().eq(1).all() and by_sr["offset"].is_monotonic_increasing
    assert first.current_iteration() > 1
    np.testing.assert_array_equal(
        first.predict(holdout[sm.SESSION_FEATURES]), second.predict(holdout[sm.SESSION_FEATURES])
    )
    ev = sm.evaluate_sessions(holdout, first, sm.session_targets(conn, start, end)).set_index(["method", "metric"])
    assert ev.loc[("model", "hr@20"), "value"] > ev.loc[("popularity", "hr@20"), "value"]
    # shopseq predict's path: the same prefixes given as events get the same top items and scores
    prefixes = holdout[["prefix_id", "session_id", "position"]].drop_duplicates("prefix_id").head(20)
    known = {e[1] for e in events if e[2] < start}
    given = pd.DataFrame(
        [e for e in events if e[2] < end and e[1] in known], columns=["session_id", "item_id", "event_time"]
    )
    given = given.sort_values(["session_id", "event_time"])
    given = given.assign(step=given.groupby("session_id").cumcount() + 1).merge(prefixes, on="session_id")
    given = given[given["step"] <= given["position"]].assign(session_id=lambda f: f["prefix_id"])
    served = sm.score_prefixes(conn, given[["session_id", "item_id", "event_time"]], first, start, k=5)
    rows = holdout[holdout["prefix_id"].isin(prefixes["prefix_id"])]
    expected = rows.assign(
        score=first.predict(rows[sm.SESSION_FEATURES]),
        rank=sm.rank_candidates(rows, first.predict(rows[sm.SESSION_FEATURES])),
    )
    expected = expected[expected["rank"] <= 5].sort_values(["prefix_id", "rank"], ignore_index=True)
    assert served["item_id"].tolist() == expected["item_id"].tolist()
    np.testing.assert_allclose(served["score"], expected["score"])
    lookup = sm.item_next_items(conn, first, start, k=25)
    assert lookup.groupby("item_id").size().eq(25).all() and lookup["rank"].min() == 1
    assert lookup["item_id"].nunique() == len({e[1] for e in events if e[2] < start})
    assert set(lookup["source"]) <= set(sm.SOURCES)


def test_predict_scores_each_session_with_an_item_side_from_before_the_files_first_event(tmp_path):
    """``shopseq predict`` on sessions: the warehouse events at or after the file's first event (later clicks, even
    of the same sessions) change nothing in any session's list."""
    from assets.logic.predict import score_sessions

    events = _random_log()
    first = DAY + dt.timedelta(days=3, hours=1)
    path = tmp_path / "warehouse.duckdb"

    def warehouse(rows):
        mem = _warehouse(rows)
        mem.execute(f"ATTACH '{path}' AS out")
        mem.execute("CREATE OR REPLACE TABLE out.cleaned_events AS SELECT * FROM cleaned_events")
        mem.execute("DETACH out")

    def scored():
        with duckdb.connect() as conn:
            conn.execute("""CREATE TABLE sequence_events AS SELECT * FROM (VALUES
                ('sX', 'X', 'i01', TIMESTAMP '2025-05-04 01:00:00', 'view', 'x1'),
                ('sX', 'X', 'i02', TIMESTAMP '2025-05-04 01:02:00', 'view', 'x2'),
                ('sY', 'Y', 'i03', TIMESTAMP '2025-05-04 02:00:00', 'view', 'y1'))
                t(user_id, session_id, item_id, event_time, event_type, event_id)""")
            frame, cutoff, _ = score_sessions(
                conn,
                str(path),
                RulePolicy("sr", tuple(sm.SESSION_FEATURES), (("sr_score", 1.0),), only_where="in_sr"),
                5,
            )
        return frame, cutoff

    warehouse([e for e in events if e[2] < first])
    before, cutoff = scored()
    assert cutoff <= first and set(before["sequence_id"]) == {"sX/X", "sY/Y"}
    assert (before.groupby("sequence_id")["rank"].max() == 5).all() and before["reason"].notna().all()
    later = [
        (f"late{i}", item, first + dt.timedelta(minutes=i)) for i, item in enumerate(["i01", "i09", "i02", "i09"] * 20)
    ]
    warehouse([e for e in events if e[2] < first] + later + [("X", "i01", first + dt.timedelta(hours=5))])
    after, cutoff = scored()
    assert cutoff == first
    pd.testing.assert_frame_equal(before, after)


def test_predict_adds_each_sessions_next_event_type_probabilities_from_the_state_after_its_last_event(tmp_path):
    from assets.logic.next_event import EVENT_CLASSES
    from assets.logic.predict import score_sessions

    class LastType:  # a next-event model that predicts the type of the state's last event
        def predict(self, states):
            return states[[f"last_is_{t}" for t in EVENT_CLASSES]].to_numpy(dtype=float)

    path = tmp_path / "warehouse.duckdb"
    mem = _warehouse(_random_log())
    mem.execute(f"ATTACH '{path}' AS out")
    mem.execute("CREATE TABLE out.cleaned_events AS SELECT * FROM cleaned_events")
    mem.execute("DETACH out")
    with duckdb.connect() as conn:
        conn.execute("""CREATE TABLE sequence_events AS SELECT * FROM (VALUES
            ('sX', 'X', 'i01', TIMESTAMP '2025-05-09 01:00:00', 'view', 'x1', false),
            ('sX', 'X', 'i02', TIMESTAMP '2025-05-09 01:02:00', 'add_to_cart', 'x2', false),
            ('sY', 'Y', 'i03', TIMESTAMP '2025-05-09 02:00:00', 'view', 'y1', false))
            t(user_id, session_id, item_id, event_time, event_type, event_id, is_bot)""")
        rule = RulePolicy("sr", tuple(sm.SESSION_FEATURES), (("sr_score", 1.0),), only_where="in_sr")
        frame, _, _ = score_sessions(conn, str(path), rule, 3, LastType())
    first = frame.groupby("sequence_id").first()
    assert first.loc["sX/X", "p_next_add_to_cart"] == 1.0 and first.loc["sY/Y", "p_next_view"] == 1.0


def test_otto_score_weights_the_recall_of_clicks_carts_and_orders_as_its_evaluation_script_does():
    """Two positions; the method lists i1, i2 for p1 and i3 for p2 (k = 2). Clicks: p1's next item i1 is listed, p2's
    i9 is not: 1/2. Carts: p1 carts i2 and i5 later (1 hit over min(2, 2)), p2 carts i3 (1 over 1): 2/3. Orders: p1
    buys i5 (0 over 1): 0. Score 0.1 * 1/2 + 0.3 * 2/3 + 0.6 * 0 = 0.25."""
    holdout = pd.DataFrame(
        {
            "prefix_id": ["p1", "p1", "p1", "p2", "p2"],
            "item_id": ["i1", "i2", "i5", "i3", "i4"],
            "pop_all": [5.0, 4.0, 1.0, 3.0, 2.0],
            "catalogue_items": 10.0,
        }
    )
    for feature in sm.SESSION_FEATURES:
        holdout[feature] = 0.0
    holdout["sr_score"], holdout["in_sr"] = [3.0, 2.0, 1.0, 2.0, 1.0], 1.0
    targets = pd.DataFrame(
        {"prefix_id": ["p1", "p2"], "item_id": ["i1", "i9"], "carts": [["i2", "i5"], ["i3"]], "orders": [["i5"], []]}
    )
    items = sm.candidate_codes(holdout)[1]
    ranks = sm.rank_candidates(holdout, holdout["sr_score"])
    rows = pd.DataFrame(sm._method_rows(holdout, targets, ranks, "sr", (2,), sm._positions(holdout, targets, items)))
    got = rows.set_index("metric")["value"]
    assert got["otto_recall_clicks@2"] == pytest.approx(0.5)
    assert got["otto_recall_carts@2"] == pytest.approx(2 / 3)
    assert got["otto_recall_orders@2"] == pytest.approx(0.0)
    assert got["otto_score@2"] == pytest.approx(0.25)
    # a click log has no carts or orders: no OTTO rows
    clicks = targets.assign(carts=[[], []], orders=[[], []])
    assert not any(
        "otto" in r["metric"]
        for r in sm._method_rows(holdout, clicks, ranks, "sr", (2,), sm._positions(holdout, clicks, items))
    )


# session-kNN as SQL over string keys, as ``_CANDIDATES_SQL`` computed it before ``_session_knn``: the reference the
# sparse-matrix search must match row for row. ``variant`` swaps one tie-break or drops the own-session exclusion, to
# show the generated log tells them apart.
_SKNN_REFERENCE_SQL = """
WITH prefixes AS (SELECT * FROM sm_prefixes),
steps AS (SELECT * FROM sm_steps),
prefix_weights AS (
    SELECT prefix_id, item_id, max(step) AS weight FROM steps GROUP BY prefix_id, item_id
),
neighbours AS (
    SELECT w.prefix_id, si.neighbour, sum(w.weight) AS similarity, max(si.session_end) AS neighbour_end
    FROM prefix_weights w JOIN sm_item_sessions si USING (item_id)
    JOIN prefixes p ON p.prefix_id = w.prefix_id
    WHERE {exclude}
    GROUP BY w.prefix_id, si.neighbour
    QUALIFY row_number() OVER (PARTITION BY w.prefix_id ORDER BY similarity DESC, {recency}, {name})
            <= {neighbours}
),
sknn AS (
    SELECT prefix_id, item_id, sknn_units / position AS sknn_score,
           sknn_units / sum(sknn_units) OVER (PARTITION BY prefix_id) AS sknn_share,
           row_number() OVER (PARTITION BY prefix_id ORDER BY sknn_units DESC, {item}) AS sknn_rank
    FROM (
        SELECT n.prefix_id, si.item_id, sum(n.similarity) AS sknn_units, any_value(p.position) AS position
        FROM neighbours n JOIN sm_session_items si USING (neighbour) JOIN prefixes p ON p.prefix_id = n.prefix_id
        GROUP BY n.prefix_id, si.item_id
    )
    QUALIFY sknn_rank <= $width
)
SELECT prefix_id, item_id, sknn_score, sknn_share, sknn_rank FROM sknn ORDER BY prefix_id, sknn_rank
"""
_SKNN_ORIGINAL = {
    "exclude": "si.neighbour <> p.user_id || '/' || p.session_id",
    "recency": "neighbour_end DESC",
    "name": "si.neighbour",
    "item": "item_id",
}
_SKNN_VARIANTS = {
    "own session kept": {"exclude": "true"},
    "older first": {"recency": "neighbour_end"},
    "names reversed": {"name": "si.neighbour DESC"},
    "items reversed": {"item": "item_id DESC"},
}


def _tied_log(seed: int = 11, days: int = 3, sessions_per_day: int = 150, items: int = 8) -> list[tuple]:
    """Short sessions over a few items, every event of a session at one of four whole hours: many past sessions
    share the same items (equal similarity) and end at the same time (equal recency)."""
    rng = np.random.default_rng(seed)
    events = []
    for day in range(days):
        for s in range(sessions_per_day):
            t = DAY + dt.timedelta(days=day, hours=int(rng.integers(4)))
            for item in rng.integers(items, size=int(rng.integers(1, 6))):
                events.append((f"{day}-{s:03d}", f"i{int(item)}", t))
    return events


def _past_session_prefixes(conn: duckdb.DuckDBPyConnection) -> None:
    """Prefixes of the item side's own sessions (after ``_item_side``): each has its own session among the sampled
    ones, which session-kNN must not count as a neighbour."""
    conn.execute(
        """CREATE OR REPLACE TEMP TABLE sm_prefixes AS
           SELECT user_id || '/' || session_id || '/' || step AS prefix_id, user_id, session_id, step AS position,
                  event_time AS prefix_time, item_id AS last_item, CAST(NULL AS VARCHAR) AS next_item
           FROM sm_hist"""
    )
    conn.execute(
        """CREATE OR REPLACE TEMP TABLE sm_steps AS
           SELECT p.prefix_id, h.step, h.item_id, h.event_time FROM sm_prefixes p JOIN sm_hist h
             ON h.user_id = p.user_id AND h.session_id = p.session_id AND h.step <= p.position"""
    )


@pytest.mark.parametrize("prefixes", ["target day", "past sessions"])
@pytest.mark.parametrize("block, threads", [(sm.SKNN_BLOCK, 1), (sm.SKNN_BLOCK, 2), (7, 2)])
def test_session_knn_gives_the_rows_of_the_string_key_sql_with_its_tie_breaks_and_exclusion(
    monkeypatch, prefixes, block, threads
):
    """``_session_knn`` (sparse integer matrices, in blocks of prefixes) against the SQL it replaced, on a log full
    of ties in similarity and recency, with few neighbours, a small sample and a small width so that every tie-break
    decides rows."""
    neighbours, width = 4, 3
    monkeypatch.setattr(sm, "SKNN_NEIGHBOURS", neighbours)
    monkeypatch.setattr(sm, "SKNN_SAMPLE", 40)
    monkeypatch.setattr(sm, "SKNN_BLOCK", block)
    conn = _warehouse(_tied_log())
    conn.execute(f"SET threads = {threads}")  # session-kNN's blocks run on as many threads
    start, end = _window(2)

    def reference(**variant) -> pd.DataFrame:
        sql = _SKNN_REFERENCE_SQL.format(neighbours=neighbours, **(_SKNN_ORIGINAL | variant))
        return conn.execute(sql, {"width": width}).df()

    try:
        sm._item_side(conn, start, width)
        if prefixes == "target day":
            sm._target_prefixes(conn, start, end)
        else:
            _past_session_prefixes(conn)
        expected = reference()
        sm._session_knn(conn, width)
        got = conn.execute("SELECT * FROM sm_sknn ORDER BY prefix_id, sknn_rank").df()
        variants = {name: reference(**variant) for name, variant in _SKNN_VARIANTS.items()}
    finally:
        sm._drop_temp(conn)
    assert expected["prefix_id"].nunique() > 100
    pd.testing.assert_frame_equal(got, expected)
    # the log decides each tie-break (and, for prefixes of past sessions, the exclusion): a search that got one of
    # them wrong would differ from the reference
    for name, rows in variants.items():
        if name != "own session kept" or prefixes == "past sessions":
            assert not rows.equals(expected), name


def test_session_knn_of_no_prefix_is_an_empty_table_with_its_columns():
    conn = _warehouse(_tied_log())
    start, end = _window(30)  # no session starts then
    try:
        sm._item_side(conn, start)
        sm._target_prefixes(conn, start, end)
        sm._session_knn(conn, sm.SOURCE_ITEMS)
        rows = conn.execute("SELECT * FROM sm_sknn")
        columns, count = [d[0] for d in rows.description], len(rows.fetchall())
    finally:
        sm._drop_temp(conn)
    assert count == 0 and columns == ["prefix_id", "item_id", "sknn_score", "sknn_share", "sknn_rank"]


@pytest.mark.parametrize("top", [3, 100])  # small values: the histogram path; large ones: the sort of every entry
def test_top_per_row_keeps_each_rows_k_largest_values_ties_by_the_smaller_column(top):
    from scipy import sparse

    rng = np.random.default_rng(top)
    dense = rng.integers(0, top + 1, size=(200, 60)) * (rng.random((200, 60)) < 0.5)  # many ties, rows of 0-60
    dense[7] = 0  # a row without entries
    dense[8] = 0
    dense[8, [3, 9]] = [top, 1]  # a row of fewer than k entries
    csr = sparse.csr_matrix(dense)
    csr.data[csr.indptr[8]] = 0  # a stored zero (in the row of two): an entry like any other, as in the sum it was
    backwards = np.concatenate([np.arange(a, b)[::-1] for a, b in zip(csr.indptr[:-1], csr.indptr[1:])])
    matrix = sparse.csr_matrix((csr.data[backwards], csr.indices[backwards], csr.indptr), shape=dense.shape)
    full = csr.toarray()
    assert (matrix.toarray() == full).all() and not matrix.has_sorted_indices  # each row's columns unordered, as @
    stored = [csr.indices[csr.indptr[r] : csr.indptr[r + 1]] for r in range(dense.shape[0])]
    expected = [
        (r, c, int(full[r, c]), rank)
        for r in range(dense.shape[0])
        for rank, c in enumerate(sorted(stored[r], key=lambda c: (-full[r, c], c))[:5], start=1)
    ]
    rows, columns, values, ranks = sm._top_per_row(matrix.copy(), 5)
    assert list(zip(rows.tolist(), columns.tolist(), values.tolist(), ranks.tolist())) == expected
    assert [(c, v) for r, c, v in zip(rows.tolist(), columns.tolist(), values.tolist()) if r == 8] == [(9, 1), (3, 0)]
    assert (matrix.shape[0] * (top + 1) <= matrix.nnz) == (top == 3)  # each case takes the path it names


def test_a_rule_of_older_features_scores_its_own_columns_in_the_served_top_k():
    """A rule version registered before ``SESSION_FEATURES`` changed names other columns, in another order: the
    served lists read those by name (as ``evaluate_sessions`` does), not today's columns by position."""
    from assets.logic.policies import RulePolicy

    frame = pd.DataFrame({"prefix_id": ["p"] * 4, "item_id": ["a", "b", "c", "d"], "source": "sr"})
    for feature in sm.SESSION_FEATURES:
        frame[feature] = 0.0
    frame["sr_score"], frame["pop_all"] = [1.0, 4.0, 3.0, 2.0], [9.0, 1.0, 2.0, 3.0]
    older = RulePolicy("sr_old", ("pop_all", "sr_score", "retired_feature"), (("sr_score", 1.0),))
    frame["retired_feature"] = 0.0
    top = sm._top_k(frame, older, 3)
    assert top["item_id"].tolist() == ["b", "c", "d"] and top["score"].tolist() == [4.0, 3.0, 2.0]
