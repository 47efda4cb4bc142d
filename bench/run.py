"""``shopseq bench``: measure every stage, side by side with a pandas path and DuckDB's floor, in one run.

Each measured path runs in its own process (``python -m bench.run --worker ...``), so its peak RSS is its own;
within a process, a sampler thread reads the resident set every 20 ms and each stage reports the peak it saw.
"""

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

DAILY_STAGES = [
    "raw_events",
    "cleaned_events",
    "sessions",
    "user_sequences",
    "user_features",
    "item_features",
    "ranking_candidates",
]
SPARK_MASTERS = ("local[2]", "local[1]")  # the first beside DuckDB, both for the scaling estimate
TRAIN_ROWS = 1_000_000
SCORE_USERS = 1_000_000


class Meter:
    """Wall time and peak resident memory of named stages of this process."""

    def __init__(self):
        self.rows: list[dict] = []
        self._peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, self.rss())
            time.sleep(0.02)

    @staticmethod
    def stolen() -> float:
        """CPU seconds the hypervisor has given to other guests instead of this machine since boot (``steal`` in
        /proc/stat): on a shared virtual machine, the same code is slower while it grows."""
        with open("/proc/stat") as stat:
            fields = stat.readline().split()  # cpu user nice system idle iowait irq softirq steal ...
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")

    @contextlib.contextmanager
    def stage(self, name: str, **extra):
        """Measure the block; ``extra`` (which the block may add to) is recorded with the stage."""
        self._peak = self.rss()
        started, stolen = time.perf_counter(), self.stolen()
        yield extra
        seconds = time.perf_counter() - started
        self.rows.append(
            {
                "stage": name,
                "seconds": round(seconds, 3),
                "peak_rss_mb": round(max(self._peak, self.rss()) / 2**20),
                "stolen_cpu_s": round(self.stolen() - stolen, 1),
                **extra,
            }
        )


def _worker_shopseq(args, meter: Meter) -> dict:
    """The pipeline's own assets (checks included), one materialisation per asset, on a files-mode home."""
    import great_expectations  # noqa: F401  - import cost (~2.5 s) outside the first stage
    from dagster import AssetSelection, DagsterInstance, materialize

    from assets import ALL_ASSETS
    from bench.data import DAY
    from resources.home import write_settings
    from workflows.definitions import build_resources

    write_settings(args.home, landing="files", timezone="UTC")
    resources = build_resources(args.home, landing_mode="files")
    instance = DagsterInstance.ephemeral()
    for stage in DAILY_STAGES:
        with meter.stage(stage):
            result = materialize(
                ALL_ASSETS,
                selection=AssetSelection.assets(stage),
                resources=resources,
                instance=instance,
                partition_key=DAY.isoformat(),
                raise_on_error=False,
            )
        if not result.success:
            raise RuntimeError(
                f"{stage} failed in the benchmark: {[e.message for e in result.all_events if e.is_failure]}"
            )
    import duckdb

    with duckdb.connect(f"{args.home}/warehouse.duckdb", read_only=True) as conn:
        sizes = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in DAILY_STAGES}
    return {"rows": sizes}


def _worker_spark(args, meter: Meter) -> dict:
    """The same day's stages on Spark local mode (``--master``): raw events as the pipeline's run of the day wrote
    them (the landing reader stays DuckDB's), then every daily statement translated from its DuckDB source
    (``spark_sql.daily_statements``) and written as the day's Parquet partition (``resources.engine.SparkLake``).
    The peak RSS is this Python process's; the JVM's memory is not in it."""
    import duckdb

    from assets.logic.spark_sql import daily_statements
    from assets.logic.warehouse_sql import day_bounds
    from bench.data import DAY
    from resources.engine import SparkLake, spark_session

    lake_home = Path(args.home) / f"spark_{args.master.replace('[', '_').replace(']', '')}"
    shutil.rmtree(lake_home, ignore_errors=True)
    lake_home.mkdir(parents=True)
    raw = lake_home / "raw_events.parquet"
    with duckdb.connect(f"{args.home}/warehouse.duckdb", read_only=True) as conn:
        conn.table("raw_events").write_parquet(str(raw))
    cores = int(args.master.removeprefix("local[").removesuffix("]"))
    with meter.stage("spark_session"):
        spark = spark_session(
            args.master,
            {
                "spark.driver.memory": "8g",
                "spark.sql.shuffle.partitions": str(4 * cores),
                "spark.ui.enabled": "false",
                "spark.driver.host": "127.0.0.1",
                "spark.driver.bindAddress": "127.0.0.1",
            },
        )
        spark.sparkContext.setLogLevel("ERROR")
    try:
        spark.read.parquet(str(raw)).createOrReplaceTempView("raw_import")
        lake = SparkLake(spark, str(lake_home))
        start, end = day_bounds(DAY)
        rows = {}
        with meter.stage("raw_events"):
            rows["raw_events"] = lake.replace_day(
                "raw_events",
                DAY,
                start,
                end,
                "SELECT * FROM raw_import WHERE event_time >= $start AND event_time < $end",
                {"start": start, "end": end},
            )
        for statement in daily_statements(DAY):
            with meter.stage(statement.table):
                rows[statement.table] = lake.replace_day(
                    statement.table, DAY, statement.start, statement.end, statement.sql, statement.params
                )
    finally:
        spark.stop()
        shutil.rmtree(lake_home, ignore_errors=True)
    return {"rows": rows}


def _worker_pandas(args, meter: Meter) -> dict:
    from bench import pandas_path
    from bench.data import DAY

    tables = pandas_path.run([args.landing], DAY, meter.stage)
    return {"rows": {name: len(frame) for name, frame in tables.items()}}


def _worker_floor(args, meter: Meter) -> dict:
    import duckdb

    with duckdb.connect() as conn:
        columns = [r[0] for r in conn.execute("DESCRIBE SELECT * FROM read_parquet(?)", [str(args.landing)]).fetchall()]
        # hash every value: count(column) alone can be answered from the Parquet statistics without reading data
        hashes = ", ".join(f"sum(hash({c}))" for c in columns)
        conn.execute("SET threads = 2")
        with meter.stage("duckdb_scan"):
            rows = conn.execute(f"SELECT count(*), {hashes} FROM read_parquet(?)", [str(args.landing)]).fetchone()[0]
    return {"rows": {"landing": rows}}


def _worker_models(args, meter: Meter) -> dict:
    """LightGBM training on 1M ranking rows and top-20 recommendations for 1M users, from the real candidates of
    the benchmark day, copied to reach the sizes (each copy's users renamed) into a scratch warehouse; training
    and scoring run through the pipeline's own code (``train_lambdarank``; ``recommend_day`` and
    ``publish_day``, each batch written to a recommendations table as the asset writes it)."""
    import numpy as np

    from assets.logic.candidates import RANKER_FEATURES, stored_ranker_rows_sql
    from assets.logic.serving import SCORE_BATCH_USERS, recommend_day
    from assets.logic.training import train_lambdarank
    from assets.models import TrainingConfig
    from assets.recommendations import publish_day
    from resources.registry import ModelVersionRef
    from resources.warehouse import Warehouse

    scratch = Path(args.home) / "scoring"  # a home of its own, read through the pipeline's Warehouse resource
    shutil.rmtree(scratch, ignore_errors=True)
    warehouse = Warehouse(home=str(scratch))
    try:
        with warehouse.connect() as conn:
            conn.execute("ATTACH ? AS bench_day (READ_ONLY)", [str(Path(args.home) / "warehouse.duckdb")])
            day, rows, users_per_copy = conn.execute(
                "SELECT any_value(as_of_date), count(*), count(DISTINCT user_id) FROM bench_day.ranking_candidates"
            ).fetchone()
            # The candidates and the user features they are read with (see ``candidates.ranker_rows_sql``), each
            # copy in the day's own row order, its users renamed by a prefix that keeps their order: the layout the
            # candidates stage writes (clustered by user), which serving's batches rely on; the item features once.
            for table in ("ranking_candidates", "user_features"):
                conn.execute(f"CREATE TABLE {table} AS FROM bench_day.{table} LIMIT 0")
            conn.execute("CREATE TABLE item_features AS FROM bench_day.item_features WHERE as_of_date = ?", [day])
            for k in range(max(math.ceil(args.train_rows / rows), math.ceil(args.score_users / users_per_copy))):
                for table in ("ranking_candidates", "user_features"):
                    conn.execute(
                        f"INSERT INTO {table} SELECT * REPLACE ('c{k}-' || user_id AS user_id) FROM bench_day.{table} "
                        "WHERE as_of_date = ?",
                        [day],
                    )
            conn.execute("DETACH bench_day")
            train = conn.execute(
                f"{stored_ranker_rows_sql('as_of_date = $day')} ORDER BY user_id, item_id LIMIT {args.train_rows}",
                {"day": day},
            ).df()
            users = conn.execute(
                f"SELECT DISTINCT user_id FROM ranking_candidates ORDER BY 1 LIMIT {args.score_users}"
            ).df()["user_id"]
        rng = np.random.default_rng(0)
        signal = train["recent_score"].fillna(0).rank(pct=True) + rng.uniform(0, 1, len(train))
        train["relevance"] = (signal > 1.6).astype(int)
        with meter.stage("train_ranker", rows=len(train)):
            booster = train_lambdarank(train, TrainingConfig().params())
        del train
        with (
            meter.stage(
                "recommend",
                users=len(users),
                candidates_per_user=round(rows / users_per_copy, 1),
                batch_users=SCORE_BATCH_USERS,
            ) as extra,
            warehouse.connect() as conn,
        ):
            # written as the recommendations asset publishes a day: each batch before the next is scored
            extra["recommendations"] = publish_day(
                conn,
                "recommendations",
                day,
                [(ModelVersionRef("bench", 0, "bench"), booster, recommend_day(conn, booster, day, users=users))],
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"rows": {"train_rows": args.train_rows, "scored_users": len(users), "features": len(RANKER_FEATURES)}}


def _worker_demo(args, meter: Meter) -> dict:
    """``shopseq demo`` on a new home, as a newcomer runs it; then, from the home's Dagster instance, the seconds of
    every asset of its runs and where each model asset spent them (its ``profile`` metadata, see
    ``assets.logic.profile``)."""
    from dagster import DagsterEventType, DagsterInstance

    from workflows.cli import main as shopseq

    shutil.rmtree(args.home, ignore_errors=True)
    with meter.stage("demo"):
        if shopseq(["demo", "--home", str(args.home), *shlex.split(args.demo_options)]) != 0:
            raise RuntimeError("shopseq demo failed in the benchmark")
    instance = DagsterInstance.get()  # the demo's, under its home
    steps, profiles = [], {}
    for run in reversed(instance.get_runs()):  # oldest first
        materialised = {
            entry.asset_materialization.asset_key.to_user_string(): entry.asset_materialization.metadata
            for entry in instance.all_logs(run.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION)
        }
        for step in sorted(instance.get_run_step_stats(run.run_id), key=lambda s: s.start_time or 0):
            steps.append({"job": run.job_name, "asset": step.step_key, "seconds": step.end_time - step.start_time})
            profile = materialised.get(step.step_key, {}).get("profile")
            if profile is not None:
                profiles[step.step_key] = profile.value
    instance.dispose()
    return {"steps": steps, "profiles": profiles}


WORKERS = {
    "shopseq": _worker_shopseq,
    "pandas": _worker_pandas,
    "floor": _worker_floor,
    "models": _worker_models,
    "demo": _worker_demo,
    "spark": _worker_spark,
}


def worker_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", choices=sorted(WORKERS))
    parser.add_argument("--home")
    parser.add_argument("--landing")
    parser.add_argument("--train-rows", type=int, default=TRAIN_ROWS)
    parser.add_argument("--score-users", type=int, default=SCORE_USERS)
    parser.add_argument("--demo-options", default="")
    parser.add_argument("--master", default="local[2]")
    args = parser.parse_args(argv)
    meter = Meter()
    extra = WORKERS[args.worker](args, meter)
    print("BENCH " + json.dumps({"stages": meter.rows, **extra}), flush=True)


def _peak_mb(worker: dict) -> int:
    """A worker's peak resident memory over its stages, as its sampler saw it. Not ``ru_maxrss``: on Linux it
    survives fork + exec, so a worker would report the benchmark driver's own peak (the generated day)."""
    return max(stage["peak_rss_mb"] for stage in worker["stages"])


def _run_worker(name: str, **options) -> dict:
    command = [sys.executable, "-m", "bench.run", "--worker", name]
    for key, value in options.items():
        command.append(f"--{key.replace('_', '-')}={value}")  # one word: a value may start with "--"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    out = subprocess.run(command, capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parent.parent)
    lines = [line for line in out.stdout.splitlines() if line.startswith("BENCH ")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark worker {name} failed ({out.returncode}): {out.stderr[-3000:]}")
    return json.loads(lines[-1][len("BENCH ") :])


def _machine() -> str:
    import duckdb
    import lightgbm
    import pandas as pd

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory = next(
        (
            int(line.split()[1]) / 2**20
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        ),
        0,
    )
    return (
        f"{os.cpu_count()} cores ({cpu}), {memory:.0f} GiB RAM, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, DuckDB {duckdb.__version__}, pandas {pd.__version__}, "
        f"LightGBM {lightgbm.__version__}"
    )


def check_equivalence(workdir: Path, events: int) -> list[str]:
    """The pandas path and the pipeline on the same small day: the differences (none expected)."""
    import duckdb

    from bench import pandas_path
    from bench.data import DAY, make_day

    folder = workdir / f"check_{events}"
    landing = make_day(folder, events)
    _run_worker("shopseq", home=folder, landing=landing)
    tables = pandas_path.run([str(landing)], DAY, pandas_path.timed_noop)
    with duckdb.connect(str(folder / "warehouse.duckdb"), read_only=True) as conn:
        return pandas_path.compare(tables, conn, DAY)


def _mark(ok: bool) -> str:
    return "met" if ok else "**not met**"


def report(results: dict, check: list[str], check_events: int, models: dict | None, machine: str, started: str) -> str:
    from tabulate import tabulate

    lines = [
        f"# Benchmarks\n\nRun {started} with `shopseq bench {results['argv']}` on {machine}.\n",
        f"Pandas path checked against the pipeline on a {check_events:,}-event day: "
        + (
            "same results (row counts of raw, quarantine, cleaned, sessions; every compared column of cleaned "
            "events, sessions, sequences, user and item features)."
            if not check
            else "DIFFERENT: " + "; ".join(check)
        )
        + "\n",
    ]
    summary = {}
    for events, run in results["sizes"].items():
        shopseq = {r["stage"]: r for r in run["shopseq"]["stages"]}
        pandas = {r["stage"]: r for r in run["pandas"]["stages"]}
        floor = run["floor"]["stages"][0]["seconds"]
        rows = []
        for stage in DAILY_STAGES:
            ours, theirs = shopseq[stage], pandas.get(stage)
            rows.append(
                [
                    stage,
                    f"{ours['seconds']:.2f}",
                    f"{events / ours['seconds']:,.0f}",
                    ours["peak_rss_mb"],
                    f"{theirs['seconds']:.2f}" if theirs else "not built",
                    theirs["peak_rss_mb"] if theirs else "",
                    f"{theirs['seconds'] / ours['seconds']:.1f}x" if theirs else "",
                ]
            )
        common = [s for s in DAILY_STAGES if s in pandas]
        total = sum(shopseq[s]["seconds"] for s in DAILY_STAGES)
        ours_common = sum(shopseq[s]["seconds"] for s in common)
        theirs_common = sum(pandas[s]["seconds"] for s in common)
        rows.append(
            [
                "**landing → features**",
                f"**{total:.2f}**",
                f"{events / total:,.0f}",
                _peak_mb(run["shopseq"]),
                "",
                "",
                "",
            ]
        )
        rows.append(
            [
                f"same stages as pandas ({len(common)})",
                f"{ours_common:.2f}",
                f"{events / ours_common:,.0f}",
                "",
                f"{theirs_common:.2f}",
                _peak_mb(run["pandas"]),
                f"{theirs_common / ours_common:.1f}x",
            ]
        )
        rows.append(
            [
                "DuckDB floor: scan every column",
                f"{floor:.2f}",
                f"{events / floor:,.0f}",
                _peak_mb(run["floor"]),
                "",
                "",
                f"pipeline = {total / floor:.0f}x floor",
            ]
        )
        lines.append(f"\n## {events:,} events (generated in {run['generate_seconds']:.1f} s, not counted)\n")
        lines.append(
            tabulate(
                rows,
                headers=[
                    "stage",
                    "shopseq s",
                    "events/s",
                    "peak RSS MB",
                    "pandas s",
                    "pandas peak RSS MB",
                    "pandas / shopseq",
                ],
                tablefmt="github",
            )
        )
        lines.append(_steal_line({"the pipeline": run["shopseq"], "the pandas path": run["pandas"]}))
        if all(f"spark {master}" in run for master in SPARK_MASTERS):
            lines.append(spark_report(events, shopseq, run))
        summary[events] = {
            "total": total,
            "rss": _peak_mb(run["shopseq"]),
            "pandas_ratio": theirs_common / ours_common,
            "floor_ratio": total / floor,
        }
    lines.append("\n## Targets (../shared/design.md)\n")
    targets = []
    big = max(summary)
    s = summary[big]
    targets.append([f"{big:,} events, landing → features ≤ 90 s", f"{s['total']:.1f} s", _mark(s["total"] <= 90)])
    targets.append([f"{big:,} events, peak RSS ≤ 4 GiB", f"{s['rss'] / 1024:.2f} GiB", _mark(s["rss"] <= 4096)])
    targets.append(
        ["≥ 5x faster than the pandas path (same stages)", f"{s['pandas_ratio']:.2f}x", _mark(s["pandas_ratio"] >= 5)]
    )
    targets.append(["within 10x of the DuckDB floor", f"{s['floor_ratio']:.0f}x", _mark(s["floor_ratio"] <= 10)])
    if len(summary) > 1:
        small = min(summary)
        growth = (summary[big]["total"] / summary[small]["total"]) / (big / small)
        targets.append(
            [
                f"linear growth {small:,} → {big:,} (time ratio / size ratio ≤ 1.25)",
                f"{growth:.2f}",
                _mark(growth <= 1.25),
            ]
        )
    if models:
        stages = {r["stage"]: r for r in models["stages"]}
        train, rec = stages["train_ranker"], stages["recommend"]
        targets.append(
            [
                f"LightGBM LambdaRank training on {train['rows']:,} ranking rows ≤ 30 s",
                f"{train['seconds']:.1f} s ({train['peak_rss_mb']} MB)",
                _mark(train["seconds"] <= 30),
            ]
        )
        targets.append(
            [
                f"recommendations for {rec['users']:,} users ≤ 120 s ({rec['candidates_per_user']} candidates "
                f"each, read from the warehouse and written back in batches of {rec['batch_users']:,} users; "
                "LightGBM + rules + reasons)",
                f"{rec['seconds']:.1f} s ({rec['peak_rss_mb']} MB, {rec['recommendations']:,} rows)",
                _mark(rec["seconds"] <= 120),
            ]
        )
    lines.append(tabulate(targets, headers=["target", "measured", ""], tablefmt="github"))
    if models:
        lines.append(_steal_line({"training and scoring": models}))
    return "\n".join(lines) + "\n"


def spark_report(events: int, shopseq: dict[str, dict], run: dict) -> str:
    """The day's stages on Spark beside DuckDB, and how Spark's time moved from one core to two."""
    from tabulate import tabulate

    two, one = ({r["stage"]: r for r in run[f"spark {m}"]["stages"]} for m in SPARK_MASTERS)
    rows = []
    for stage in DAILY_STAGES:
        rows.append(
            [
                stage,
                f"{shopseq[stage]['seconds']:.2f}",
                f"{two[stage]['seconds']:.2f}",
                f"{one[stage]['seconds']:.2f}",
                f"{one[stage]['seconds'] / two[stage]['seconds']:.2f}x",
            ]
        )
    totals = [sum(t[s]["seconds"] for s in DAILY_STAGES) for t in (shopseq, two, one)]
    rows.append(["**landing → features**", *(f"**{t:.2f}**" for t in totals), f"**{totals[2] / totals[1]:.2f}x**"])
    rows.append(
        [
            "Spark session start (not counted)",
            "",
            f"{two['spark_session']['seconds']:.2f}",
            f"{one['spark_session']['seconds']:.2f}",
            "",
        ]
    )
    return (
        f"\nThe same {events:,}-event day on Spark local mode (`--engine spark`: raw events as the pipeline wrote "
        "them, every later statement translated from its DuckDB source and written as a Parquet day partition):\n\n"
        + tabulate(
            rows,
            headers=["stage", "DuckDB s", "Spark local[2] s", "Spark local[1] s", "local[1] / local[2]"],
            tablefmt="github",
        )
        + f"\n\nSpark local[2] / DuckDB: {totals[1] / totals[0]:.1f}x the time. From one core to two Spark took "
        f"{totals[2] / totals[1]:.2f}x less time (2.00x would be linear); with the same efficiency per doubling, "
        f"n cores would take about {totals[1]:.0f} s x ({totals[1] / totals[2]:.2f})^log2(n / 2), before the "
        "shuffle's network costs a cluster adds.\n"
        + _steal_line({f"Spark {m}": run[f"spark {m}"] for m in SPARK_MASTERS})
    )


def demo_report(demo: dict) -> str:
    """``shopseq demo``: each asset's seconds in the order they ran, where the training sets and the model assets
    spent theirs, and the demo's targets."""
    from tabulate import tabulate

    from assets.logic.catalogue import TRAINING_SETS

    total = demo["stages"][0]["seconds"]
    per_job: dict[str, float] = {}
    for step in demo["steps"]:
        per_job[step["job"]] = per_job.get(step["job"], 0.0) + step["seconds"]
    lines = [
        f"\n## shopseq demo ({total:.1f} s on a new home; landing, the summary and MLflow's start-up are the rest)\n",
        tabulate(
            [[s["job"], s["asset"], f"{s['seconds']:.1f}"] for s in demo["steps"]]
            + [[f"**{job}**", "", f"**{seconds:.1f}**"] for job, seconds in per_job.items()],
            headers=["job", "asset", "seconds"],
            tablefmt="github",
        ),
    ]
    profiles = {"training set": {}, "model asset": {}}
    for asset, steps in demo["profiles"].items():
        profiles["training set" if asset in TRAINING_SETS else "model asset"][asset] = steps
    lines.append(
        "\nWhere each training set's and model asset's seconds went (`assets/logic/profile.py`; a step's time leaves "
        "out the steps timed inside it):\n"
    )
    for kind, per_asset in profiles.items():
        if per_asset:  # results saved before training sets were profiled have none
            lines.append("\n" + _profile_table(kind, per_asset))
    models = sum(sum(p.values()) for p in profiles["model asset"].values())
    targets = [
        ["shopseq demo ≤ 90 s", f"{total:.1f} s", _mark(total <= 90)],
        [
            "every model of the demo trained, evaluated and registered ≤ 30 s together",
            f"{models:.1f} s",
            _mark(models <= 30),
        ],
    ]
    lines.append("\n" + tabulate(targets, headers=["target", "measured", ""], tablefmt="github"))
    lines.append(_steal_line({"the demo": demo}))
    return "\n".join(lines) + "\n"


def _profile_table(kind: str, profiles: dict[str, dict[str, float]]) -> str:
    """One row per asset of ``kind``: the seconds of each step of its profile, and its total."""
    from tabulate import tabulate

    columns = sorted({step for p in profiles.values() for step in p}, key=lambda c: (c == "other", c))
    return tabulate(
        [
            [asset, *(f"{p[c]:.2f}" if c in p else "" for c in columns), f"{sum(p.values()):.1f}"]
            for asset, p in profiles.items()
        ],
        headers=[kind, *columns, "total"],
        tablefmt="github",
    )


def _steal_line(workers: dict[str, dict]) -> str:
    """How much CPU the hypervisor took while each worker's stages ran (empty for results saved before it was
    measured)."""
    parts = []
    for name, worker in workers.items():
        stages = worker["stages"]
        if all("stolen_cpu_s" in stage for stage in stages):
            stolen, wall = sum(stage["stolen_cpu_s"] for stage in stages), sum(stage["seconds"] for stage in stages)
            share = stolen / (wall * os.cpu_count())
            parts.append(f"{name} {stolen:.1f} s in {wall:.0f} s of wall time ({share:.1%} of the cores)")
    return (
        "\nCPU time the hypervisor gave to other guests (steal in /proc/stat): " + "; ".join(parts) + ".\n"
        if parts
        else ""
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="shopseq bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument(
        "--workdir", default=".shopseq-bench", help="where the days and warehouses go (default %(default)s)"
    )
    parser.add_argument("--out", help="write the report there (e.g. BENCHMARKS.md)")
    parser.add_argument("--check-events", type=int, default=20_000, help="size of the pandas equivalence check")
    parser.add_argument("--train-rows", type=int, default=TRAIN_ROWS)
    parser.add_argument("--score-users", type=int, default=SCORE_USERS)
    parser.add_argument("--skip-models", action="store_true", help="no training / scoring benchmark")
    parser.add_argument("--report-only", action="store_true", help="write the report from the workdir's saved results")
    parser.add_argument(
        "--engine",
        choices=["duckdb", "spark"],
        default="duckdb",
        help="spark: also each day's stages on Spark local[2] and local[1] (the spark extra and Java 17)",
    )
    parser.add_argument(
        "--demo", action="store_true", help="only `shopseq demo` on a new home, with where each model spends its time"
    )
    parser.add_argument("--demo-options", default="", help="options of that demo, e.g. '--days 4' (default: none)")
    args = parser.parse_args(argv)
    if args.demo:
        print("shopseq demo on a new home ...", flush=True)
        demo = _run_worker("demo", home=Path(args.workdir).resolve() / "demo", demo_options=args.demo_options)
        text = demo_report(demo)
        print(text)
        if args.out:
            Path(args.out).write_text(text)
        return 0
    from bench.data import make_day

    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    saved = workdir / "results.json"  # every measurement as soon as it is made, for --report-only
    results = {
        "argv": " ".join(argv if argv is not None else sys.argv[1:]),
        "started": started,
        "sizes": {},
        "check": None,
        "models": None,
    }

    def save() -> None:
        saved.write_text(json.dumps(results, indent=1))

    if args.report_only:
        if not saved.exists():
            raise SystemExit(f"error: no saved results in {saved}: run shopseq bench with this --workdir first")
        results = json.loads(saved.read_text())
        results["sizes"] = {int(k): v for k, v in results["sizes"].items()}
    else:
        print(f"checking the pandas path against the pipeline on {args.check_events:,} events ...", flush=True)
        results["check"] = check_equivalence(workdir, args.check_events)
        print("  same results" if not results["check"] else "  DIFFERENT: " + "; ".join(results["check"]), flush=True)
        save()
        for events in sorted(args.events):
            folder = workdir / f"day_{events}"
            t = time.perf_counter()
            landing = make_day(folder, events)
            run = {"generate_seconds": time.perf_counter() - t}
            for name in ("floor", "shopseq", "pandas"):
                print(f"{events:,} events: {name} ...", flush=True)
                run[name] = _run_worker(name, home=folder, landing=landing)
                results["sizes"][events] = run
                save()
            if args.engine == "spark":  # from the raw events the pipeline's run just wrote
                for master in SPARK_MASTERS:
                    print(f"{events:,} events: Spark {master} ...", flush=True)
                    run[f"spark {master}"] = _run_worker("spark", home=folder, master=master)
                    save()
        if not args.skip_models:
            print(
                f"training on {args.train_rows:,} ranking rows and scoring {args.score_users:,} users ...", flush=True
            )
            results["models"] = _run_worker(
                "models",
                home=workdir / f"day_{min(args.events)}",
                train_rows=args.train_rows,
                score_users=args.score_users,
            )
            save()
    text = report(results, results["check"], args.check_events, results["models"], _machine(), results["started"])
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    if "--worker" in sys.argv:
        worker_main(sys.argv[1:])
    else:
        sys.exit(main())
