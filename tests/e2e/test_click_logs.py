"""A log of anonymous clicks (no users, no purchases, one event type): the run trains what the data supports and
says what it cannot, instead of failing."""

import random
import re
from pathlib import Path

import duckdb
import pytest

from tests.e2e.test_cli import _shopseq

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


def test_a_click_log_runs_and_names_the_models_its_data_cannot_train(tmp_path):
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    cwd.mkdir()
    source = tmp_path / "clicks.txt"
    _click_log(source)
    out = _shopseq(home, "ingest", "--format", "yoochoose-clicks", "--path", str(source), cwd=cwd)
    assert out.returncode == 0, out.stderr[-3000:]

    out = _shopseq(home, "run", cwd=cwd)
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-3000:])
    assert "[ training] done" in out.stdout and "[  serving] skipped: no champion model yet" in out.stdout
    assert "Models this home's data can train: none" in out.stdout
    skipped = dict(re.findall(r"^  (shopseq_\w+): this home's data cannot train it: (.+)$", out.stdout, re.M))
    assert set(skipped) == {"shopseq_next_purchase", "shopseq_next_cart", "shopseq_next_return",
                            "shopseq_next_item_ranker", "shopseq_next_event"}, out.stdout[-3000:]
    assert "label_purchase is 0" in skipped["shopseq_next_purchase"] and "no user purchased" in skipped["shopseq_next_purchase"]
    assert "no user came back" in skipped["shopseq_next_return"]
    assert "is a view" in skipped["shopseq_next_event"]
    assert "come back the next day" in skipped["shopseq_next_item_ranker"]
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as conn:
        decisions = conn.execute("SELECT DISTINCT decision FROM promotion_log").fetchall()
        assert decisions == [("skipped",)]
        assert conn.execute("SELECT count(*) FROM cleaned_events").fetchone()[0] > 0
    assert not list((home / "mlartifacts").rglob("model.lgb")), "nothing trained, nothing registered"
