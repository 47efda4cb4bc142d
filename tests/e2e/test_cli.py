"""End to end through the command lines a newcomer types: shopseq demo, then dagster asset materialize."""

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def _env(home: Path) -> dict:
    return {**os.environ, "SHOPSEQ_HOME": str(home), "DAGSTER_HOME": str(home / "dagster_home"), "MLFLOW_DISABLE_TELEMETRY": "true"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    home = tmp_path_factory.mktemp("demo")
    out = subprocess.run(
        [sys.executable, "-m", "workflows.cli", "demo", "--home", str(home), "--days", "5", "--events-per-day", "1500"],
        cwd=tmp_path_factory.mktemp("cwd"), env=_env(home), capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return home, out.stdout


def test_demo_prints_progress_models_beside_baselines_and_ui_commands(demo):
    home, stdout = demo
    for stage in ("[  landing]", "[ingestion]", "[ cleaning]", "[sequences]", "[ features]", "[ training]", "[  serving]"):
        assert stage in stdout
    assert "Temporal hold-out" in stdout and "popularity" in stdout and "repeat_recent" in stdout
    assert "champion v1" in stdout
    assert f"shopseq ui --home {home}" in stdout and "mlflow ui --backend-store-uri" in stdout


def test_demo_leaves_every_stage_and_a_champion(demo):
    home, _ = demo
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as conn:
        for table in ("raw_events", "cleaned_events", "sessions", "user_sequences", "user_features", "item_features",
                      "ranking_candidates", "next_action_training_set", "ranker_training_set", "model_evaluations",
                      "recommendations", "next_action_predictions"):
            assert conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] > 0, table
        unnamed = conn.execute("SELECT count(*) FROM recommendations WHERE model_version IS NULL").fetchone()[0]
        assert unnamed == 0
    from resources import ModelRegistry

    registry = ModelRegistry(home=str(home))
    assert registry.champion("shopseq_next_item_ranker").version == 1
    assert registry.champion("shopseq_next_purchase").version == 1


def test_dagster_cli_materialises_one_partition_idempotently(demo):
    home, _ = demo
    counts = []
    for _ in range(2):
        out = subprocess.run(
            [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "workflows.definitions",
             "--select", "raw_events,cleaned_events,sessions", "--partition", "2025-03-02"],
            cwd=REPO, env=_env(home), capture_output=True, text=True, timeout=300,
        )
        assert out.returncode == 0 and "RUN_SUCCESS" in out.stderr, out.stderr[-3000:]
        with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as conn:
            counts.append([conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("raw_events", "cleaned_events", "sessions")])
    assert counts[0] == counts[1]


def _shopseq(home: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workflows.cli", *args, "--home", str(home)], cwd=cwd, env=_env(home),
                          capture_output=True, text=True, timeout=900)


def _taobao_like(path: Path, users: int = 60, days: int = 5) -> None:
    """A small UserBehavior file (China-time days from 2017-11-25) with one line of each kind of garbage."""
    start, lines = 1511539200, []  # 2017-11-24 16:00 UTC = 2017-11-25 00:00 China time
    for u in range(1, users + 1):
        for d in range(days):
            for k in range(6):
                item = (u * 7 + k * (d + 1)) % 90
                kind = "buy" if k == 5 and (u + d) % 4 == 0 else "cart" if k == 4 else "pv"
                lines.append(f"{u},{item},{item % 9},{kind},{start + d * 86400 + u * 300 + k * 60}")
    lines += ["", "7,8,9,pv", "x,1,1,pv,1511600000", "7,8,9,teleport,1511600000"]
    path.write_text("\n".join(lines) + "\n")


def test_ingest_then_run_on_a_real_format(tmp_path):
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    cwd.mkdir()
    source = tmp_path / "UserBehavior.csv"
    _taobao_like(source)
    out = _shopseq(home, "ingest", "--format", "taobao", "--path", str(source), cwd=cwd)
    assert out.returncode == 0, out.stderr[-3000:]
    total = next(line for line in out.stdout.splitlines() if line.strip().startswith("total")).split()
    assert total[1:4] == ["1804", "1800", "4"]  # read, accepted, quarantined
    assert "(Asia/Shanghai days)" in out.stdout

    out = _shopseq(home, "run", "--skip-training", cwd=cwd)  # the days come from the landing folders
    assert out.returncode == 0, out.stderr[-3000:]
    assert "5 day(s) 2017-11-25..2017-11-29" in out.stdout
    assert "[  serving] skipped: no champion model yet" in out.stdout
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM raw_events").fetchone()[0] == 1800
        assert conn.execute("SELECT count(*) FROM raw_events_quarantine").fetchone()[0] == 4
        # China-time days: the first event, 2017-11-25 00:05 in Shanghai, is stored in UTC.
        assert str(conn.execute("SELECT min(event_time) FROM raw_events").fetchone()[0]) == "2017-11-24 16:05:00"

    missing = tmp_path / "nope.csv.gz"
    out = _shopseq(home, "ingest", "--format", "taobao", "--path", str(missing), cwd=cwd)
    assert out.returncode == 2 and str(missing) in out.stderr and "file not found" in out.stderr
