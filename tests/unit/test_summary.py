import pandas as pd

from workflows.cli import _holdout_table


def _rows(model_name, segment, methods, targets, metrics, users=10):
    return [
        {
            "model_name": model_name,
            "segment": segment,
            "method": method,
            "target": target,
            "metric": metric,
            "value": 0.1 * (i + 1),
            "ci_low": 0.01 if method == "model" else None,
            "ci_high": 0.99 if method == "model" else None,
            "users": users,
        }
        for i, method in enumerate(methods)
        for target in targets
        for metric in metrics
    ]


def test_a_models_hold_out_table_lists_the_model_its_interval_then_its_baselines_in_the_catalogues_order():
    """A row per method (the model, its interval, each baseline served then raw, as the catalogue orders them), a
    column per target (``any`` first) and metric, and the segments below with the users each holds."""
    methods = [
        "recent_covis_pop",
        "markov_raw",
        "model_raw",
        "popularity",
        "repeat_recent",
        "model",
        "repeat_recent_raw",
    ]
    rows = pd.DataFrame(
        _rows("shopseq_next_item_ranker", "all", methods, ["purchase", "any"], ["ndcg@20", "recall@20"])
        + _rows("shopseq_next_item_ranker", "cold_items", ["model", "repeat_recent"], ["any"], ["ndcg@20"], users=7)
        + _rows("shopseq_next_item_ranker", "new_users", ["model"], ["any"], ["ndcg@20"], users=0)
    )
    lines = _holdout_table(rows, "shopseq_next_item_ranker")
    labels = [line.split()[0] for line in lines]
    # the catalogue's baselines of the ranker: popularity, repeat_recent, covisitation, recent_covis_pop, markov
    assert labels[:12] == [
        "target",
        "metric",
        "model",
        "95%",
        "95%",
        "model_raw",
        "popularity",
        "repeat_recent",
        "repeat_recent_raw",
        "recent_covis_pop",
        "markov_raw",
        "by",
    ]
    assert lines[0].split() == ["target", "any", "purchase"]
    assert lines[3].split() == ["95%", "CI", "low", "0.01", "0.01", "0.01", "0.01"]
    assert lines[11].strip() == "by segment (target any; users: cold_items 7):"
    assert [line.split()[0] for line in lines[12:]] == ["segment", "metric", "model", "95%", "95%", "repeat_recent"]


def test_a_next_action_models_table_has_a_column_per_metric():
    rows = pd.DataFrame(
        _rows("shopseq_next_purchase", "all", ["base_rate", "model", "buy_history_rule"], ["label_purchase"], ["auc"])
    )
    lines = _holdout_table(rows, "shopseq_next_purchase")
    assert [line.split()[0] for line in lines] == ["metric", "model", "95%", "95%", "buy_history_rule", "base_rate"]
    assert lines[1].split() == ["model", "0.20"]  # the second method given: 0.2


def test_the_summary_shows_each_models_newest_learned_version_as_last_evaluated():
    """A champion kept over two hold-out days has two evaluations, and is evaluated again after the newer challenger:
    the summary shows the challenger's one evaluation, not the champion's re-scoring nor both days mixed."""
    import datetime as dt

    import duckdb

    from workflows.cli import _model_summary

    conn = duckdb.connect()
    t = dt.datetime(2026, 1, 1)
    evaluations = []
    for version, day, at, value in ((1, 4, t, 0.40), (2, 5, t + dt.timedelta(hours=1), 0.45)):
        evaluations += _evaluation(version, dt.date(2014, 4, day), at, value)
    evaluations += _evaluation(1, dt.date(2014, 4, 5), t + dt.timedelta(hours=2), 0.41)  # the champion re-scored
    evaluations += _evaluation(3, dt.date(2014, 4, 5), t + dt.timedelta(hours=3), 0.30, kind="rule")
    conn.register("frame", pd.DataFrame(evaluations))
    conn.execute("CREATE TABLE model_evaluations AS SELECT * FROM frame")
    conn.execute(
        """CREATE TABLE promotion_log AS SELECT 'shopseq_next_purchase' AS model_name, 1 AS champion_version,
           'kept' AS decision, 'no better' AS reason, TIMESTAMP '2026-01-01 03:00' AS decided_at"""
    )
    text = "\n".join(_model_summary(conn, 3, {"shopseq_next_purchase": 1}, dt.date(2014, 4, 6)))
    assert "features as of 2014-04-05" in text
    model_line = next(line for line in text.splitlines() if line.split()[:1] == ["model"])
    assert model_line.split() == ["model", "0.45"]
    assert "shopseq_next_purchase: champion v1, learned lightgbm (kept: no better)" in text

    # since that promotion run, the rule v3 was promoted by hand, then the champion moved to v2 in MLflow: the
    # summary names the policy served now and why, not the last run's decision
    conn.execute(
        """CREATE TABLE alias_history AS SELECT TIMESTAMP '2026-01-01 04:00' AS changed_at,
           'shopseq_next_purchase' AS model_name, 'champion' AS alias, 1 AS from_version, 3 AS to_version,
           'the rule is steadier' AS reason, 'shopseq promote' AS changed_by"""
    )
    text = "\n".join(_model_summary(conn, 3, {"shopseq_next_purchase": 3}, dt.date(2014, 4, 6)))
    assert (
        "shopseq_next_purchase: champion v3, rule buy_history_rule (set outside the promotion run: shopseq promote: "
        "the rule is steadier)" in text
    )
    text = "\n".join(_model_summary(conn, 3, {"shopseq_next_purchase": None}, dt.date(2014, 4, 6)))
    assert "shopseq_next_purchase: no champion, not served (set outside the promotion run" in text  # alias removed
    text = "\n".join(_model_summary(conn, 3, {"shopseq_next_purchase": 2}, dt.date(2014, 4, 6)))
    assert (
        "shopseq_next_purchase: champion v2, learned lightgbm (set outside the promotion run: in MLflow, not yet "
        "recorded in alias_history)" in text
    )


def test_the_summary_shows_the_recommendations_of_the_day_the_run_published():
    """A run of past days publishes its last day: the sample lists are that day's, not the newest in the table."""
    import datetime as dt

    import duckdb

    from workflows.cli import _model_summary

    conn = duckdb.connect()
    conn.register("frame", pd.DataFrame(_evaluation(1, dt.date(2014, 4, 5), dt.datetime(2026, 1, 1), 0.4)))
    conn.execute("CREATE TABLE model_evaluations AS SELECT * FROM frame")
    conn.execute(
        """CREATE TABLE promotion_log AS SELECT 'shopseq_next_purchase' AS model_name, 1 AS champion_version,
           'promoted' AS decision, 'first' AS reason, TIMESTAMP '2026-01-01 03:00' AS decided_at"""
    )
    conn.execute(
        """CREATE TABLE recommendations AS SELECT * FROM (VALUES
           (DATE '2014-04-03', 'u1', 1, 'old', 'r', 'shopseq_next_item_ranker', 1, 'repeat_recent', 'rule'),
           (DATE '2014-04-06', 'u1', 1, 'new', 'r', 'shopseq_next_item_ranker', 2, 'lightgbm', 'learned'))
           t(as_of_date, user_id, rank, item_id, reason, model_name, model_version, policy, policy_kind)"""
    )
    text = "\n".join(_model_summary(conn, 3, {"shopseq_next_purchase": 1}, dt.date(2014, 4, 3)))
    assert "Recommendations for 2014-04-03 (first users, top 5 of 20):" in text
    assert "  u1         old  [shopseq_next_item_ranker v1, rule repeat_recent]" in text


def _evaluation(version, day, at, value, kind="learned"):
    return [
        {
            "segment": "all",
            "method": method,
            "target": "label_purchase",
            "metric": "auc",
            "value": value if method == "model" else 0.5,
            "ci_low": value - 0.1 if method == "model" else None,
            "ci_high": value + 0.1 if method == "model" else None,
            "users": 100,
            "model_name": "shopseq_next_purchase",
            "model_version": version,
            "holdout_day": day,
            "evaluated_at": at,
            "policy": "lightgbm" if kind == "learned" else "buy_history_rule",
            "policy_kind": kind,
        }
        for method in ("model", "base_rate")
    ]


def test_predict_says_what_it_quarantined_and_how_many_lists_came_out_short(capsys):
    import argparse

    from workflows.cli import _print_short_lists, _read_line

    args = argparse.Namespace(format="diginetica", events=["a.csv"])
    report = {"read": 10, "accepted": 8, "quarantined": 2, "exact_duplicate": 1, "missing_item": 1}
    assert _read_line(args, report) == (
        "Read diginetica a.csv: 10 rows = 8 accepted + 2 quarantined (exact_duplicate 1, missing_item 1)."
    )
    frame = pd.DataFrame({"sequence_id": ["s1", "s1", "s2"], "rank": [1, 2, 1]})
    _print_short_lists(frame, 2, "why")
    assert capsys.readouterr().out == "1 of 2 sequences got fewer than 2 items (why).\n"
    _print_short_lists(frame[frame["sequence_id"] == "s1"], 2, "why")
    assert capsys.readouterr().out == ""


def test_predict_warns_when_a_files_items_are_foreign_to_the_home(capsys):
    import duckdb

    from assets.logic.predict import known_items
    from workflows.cli import _print_known_items

    with duckdb.connect() as conn:
        conn.execute("CREATE TABLE sequence_events AS SELECT * FROM (VALUES ('a'), ('a'), ('b'), (NULL)) t(item_id)")
        conn.execute("CREATE TABLE shop_items AS SELECT * FROM (VALUES ('a'), ('c')) t(item_id)")
        assert known_items(conn, "SELECT item_id FROM shop_items") == (3, 2)  # the search without an item left out
        assert known_items(conn, "SELECT item_id FROM shop_items WHERE item_id > ?", ["b"]) == (3, 0)
    _print_known_items((3, 2), "of the day")
    assert (
        capsys.readouterr().out
        == "2 of the file's 3 events with an item (66.7%) are on items the home knows (of the day).\n"
    )
    _print_known_items((1000, 99), "of the day")
    out = capsys.readouterr().out
    assert "(9.9%)" in out and "warning: under 10% of the file's events are on items this home knows" in out
    _print_known_items((1000, 100), "of the day")
    assert "warning" not in capsys.readouterr().out
    _print_known_items((0, 0), "of the day")  # a file of searches only: no item to be foreign
    assert capsys.readouterr().out == ""


def test_ingest_notes_a_partial_first_or_last_day(tmp_path, monkeypatch, capsys):
    """A log that starts or ends within a day of the home's timezone: the tiny last day would be the next-day
    models' hold-out, so ingest says so and how to leave it out; full days get no note."""
    from workflows.cli import main

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home" / "dagster_home"))
    start = 1511539200  # 2017-11-25 00:00, China time
    lines = [f"{i % 7},{i},1,pv,{start + day * 86400 + i * 600}" for day in range(3) for i in range(100)]
    lines += [f"1,5,1,pv,{start + 3 * 86400 + 60}", f"2,6,1,buy,{start + 3 * 86400 + 120}"]
    source = tmp_path / "log.csv"
    source.write_text("\n".join(lines) + "\n")
    home = tmp_path / "home"
    assert main(["ingest", "--home", str(home), "--format", "taobao", "--path", str(source)]) == 0
    out = capsys.readouterr().out
    assert (
        "note: 2017-11-28 has 2 accepted events, 2.0% of the median day's 100 (Asia/Shanghai days): the log ends "
        f"within it. As the last landed day it is the day run publishes for and holds the models' hold-out "
        f"targets: shopseq run --home {home} --end 2017-11-27 leaves it out." in out
    )
    assert out.count("note:") == 1  # the first day is whole

    whole = lines[:300] + [f"{i % 7},{i},1,pv,{start + 3 * 86400 + i * 600}" for i in range(100)]
    source.write_text("\n".join(whole) + "\n")  # whole days only
    assert main(["ingest", "--home", str(tmp_path / "whole"), "--format", "taobao", "--path", str(source)]) == 0
    assert "note:" not in capsys.readouterr().out
    # a second file with a few events of each day, one of the last: the landed day is whole, whatever this file
    # holds of it
    extra = tmp_path / "extra.csv"
    extra.write_text("\n".join([*lines[1:300:6], lines[-1]]) + "\n")
    assert main(["ingest", "--home", str(tmp_path / "whole"), "--format", "taobao", "--path", str(extra)]) == 0
    assert "note:" not in capsys.readouterr().out
