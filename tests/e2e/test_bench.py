"""The benchmark itself works (a tiny run, no timing assertions): every stage measured on both paths, the pandas
path equal to the pipeline, the report written with the targets marked."""

from pathlib import Path

import pytest

from bench.run import DAILY_STAGES
from tests.samples import run_cli

pytestmark = pytest.mark.e2e


def _bench(workdir: Path, out: Path, *options: str) -> str:
    """The report of ``shopseq bench *options`` run in ``workdir``, written to ``out``."""
    run = run_cli("bench", *options, "--workdir", str(workdir), "--out", str(out), timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    return out.read_text()


def test_a_tiny_benchmark_measures_every_stage_and_writes_the_report(tmp_path):
    report = _bench(
        tmp_path / "work",
        tmp_path / "BENCHMARKS.md",
        *("--events", "4000", "8000", "--check-events", "4000", "--train-rows", "4000", "--score-users", "300"),
    )
    assert "same results" in report
    for stage in (*DAILY_STAGES, "DuckDB floor", "landing → features"):
        assert stage in report, stage
    for heading in (
        "## 4,000 events",
        "## 8,000 events",
        "linear growth 4,000 → 8,000",
        "training on 4,000 ranking rows",
        "recommendations for 300 users",
    ):
        assert heading in report, heading
    # each of the seven targets is a row marked met or not met
    targets = [line for line in report.split("## Targets")[1].splitlines() if line.startswith("| ")][1:]
    verdicts = [row.rstrip(" |").rsplit("|", 1)[-1].strip() for row in targets]
    assert len(verdicts) == 7 and set(verdicts) <= {"met", "**not met**"}, targets
    # the CPU the hypervisor took, once per size and once for the models: without it, two runs' seconds do not compare
    assert report.count("steal in /proc/stat") == 3


def test_bench_demo_reports_each_asset_and_where_each_training_set_and_model_spent_its_seconds(tmp_path):
    report = _bench(tmp_path / "work", tmp_path / "demo.md", "--demo", "--demo-options=--days 5 --events-per-day 1500")
    assert "| daily_pipeline " in report and "| publish " in report and "shopseq demo ≤ 90 s" in report
    sets, models = (
        report.split("Where each training set's and model asset's")[1].split("| target")[0].split("| model asset")
    )
    assert all(step in sets.split("| training set")[1].splitlines()[0] for step in ("build", "store", "suite", "total"))
    for asset in ("ranker_training_set", "session_training_set", "next_event_training_set"):
        assert f"| {asset} " in sets and f"| {asset} " not in models, asset
    header = models.splitlines()[0]
    assert all(step in header for step in ("read", "boost", "evaluate", "bootstrap", "mlflow", "other", "total"))
    for asset in ("next_purchase_model", "next_item_ranker", "next_event_model", "session_next_item_model"):
        assert f"| {asset} " in models, asset
