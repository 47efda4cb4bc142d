"""A log of anonymous clicks (no users, no purchases, one event type): the run trains what the data supports and
says what it cannot, instead of failing."""

import importlib.util
import random
import re
from pathlib import Path

import duckdb
import pytest

from tests.samples import run_cli

pytestmark = pytest.mark.e2e


def _click_log(path: Path, days: int = 6, sessions_per_day: int = 120) -> None:
    """A session-rec style click file (SessionId, ItemId, Time): short sessions over a small catalogue, each
    session on one day, never coming back."""
    rng = random.Random(20)
    start = 1396310400  # 2014-04-01 00:00 UTC
    lines = ["SessionId\tItemId\tTime"]
    session = 0
    for day in range(days):
        for _ in range(sessions_per_day):
            session += 1
            t = start + day * 86400 + rng.randint(600, 80000)
            item = rng.randint(1, 60)
            for _ in range(rng.randint(2, 6)):
                lines.append(f"{session}\t{item}\t{t}.0")
                item = (item + rng.choice((1, 1, 2, 7))) % 60 + 1
                t += rng.randint(10, 300)
    path.write_text("\n".join(lines) + "\n")


def test_a_click_log_trains_the_in_session_model_publishes_next_items_and_names_what_it_cannot_train(tmp_path):
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    cwd.mkdir()
    source = tmp_path / "clicks.txt"
    _click_log(source)
    out = run_cli("ingest", "--format", "yoochoose-clicks", "--path", str(source), home=home, cwd=cwd)
    assert out.returncode == 0, out.stderr[-3000:]

    out = run_cli("run", home=home, cwd=cwd)
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-3000:])
    assert "[ training] done" in out.stdout
    published = [line for line in out.stdout.splitlines() if line.startswith("[  serving] item_next_items")]
    assert len(published) == 1 and published[0].endswith(" rows"), published
    # the recurrent session model trains where the deep extra (JAX) is installed, and says how to install it elsewhere
    deep = importlib.util.find_spec("jax") is not None
    trainable = re.search(r"^Models this home's data can train: (.+)$", out.stdout, re.M).group(1).split(", ")
    assert "shopseq_session_next_item" in trainable and ("shopseq_session_gru" in trainable) == deep
    skipped = dict(re.findall(r"^  (shopseq_\w+): this home's data cannot train it: (.+)$", out.stdout, re.M))
    if not deep:
        assert 'pip install -e ".[deep]"' in skipped.pop("shopseq_session_gru")
    assert set(skipped) == {
        "shopseq_next_purchase",
        "shopseq_next_cart",
        "shopseq_next_return",
        "shopseq_next_item_ranker",
        "shopseq_next_event",
    }, out.stdout[-3000:]
    assert (
        "label_purchase is 0" in skipped["shopseq_next_purchase"]
        and "no user purchased" in skipped["shopseq_next_purchase"]
    )
    assert "no user came back" in skipped["shopseq_next_return"]
    assert "is a view" in skipped["shopseq_next_event"]
    assert "come back the next day" in skipped["shopseq_next_item_ranker"]
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as conn:
        decisions = dict(conn.execute("SELECT model_name, decision FROM promotion_log").fetchall())
        assert decisions.pop("shopseq_session_next_item") == "promoted"
        assert (decisions.pop("shopseq_session_gru") != "skipped") == deep  # promoted or kept: judged by the gate
        assert set(decisions.values()) == {"skipped"}
        # the session protocol: every position of the hold-out day's sessions, the model beside its rules
        methods = {
            m
            for (m,) in conn.execute(
                "SELECT DISTINCT method FROM model_evaluations "
                "WHERE model_name = 'shopseq_session_next_item' AND metric = 'hr@20'"
            ).fetchall()
        }
        assert {"model", "sr", "sknn", "markov", "popularity"} <= methods
        served, kinds, worst = conn.execute(
            "SELECT count(DISTINCT item_id), list(DISTINCT policy_kind), max(rank) FROM item_next_items"
        ).fetchone()
        assert served > 30 and kinds in (["rule"], ["learned"]) and worst <= 50
        assert conn.execute("SELECT count(*) FROM item_next_items WHERE item_id = next_item_id").fetchone()[0] == 0

    prefixes = tmp_path / "prefixes.txt"
    prefixes.write_text(
        "SessionId\tItemId\tTime\n900001\t5\t1396915200.0\n900001\t6\t1396915260.0\n900002\t40\t1396915300.0\n"
    )
    common = ["--events", str(prefixes), "--format", "yoochoose-clicks", "--k", "10"]
    out = run_cli("predict", *common, "--out", str(tmp_path / "next.csv"), home=home, cwd=cwd)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Scored 2 sessions as of their last event" in out.stdout and "with shopseq_session_next_item v" in out.stdout
    with duckdb.connect() as conn:
        rows = conn.execute(
            f"SELECT sequence_id, count(*), max(rank) FROM read_csv('{tmp_path / 'next.csv'}') GROUP BY ALL ORDER BY 1"
        ).fetchall()
    assert [(r[1], r[2]) for r in rows] == [(10, 10), (10, 10)]
    # a version named instead of the champion: the session model's first, a rule or the learned model
    pinned = [*common, "--out", str(tmp_path / "pinned.csv"), "--model-version", "shopseq_session_next_item=1"]
    out = run_cli("predict", *pinned, home=home, cwd=cwd)
    assert out.returncode == 0 and "with shopseq_session_next_item v1;" in out.stdout, out.stderr[-3000:]
    out = run_cli("predict", *pinned[:-1], "shopseq_session_next_item=999", home=home, cwd=cwd)
    assert out.returncode == 2 and "has no version 999" in out.stderr and "Traceback" not in out.stderr
    out = run_cli(
        "predict",
        "--events",
        str(prefixes),
        "--format",
        "yoochoose-clicks",
        "--protocol",
        "next-day",
        "--out",
        str(tmp_path / "next_day.csv"),
        home=home,
        cwd=cwd,
    )
    assert out.returncode == 2 and "no 'champion' version" in out.stderr and "Traceback" not in out.stderr
