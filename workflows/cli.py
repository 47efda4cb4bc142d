"""The ``shopseq`` command line: demo, run, and the commands that open the UIs on a home folder."""

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path

DAGSTER_YAML = """\
# Instance settings for DAGSTER_HOME (shopseq demo writes the same file to <home>/dagster_home).
telemetry:
  enabled: false
# One writer at a time on the DuckDB warehouse: every asset that writes it claims the
# "warehouse" pool, and the pool admits one step at a time across all runs.
concurrency:
  pools:
    default_limit: 1
"""

STAGES = [
    ("ingestion", "raw_events"),
    ("cleaning", "cleaned_events"),
    ("sequences", "sessions"),
    ("features", "ranking_candidates"),
]
SUMMARY_TABLES = [
    "raw_events", "raw_events_quarantine", "cleaned_events", "sessions", "user_sequences", "user_features",
    "item_features", "ranking_candidates", "next_action_training_set", "ranker_training_set", "model_evaluations",
    "promotion_log", "recommendations", "next_action_predictions",
]


def prepare_home(home: str) -> Path:
    """Create the home folder, point Dagster and MLflow at it, and return it (absolute)."""
    root = Path(home).expanduser().resolve()
    dagster_home = root / "dagster_home"
    dagster_home.mkdir(parents=True, exist_ok=True)
    (dagster_home / "dagster.yaml").write_text(DAGSTER_YAML)
    os.environ["SHOPSEQ_HOME"] = str(root)
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    return root


def _progress(message: str) -> None:
    print(message, flush=True)


class Pipeline:
    """Runs the asset graph in-process against one home, recording runs in its Dagster instance."""

    def __init__(self, home: Path, landing_mode: str = "synthetic", log_level: str = "WARNING"):
        from dagster import DagsterInstance

        from workflows.definitions import build_resources

        self.home = home
        self.log_level = log_level
        self.resources = build_resources(
            str(home), tracking_uri=os.environ.get("SHOPSEQ_MLFLOW_TRACKING_URI", ""), landing_mode=landing_mode
        )
        self.instance = DagsterInstance.get()

    def materialize(self, groups: tuple[str, ...], start: dt.date | None = None, end: dt.date | None = None):
        from dagster import AssetSelection, materialize

        from assets import ALL_ASSETS

        tags = {}
        if start is not None:
            tags = {
                "dagster/asset_partition_range_start": start.isoformat(),
                "dagster/asset_partition_range_end": (end or start).isoformat(),
            }
        result = materialize(
            ALL_ASSETS,
            selection=AssetSelection.groups(*groups),
            resources=self.resources,
            instance=self.instance,
            tags=tags,
            run_config={"loggers": {"console": {"config": {"log_level": self.log_level}}}},
            raise_on_error=False,
        )
        if not result.success:
            failed = [e for e in result.all_events if e.is_failure or e.event_type_value == "ASSET_CHECK_EVALUATION"]
            details = "; ".join(
                (e.step_key or "") + ": " + (e.message or "")[:400]
                for e in failed
                if e.is_failure or not e.event_specific_data.asset_check_evaluation.passed
            )
            raise RuntimeError(f"stage {'/'.join(groups)} failed (run {result.run_id}): {details}")
        return result

    def run(self, start: dt.date, end: dt.date, train: bool = True) -> None:
        """Daily stages for every day of ``[start, end]``, then training, then publishing ``end``."""
        days = (end - start).days + 1
        for group, table in STAGES:
            began = time.perf_counter()
            _progress(f"[{group:>9}] {days} day(s) {start}..{end} ...")
            self.materialize((group,), start, end)
            _progress(f"[{group:>9}] done in {time.perf_counter() - began:5.1f} s ({self.count(table):,} rows in {table})")
        if train:
            began = time.perf_counter()
            _progress("[ training] training sets, LightGBM models, hold-out evaluation, promotion ...")
            self.materialize(("training",))
            _progress(f"[ training] done in {time.perf_counter() - began:5.1f} s")
        began = time.perf_counter()
        _progress(f"[  serving] recommendations and next-action predictions for {end} ...")
        self.materialize(("serving",), end, end)
        _progress(f"[  serving] done in {time.perf_counter() - began:5.1f} s ({self.count('recommendations'):,} rows in recommendations)")

    def count(self, table: str) -> int:
        with self.resources["warehouse"].connect() as conn:
            exists = conn.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [table]
            ).fetchone()[0]
            return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]) if exists else 0


def summary(pipeline: Pipeline, users: int = 3) -> str:
    """Rows per stage, the models beside their baselines, a few users' recommendations, the UI commands."""
    import pandas as pd

    lines = ["", "Rows per table:"]
    lines += [f"  {t:<26} {pipeline.count(t):>10,}" for t in SUMMARY_TABLES]
    with pipeline.resources["warehouse"].connect() as conn:
        evaluation = conn.execute(
            """SELECT * FROM model_evaluations
               WHERE (model_name, model_version) IN (SELECT (model_name, max(model_version)) FROM model_evaluations GROUP BY model_name)
                 AND metric IN ('recall@20', 'ndcg@20', 'hr@20', 'auc', 'pr_auc', 'brier')"""
        ).df()
        decisions = conn.execute(
            "SELECT model_name, champion_version, decision, reason FROM promotion_log ORDER BY decided_at DESC LIMIT 2"
        ).df()
        recs = conn.execute(
            """SELECT user_id, list(item_id ORDER BY rank)[1:5] AS top_5, any_value(model_name) AS model,
                      any_value(model_version) AS version
               FROM recommendations WHERE as_of_date = (SELECT max(as_of_date) FROM recommendations)
               GROUP BY user_id ORDER BY user_id LIMIT ?""",
            [users],
        ).df()
    holdout = evaluation["holdout_day"].max() if len(evaluation) else "?"
    lines += ["", f"Temporal hold-out (features as of {pd.Timestamp(holdout).date()}, targets on the next day):"]
    table = evaluation.pivot_table(index=["model_name", "target", "metric"], columns="method", values="value")
    ordered = [c for c in ["model", "recent_covis_pop", "repeat_recent", "popularity", "buy_history_rule", "base_rate"] if c in table.columns]
    lines += ["  " + line for line in table[ordered].round(3).to_string(na_rep="").splitlines()]
    lines += ["", "Promotion:"] + [f"  {r.model_name}: champion v{r.champion_version} ({r.decision}: {r.reason})" for r in decisions.itertuples()]
    lines += ["", "Recommendations (first users, top 5 of 20):"]
    lines += [f"  {r.user_id:<10} {', '.join(r.top_5)}  [{r.model} v{r.version}]" for r in recs.itertuples()]
    home = pipeline.home
    lines += [
        "",
        "Open the same state in the UIs:",
        f"  Dagster: shopseq ui --home {home}",
        f"     (or: SHOPSEQ_HOME={home} DAGSTER_HOME={home}/dagster_home dagster dev -w workspace.yaml)",
        f"  MLflow:  shopseq mlflow-ui --home {home}",
        f"     (or: mlflow ui --backend-store-uri sqlite:///{home}/mlflow.db --default-artifact-root {home}/mlartifacts)",
    ]
    return "\n".join(lines)


def cmd_demo(args: argparse.Namespace) -> int:
    from assets.logic.synthetic import ShopParams, write_day
    from resources import LandingSource

    home = prepare_home(args.home)
    params = ShopParams(seed=args.seed, events_per_day=args.events_per_day, shop_start=args.start)
    landing = LandingSource(home=str(home))
    landing.save_shop(params)
    end = args.start + dt.timedelta(days=args.days - 1)
    began = time.perf_counter()
    _progress(f"[  landing] synthetic shop: {args.days} days from {args.start}, ~{args.events_per_day:,} events/day -> {landing.root}")
    for i in range(args.days):
        write_day(params, args.start + dt.timedelta(days=i), str(landing.root))
    _progress(f"[  landing] done in {time.perf_counter() - began:5.1f} s")
    pipeline = Pipeline(home)
    pipeline.run(args.start, end)
    print(summary(pipeline))
    print(f"\nDemo finished in {time.perf_counter() - began:.0f} s.")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    home = prepare_home(args.home)
    pipeline = Pipeline(home, landing_mode=args.landing_mode)
    start, end = args.start, args.end or args.start
    if end < start:
        raise SystemExit(f"--end {end} is before --start {start}")
    pipeline.run(start, end, train=not args.skip_training)
    print(summary(pipeline))
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    home = prepare_home(args.home)
    workspace = Path(__file__).resolve().parent.parent / "workspace.yaml"
    command = [sys.executable, "-m", "dagster", "dev", "-h", args.host, "-p", str(args.port)]
    command += ["-w", str(workspace)] if workspace.exists() else ["-m", "workflows.definitions"]
    print(f"SHOPSEQ_HOME={home} DAGSTER_HOME={home}/dagster_home {' '.join(command[1:])}", flush=True)
    os.execvp(command[0], command)


def cmd_mlflow_ui(args: argparse.Namespace) -> int:
    home = prepare_home(args.home)
    command = [
        sys.executable, "-m", "mlflow", "ui", "--host", args.host, "--port", str(args.port),
        "--backend-store-uri", f"sqlite:///{home}/mlflow.db", "--default-artifact-root", f"{home}/mlartifacts",
    ]
    print(" ".join(command[1:]), flush=True)
    os.execvp(command[0], command)


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    from assets.logic.synthetic import ShopParams

    parser = argparse.ArgumentParser(prog="shopseq", description="Predict what e-commerce shoppers do next.")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_home(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--home", default=os.environ.get("SHOPSEQ_HOME", ".shopseq"),
                       help="home folder for all state (default: $SHOPSEQ_HOME or ./.shopseq)")
        return p

    demo = with_home(sub.add_parser("demo", help="synthetic landing data -> the whole graph -> summary"))
    demo.add_argument("--days", type=int, default=14, help="days of synthetic data (default 14; at least 4)")
    demo.add_argument("--events-per-day", type=int, default=20_000)
    demo.add_argument("--start", type=_date, default=ShopParams().shop_start, help="first day (default %(default)s)")
    demo.add_argument("--seed", type=int, default=ShopParams().seed)
    demo.set_defaults(func=cmd_demo)

    run = with_home(sub.add_parser("run", help="materialise the daily graph for days, train, evaluate, publish"))
    run.add_argument("--start", type=_date, required=True)
    run.add_argument("--end", type=_date)
    run.add_argument("--landing-mode", choices=["synthetic", "files"], default=os.environ.get("SHOPSEQ_LANDING_MODE", "synthetic"))
    run.add_argument("--skip-training", action="store_true", help="publish with the current champion")
    run.set_defaults(func=cmd_run)

    for name, port, func in (("ui", 3000, cmd_ui), ("mlflow-ui", 5000, cmd_mlflow_ui)):
        p = with_home(sub.add_parser(name, help=f"open the {'Dagster' if name == 'ui' else 'MLflow'} UI on the home"))
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=port)
        p.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "days", 4) < 4:
        raise SystemExit("--days must be at least 4: training needs two labelled cut-off days and a hold-out")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
