"""Holes found by attacking the fixes of issue 18 through the shopseq CLI (review/adversary).

A result is a failure when the command prints a traceback, exits with another code than 0/1/2, or leaves the
home unusable. Each test failed on main when it was written.
"""

import subprocess
from pathlib import Path

import duckdb
import pytest

from tests.samples import REPO, home_env, run_cli

pytestmark = pytest.mark.e2e
DAY0 = 1511539200  # 2017-11-25 00:00 China time


def _cli(home: Path, *args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return run_cli(*args, cwd=cwd, env={**home_env(home), "PYTHONPATH": str(REPO)}, timeout=timeout)


def _clean(out: subprocess.CompletedProcess, code: int) -> None:
    assert "Traceback" not in out.stderr + out.stdout, out.stderr[-2000:]
    assert out.returncode == code, (out.returncode, out.stderr[-2000:])


def test_run_up_to_the_last_day_of_the_calendar_is_a_clear_error(tmp_path):
    # main: OverflowError traceback from the daily partitions (exit 1)
    home = tmp_path / "home"
    source = tmp_path / "log.csv"
    source.write_text("".join(f"{i},{i + 10},3,pv,{DAY0 + 3600 * i}\n" for i in range(1, 30)))
    _clean(_cli(home, "ingest", "--home", str(home), "--format", "taobao", "--path", str(source), cwd=tmp_path), 0)
    _clean(
        _cli(
            home,
            "run",
            "--home",
            str(home),
            "--start",
            "2017-11-25",
            "--end",
            "9999-12-31",
            "--skip-training",
            cwd=tmp_path,
        ),
        2,
    )


def test_a_run_refused_for_a_missing_landing_folder_does_not_empty_the_warehouse(tmp_path):
    # main: with <home>/landing renamed (archived, an unmounted disk), shopseq run first "withdraws" every day from
    # every daily table, then exits 2 "no landing days": a refused command wiped the warehouse
    home = tmp_path / "home"
    source = tmp_path / "log.csv"
    source.write_text("".join(f"{i % 7},{i % 11 + 10},3,pv,{DAY0 + 1800 * i}\n" for i in range(1, 140)))
    _clean(_cli(home, "ingest", "--home", str(home), "--format", "taobao", "--path", str(source), cwd=tmp_path), 0)
    _clean(_cli(home, "run", "--home", str(home), "--skip-training", cwd=tmp_path), 0)
    count = "SELECT count(*) FROM raw_events"
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as conn:
        before = conn.execute(count).fetchone()[0]
    (home / "landing").rename(home / "landing.archived")
    _clean(_cli(home, "run", "--home", str(home), "--skip-training", cwd=tmp_path), 2)
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as conn:
        assert conn.execute(count).fetchone()[0] == before > 0


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    home = tmp_path_factory.mktemp("demo")
    cwd = tmp_path_factory.mktemp("cwd")
    out = _cli(home, "demo", "--home", str(home), "--days", "5", "--events-per-day", "1500", cwd=cwd)
    assert out.returncode == 0, out.stderr[-3000:]
    events = cwd / "events.csv"
    duckdb.execute(
        f"COPY (SELECT * FROM read_parquet('{home}/landing/2025-03-05/*.parquet') LIMIT 200) TO '{events}' (HEADER)"
    )
    return home, cwd, events


@pytest.mark.parametrize("out", ["/proc/predictions.csv", "w" * 250 + ".csv"], ids=["unwritable_folder", "long_name"])
def test_predict_into_a_file_that_cannot_be_written_is_a_clear_error(trained, out):
    # main: duckdb.IOException (unwritable folder) / OSError File name too long on the staged ".<name>.partial"
    home, cwd, events = trained
    result = _cli(
        home,
        "predict",
        "--home",
        str(home),
        "--events",
        str(events),
        "--format",
        "canonical-csv",
        "--out",
        out,
        cwd=cwd,
    )
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.returncode in (0, 2)


def test_predict_does_not_overwrite_the_homes_own_state(trained):
    # main: --out <home>/settings.json replaces the settings by predictions; every later command then fails
    home, cwd, events = trained
    result = _cli(
        home,
        "predict",
        "--home",
        str(home),
        "--events",
        str(events),
        "--format",
        "canonical-csv",
        "--out",
        str(home / "settings.json"),
        cwd=cwd,
    )
    assert result.returncode == 2, result.stdout[-500:]
    _clean(_cli(home, "failures", "--home", str(home), cwd=cwd), 0)
    _clean(_cli(home, "rollback", "--home", str(home), "--model", "shopseq_next_purchase", cwd=cwd), 2)


def test_a_home_of_ingested_files_whose_settings_were_deleted_is_not_read_as_a_synthetic_utc_home(tmp_path):
    # main: with <home>/settings.json deleted by hand, shopseq run exits 0 reading the real (China time) landing as
    # synthetic UTC days and quarantines good events (the symptom of issue 18 case 1, through another door)
    home = tmp_path / "home"
    source = tmp_path / "log.csv"
    source.write_text("".join(f"{i % 7},{i % 11 + 10},3,pv,{DAY0 + 1800 * i}\n" for i in range(1, 140)))
    _clean(_cli(home, "ingest", "--home", str(home), "--format", "taobao", "--path", str(source), cwd=tmp_path), 0)
    (home / "settings.json").unlink()
    result = _cli(home, "run", "--home", str(home), "--skip-training", cwd=tmp_path)
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    if result.returncode == 0:
        with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as conn:
            assert conn.execute("SELECT count(*) FROM raw_events").fetchone()[0] == 139
    else:
        assert result.returncode == 2 and "settings.json" in result.stderr


def test_a_synthetic_run_is_refused_on_a_home_of_ingested_logs(tmp_path):
    # main: exit 0; a synthetic day (~14,000 made-up events) is written into the real landing and warehouse, and
    # is a landed day of the real shop from then on
    home = tmp_path / "home"
    source = tmp_path / "log.csv"
    source.write_text("".join(f"{i % 7},{i % 11 + 10},3,pv,{DAY0 + 1800 * i}\n" for i in range(1, 140)))
    _clean(_cli(home, "ingest", "--home", str(home), "--format", "taobao", "--path", str(source), cwd=tmp_path), 0)
    days = sorted(p.name for p in (home / "landing").iterdir() if not p.name.startswith("."))
    result = _cli(
        home,
        "run",
        "--home",
        str(home),
        "--landing-mode",
        "synthetic",
        "--start",
        "2025-03-02",
        "--skip-training",
        cwd=tmp_path,
    )
    _clean(result, 2)
    assert sorted(p.name for p in (home / "landing").iterdir() if not p.name.startswith(".")) == days
