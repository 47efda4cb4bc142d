"""End to end through the command lines a newcomer types: shopseq demo, then dagster asset materialize."""

import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pytest
from dagster import DagsterInstance

from bench.run import DAILY_STAGES
from tests.samples import REPO, SHARED, home_env, needs_samples, run_cli

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    home = tmp_path_factory.mktemp("demo")
    out = run_cli(
        "demo", "--days", "5", "--events-per-day", "1500", home=home, cwd=tmp_path_factory.mktemp("cwd"), timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return home, out.stdout


def test_demo_prints_progress_models_beside_baselines_and_ui_commands(demo):
    home, stdout = demo
    for stage in (
        "[  landing]",
        "[ingestion]",
        "[ cleaning]",
        "[sequences]",
        "[ features]",
        "[ training]",
        "[  serving]",
    ):
        assert stage in stdout
    assert "Temporal hold-out" in stdout and "popularity" in stdout and "repeat_recent" in stdout
    assert "champion v1" in stdout
    assert f"shopseq ui --home {home}" in stdout and "mlflow ui --backend-store-uri" in stdout
    # the demo launched the code location's jobs: the Dagster UI lists them as runs of those jobs, in order
    instance = DagsterInstance.from_config(str(home / "dagster_home"))
    runs = [(r.job_name, r.status.value) for r in reversed(instance.get_runs())]
    instance.dispose()
    assert runs == [("daily_pipeline", "SUCCESS"), ("training", "SUCCESS"), ("publish", "SUCCESS")]


def test_demo_leaves_every_stage_and_a_champion(demo):
    home, _ = demo
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as conn:
        for table in (
            *DAILY_STAGES,
            "next_action_training_set",
            "ranker_training_set",
            "model_evaluations",
            "recommendations",
            "next_action_predictions",
        ):
            assert conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] > 0, table
        unnamed = conn.execute("SELECT count(*) FROM recommendations WHERE model_version IS NULL").fetchone()[0]
        assert unnamed == 0
    from resources import ModelRegistry

    registry = ModelRegistry(home=str(home))
    assert registry.champion("shopseq_next_item_ranker").version == 1
    assert registry.champion("shopseq_next_purchase").version == 1


def test_promotions_are_recorded_and_rollback_needs_a_previous_champion(demo, tmp_path):
    home, _ = demo
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as conn:
        history = conn.execute("SELECT model_name, from_version, to_version, changed_by FROM alias_history").fetchall()
    assert ("shopseq_next_item_ranker", None, 1, "champion_promotion") in history
    out = run_cli("rollback", "--model", "shopseq_next_item_ranker", home=home, cwd=tmp_path)
    assert out.returncode != 0 and "first champion on record" in out.stderr
    out = run_cli(
        "promote", "--model", "shopseq_next_item_ranker", "--version", "9", "--reason", "try", home=home, cwd=tmp_path
    )
    assert out.returncode != 0 and "has no version 9" in out.stderr


def test_explain_names_the_model_run_partitions_and_checks_behind_a_users_rows(demo, tmp_path):
    home, _ = demo
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as conn:
        user, day, run_id = conn.execute(
            "SELECT user_id, as_of_date, run_id FROM recommendations ORDER BY as_of_date DESC, user_id LIMIT 1"
        ).fetchone()
    out = run_cli("explain", "--user", user, "--day", str(day), home=home, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"model shopseq_next_item_ranker v1 (learned policy lightgbm), MLflow run {run_id}" in out.stdout
    assert f"Checks of the partition {day}:" in out.stdout
    for check in ("recommendations_suite passed", "user_features_no_leakage passed", "raw_events_suite passed"):
        assert check in out.stdout
    out = run_cli("explain", "--user", "nobody", "--day", str(day), home=home, cwd=tmp_path)
    assert out.returncode != 0 and "no recommendation or prediction row for user 'nobody'" in out.stderr


def test_dagster_cli_materialises_one_partition_idempotently(demo):
    home, _ = demo
    counts = []
    for _ in range(2):
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "dagster",
                "asset",
                "materialize",
                "-m",
                "workflows.definitions",
                "--select",
                "raw_events,cleaned_events,sessions",
                "--partition",
                "2025-03-02",
            ],
            cwd=REPO,
            env=home_env(home),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0 and "RUN_SUCCESS" in out.stderr, out.stderr[-3000:]
        with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as conn:
            counts.append(
                [
                    conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                    for t in ("raw_events", "cleaned_events", "sessions")
                ]
            )
    assert counts[0] == counts[1]


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
    out = run_cli("ingest", "--format", "taobao", "--path", str(source), home=home, cwd=cwd)
    assert out.returncode == 0, out.stderr[-3000:]
    total = next(line for line in out.stdout.splitlines() if line.strip().startswith("total")).split()
    assert total[1:4] == ["1804", "1800", "4"]  # read, accepted, quarantined
    assert "(Asia/Shanghai days)" in out.stdout

    out = run_cli("run", "--skip-training", home=home, cwd=cwd)  # the days come from the landing folders
    assert out.returncode == 0, out.stderr[-3000:]
    assert "5 day(s) 2017-11-25..2017-11-29" in out.stdout
    published = [line for line in out.stdout.splitlines() if line.startswith("[  serving] recommendations")]
    assert len(published) == 1 and "not published: no champion for its model(s) yet" in published[0], published
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM raw_events").fetchone()[0] == 1800
        assert conn.execute("SELECT count(*) FROM raw_events_quarantine").fetchone()[0] == 4
        # China-time days: the first event, 2017-11-25 00:05 in Shanghai, is stored in UTC.
        assert str(conn.execute("SELECT min(event_time) FROM raw_events").fetchone()[0]) == "2017-11-24 16:05:00"

    missing = tmp_path / "nope.csv.gz"
    out = run_cli("ingest", "--format", "taobao", "--path", str(missing), home=home, cwd=cwd)
    assert out.returncode == 2 and str(missing) in out.stderr and "file not found" in out.stderr


def _predict(home: Path, events: Path, fmt: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_cli(
        "predict", "--events", str(events), "--format", fmt, "--out", str(out), *extra, home=home, cwd=out.parent
    )


def _assert_ranked_lists(frame, k: int) -> None:
    """k distinct items per sequence, ranks 1..k, scored rows by falling score and fallbacks after them."""
    for sequence, rows in frame.groupby("sequence_id"):
        rows = rows.sort_values("rank")
        assert rows["rank"].tolist() == list(range(1, k + 1)), sequence
        assert rows["item_id"].is_unique, sequence
        scored = rows[rows["source"] != "fallback"]
        assert scored["score"].is_monotonic_decreasing, sequence
        assert (rows["source"] == "fallback").tolist() == sorted((rows["source"] == "fallback").tolist()), sequence
        assert rows["reason"].str.len().gt(0).all(), sequence
    next_event = frame.filter(like="p_next_")
    assert next_event.shape[1] == 6 and np.allclose(next_event.sum(axis=1), 1.0)  # one probability per event type
    for column in ("p_purchase", "p_add_to_cart", *next_event.columns):
        assert frame[column].between(0, 1).all()
        assert (frame.groupby("sequence_id")[column].nunique() == 1).all()


def test_predict_scores_known_cold_and_search_only_sequences(demo, tmp_path):
    import pandas as pd

    home, _ = demo
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as conn:
        known = conn.execute(
            """SELECT user_id, event_type, item_id, category_id, event_time FROM cleaned_events
               WHERE user_id = (SELECT user_id FROM cleaned_events WHERE event_type = 'purchase' AND NOT is_bot
                                ORDER BY event_time DESC, user_id LIMIT 1)
               ORDER BY event_time"""
        ).df()
    bought = set(known.loc[known["event_type"] == "purchase", "item_id"])
    lines = ["event_time,user_id,event_type,item_id,category_id,query"]
    lines += [f"{r.event_time},{r.user_id},{r.event_type},{r.item_id},{r.category_id}," for r in known.itertuples()]
    last = known["event_time"].max()
    lines += [
        f"{last},cold,view,zz-1,zz-cat,",
        f"{last},cold,add_to_cart,zz-2,zz-cat,",
        f"{last},searcher,search,,,red shoes",
        f"{last},,view,zz-3,,",
    ]  # the last line has no user
    source = tmp_path / "events.csv"
    source.write_text("\n".join(lines) + "\n")

    out = _predict(home, source, "canonical-csv", tmp_path / "predictions.parquet", "--k", "10")
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"{len(known) + 4} rows = {len(known) + 3} accepted + 1 quarantined (missing_user 1)" in out.stdout
    assert "are on items the home knows" in out.stdout and "warning" not in out.stdout  # the home's own shop
    frame = pd.read_parquet(tmp_path / "predictions.parquet")
    assert set(frame["sequence_id"]) == {known["user_id"].iloc[0], "cold", "searcher"}
    _assert_ranked_lists(frame, 10)
    by_sequence = dict(tuple(frame.groupby("sequence_id")))
    assert not bought & set(by_sequence[known["user_id"].iloc[0]]["item_id"])  # purchased items are excluded
    cold = by_sequence["cold"]
    assert {"zz-1", "zz-2"} <= set(cold.loc[cold["source"] == "recent", "item_id"])  # its own, unknown items
    assert set(by_sequence["searcher"]["source"]) <= {"popular", "fallback"}
    assert frame.groupby("sequence_id")["events"].first().to_dict() == {
        known["user_id"].iloc[0]: len(known),
        "cold": 2,
        "searcher": 1,
    }

    out = _predict(home, source, "canonical-csv", tmp_path / "again.csv", "--model-version", "99")
    assert out.returncode != 0 and "has no version 99" in out.stderr
    assert not (tmp_path / "again.csv").exists()


@needs_samples
@pytest.mark.parametrize(
    "fmt, path, sequences",
    [
        ("diginetica", "diginetica/sample_train-item-views.csv", None),  # sessions, mostly without users
        ("taobao", "taobao/UserBehavior_head_84k.csv", 815),
    ],
)
def test_predict_runs_on_the_shared_samples(demo, tmp_path, fmt, path, sequences):
    import pandas as pd

    home, _ = demo
    out = _predict(home, SHARED / path, fmt, tmp_path / "predictions.csv")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "warning: under 10% of the file's events are on items this home knows" in out.stdout  # another shop's
    frame = pd.read_csv(tmp_path / "predictions.csv", dtype={"sequence_id": str, "item_id": str})
    _assert_ranked_lists(frame, 20)
    if sequences is None:  # one sequence per session without a user, one per user otherwise
        raw = pd.read_csv(SHARED / path, sep=";", dtype=str)
        sequences = raw.loc[raw["user_id"].isna(), "session_id"].nunique() + raw["user_id"].nunique()
    assert frame["sequence_id"].nunique() == sequences


def test_predict_reads_every_events_option_and_writes_a_hostile_out_name_as_a_name(demo, tmp_path):
    """``--events A --events B`` scores both files (the last option used to win), and an output name made to
    break out of the COPY statement is a file name: nothing else is written, nothing executed."""
    import pandas as pd

    home, _ = demo
    header = "event_time,user_id,event_type,item_id,category_id,query"
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    first.write_text(f"{header}\n2025-03-05 10:00:00,alice,view,zz-1,zz-cat,\n")
    second.write_text(f"{header}\n2025-03-05 11:00:00,bob,view,zz-2,zz-cat,\n")
    folder = tmp_path / "it's"
    folder.mkdir()
    out = folder / "p'); COPY (SELECT 1) TO 'canary.csv'; --.csv"
    run = run_cli(
        "predict",
        "--events",
        str(first),
        "--events",
        str(second),
        "--format",
        "canonical-csv",
        "--k",
        "5",
        "--out",
        str(out),
        home=home,
        cwd=folder,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert sorted(p.name for p in folder.iterdir()) == [out.name]
    assert set(pd.read_csv(out)["sequence_id"]) == {"alice", "bob"}

    for bad, says in (
        (["--k", "0"], "--k"),
        (["--out", str(tmp_path / "missing" / "p.csv")], "does not exist"),
        (["--out", str(folder)], "--out"),
    ):
        run = run_cli(
            "predict",
            "--events",
            str(first),
            "--format",
            "canonical-csv",
            *(["--out", str(tmp_path / "p.csv")] if bad[0] != "--out" else []),
            *bad,
            home=home,
            cwd=tmp_path,
        )
        assert run.returncode == 2 and says in run.stderr and "Traceback" not in run.stderr, run.stderr[-2000:]
        assert not (tmp_path / "p.csv").exists()
