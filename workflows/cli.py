"""The ``shopseq`` command line: demo, run, and the commands that open the UIs on a home folder."""

import argparse
import datetime as dt
import functools
import gc
import logging
import os
import shutil
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# The instance settings every home's Dagster instance gets (telemetry off; why writers queue on a file lock).
DAGSTER_YAML = Path(__file__).with_name("dagster.yaml")
# The same with runs, event log and schedules on PostgreSQL: copied instead when this variable holds the URL.
DAGSTER_POSTGRES_YAML = Path(__file__).with_name("dagster_postgres.yaml")
DAGSTER_POSTGRES_URL_VARIABLE = "SHOPSEQ_DAGSTER_POSTGRES_URL"
# SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; the platform extra installs psycopg2.
DAGSTER_POSTGRES_SCHEME = "postgresql+psycopg2://"

PSEUDONYM_KEY_VARIABLE = "SHOPSEQ_PSEUDONYM_KEY"
# settings.json: days an ingest withdrew from the landing whose warehouse rows are still to be deleted.
PENDING_WITHDRAWALS = "pending_withdrawals"

SUMMARY_TABLES = [
    "raw_events",
    "raw_events_quarantine",
    "cleaned_events",
    "sessions",
    "user_sequences",
    "user_features",
    "item_features",
    "ranking_candidates",
    "next_action_training_set",
    "ranker_training_set",
    "next_event_training_set",
    "session_training_set",
    "model_evaluations",
    "promotion_log",
    "recommendations",
    "next_action_predictions",
    "item_next_items",
    "model_replay",
]


class UsageError(Exception):
    """A command that cannot run as given (an option, a file, the state of the home): one line, exit code 2."""


def home_folder(home: str, existing: bool = False) -> Path:
    """``--home`` as an absolute path, checked without making anything: not empty, a usable name, no file in the
    way; with ``existing`` (a command that reads a home's state), a folder that is there."""
    if not home.strip():
        raise UsageError("--home is empty: name a folder for the home (default: $SHOPSEQ_HOME or ./.shopseq)")
    try:
        root = Path(home).expanduser().resolve()
        there = next((p for p in (root, *root.parents) if p.exists()), None)
    except (OSError, ValueError) as error:  # no permission, a NUL byte in the name
        raise UsageError(f"--home {home!r} cannot be used as a home folder: {error}") from None
    if there is not None and not there.is_dir():
        raise UsageError(f"--home {home!r} cannot be used as a home folder: {there} is a file")
    if existing and there != root:
        raise UsageError(
            f"--home {home!r}: {root} is not a shopseq home (no such folder); make one with shopseq demo, or "
            "shopseq ingest then shopseq run"
        )
    return root


def prepare_home(home: str, existing: bool = False) -> Path:
    """Create the home folder (``home_folder`` checks it first), point Dagster and MLflow at it, and return it."""
    root = home_folder(home, existing)
    try:
        dagster_home = root / "dagster_home"
        dagster_home.mkdir(parents=True, exist_ok=True)
        write_instance_settings(dagster_home)
    except OSError as error:  # no permission
        raise UsageError(f"--home {home!r} cannot be used as a home folder: {error}") from None
    os.environ["SHOPSEQ_HOME"] = str(root)
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # the CLI prints one line per step: MLflow's per-download progress bars would interleave with them
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return root


def write_instance_settings(dagster_home: Path) -> None:
    """Copy shopseq's instance settings to ``<dagster_home>/dagster.yaml``: ``dagster_postgres.yaml`` when
    ``$SHOPSEQ_DAGSTER_POSTGRES_URL`` is set, else ``dagster.yaml``. Every command rewrites the file, so that a
    home follows the variable and the installed shopseq; a file whose first line is not shopseq's is the user's own
    instance configuration and is left as it is."""
    url = os.environ.get(DAGSTER_POSTGRES_URL_VARIABLE, "")
    target = dagster_home / "dagster.yaml"
    first_line = DAGSTER_YAML.read_text().splitlines()[0]
    if target.exists() and target.read_text().splitlines()[:1] != [first_line]:
        if url:
            raise UsageError(
                f"{DAGSTER_POSTGRES_URL_VARIABLE} is set but {target} holds your own instance settings (its first "
                "line is not shopseq's), which shopseq does not overwrite: unset the variable, or delete the file"
            )
        return
    if url and not url.startswith(DAGSTER_POSTGRES_SCHEME):
        raise UsageError(
            f"{DAGSTER_POSTGRES_URL_VARIABLE} must start with {DAGSTER_POSTGRES_SCHEME} (SQLAlchemy 2.1 reads a bare "
            f"postgresql:// as psycopg 3, which is not installed), not {url.split(':')[0]}:"
        )
    shutil.copyfile(DAGSTER_POSTGRES_YAML if url else DAGSTER_YAML, target)


class StageFailed(RuntimeError):
    """A stage of the graph did not materialise; the message names the failed steps and checks."""


def _progress(message: str) -> None:
    print(message, flush=True)


@functools.cache  # once per process: a second call would freeze what the first run left alive
def _collect_less() -> None:
    """Python's cyclic garbage collector for a process that runs the graph in-process: the stack just imported
    (Dagster, MLflow, pandas, ...) is moved out of its reach (``gc.freeze``), and it runs after 50,000 net
    allocations instead of 700. Memory is freed by reference counting as before; only reference cycles wait longer.
    With the defaults, full collections scanning that whole heap were a noticeable part of the demo
    (BENCHMARKS.md)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def _create_mlflow_store(registry) -> None:
    """The registry's local store created now (``ModelRegistry.create_store``); a failure is the run's, in one line."""
    try:
        registry.create_store()
    except Exception as error:
        raise StageFailed(f"cannot create the MLflow store {registry.resolved_tracking_uri()}: {error}") from error


def _quiet_mlflow() -> None:
    """MLflow's INFO lines (its store's migrations, each input example validated) would interleave with the run's
    own progress: its warnings and errors only, unless ``MLFLOW_LOGGING_LEVEL`` asks for more. Read by MLflow when
    it is imported, and set on its logger in case it already is. Set for the jobs (``Pipeline``), not with the
    home's other MLflow defaults (``prepare_home``): ``shopseq mlflow-ui`` keeps MLflow's INFO lines."""
    if "MLFLOW_LOGGING_LEVEL" not in os.environ:
        os.environ["MLFLOW_LOGGING_LEVEL"] = "WARNING"
        logging.getLogger("mlflow").setLevel(logging.WARNING)


class Pipeline:
    """Launches the code location's jobs in-process on one home, as the schedules and sensors launch them: each is
    recorded in the home's Dagster instance as a run of that job. When to train and what to publish is decided in
    the graph (a training set too small is not built and its models are skipped; a serving table whose models have
    no champion is not materialised), never here."""

    def __init__(self, home: Path, landing_mode: str = "auto", log_level: str = "WARNING"):
        from dagster import DagsterInstance

        from workflows.definitions import build_definitions, build_resources

        self.home = home
        self.log_level = log_level
        self.resources = build_resources(str(home), landing_mode=landing_mode)
        try:  # the home's engine (recorded by its first run): refused here in one line, not in every step
            _ = self.resources["engine"].name
        except ValueError as error:
            raise UsageError(str(error)) from None
        self.defs = build_definitions(self.resources)
        self.instance = DagsterInstance.get()
        _collect_less()
        _quiet_mlflow()

    def launch(self, job_name: str, start: dt.date | None = None, end: dt.date | None = None):
        """One run of the job ``job_name`` (for the day ``start``, or the days ``start..end`` as one ranged run, as a
        backfill launches them); raises ``StageFailed`` naming the failed steps and checks."""
        from assets.partitions import RANGE_END_TAG, RANGE_START_TAG
        from workflows.sensors import append_failure, failure_record, step_error

        window = {}
        if start is not None and (end or start) == start:
            window = {"partition_key": start.isoformat()}
        elif start is not None:
            window = {"tags": {RANGE_START_TAG: start.isoformat(), RANGE_END_TAG: end.isoformat()}}
        result = self.defs.resolve_job_def(job_name).execute_in_process(
            instance=self.instance,
            run_config={"loggers": {"console": {"config": {"log_level": self.log_level}}}},
            raise_on_error=False,
            **window,
        )
        if not result.success:
            details, checks, steps = [], [], []
            for event in result.all_events:
                if event.event_type_value == "ASSET_CHECK_EVALUATION" and not event.event_specific_data.passed:
                    check = event.event_specific_data
                    checks.append(f"{check.asset_key.to_user_string()}:{check.check_name}")
                    details.append(f"check {check.check_name} failed: {check.description or check.metadata}"[:600])
                elif event.is_step_failure:
                    steps.append(event)
                    details.append(f"{event.step_key}: {step_error(event)[:600]}")
            # recorded as the run_failure_recorder sensor records it, which runs only under the daemon
            append_failure(str(self.home), failure_record(self.instance.get_run_by_id(result.run_id), steps, checks))
            raise StageFailed(f"job {job_name} failed (run {result.run_id}): {'; '.join(details)}")
        return result

    def run(self, start: dt.date, end: dt.date, train: bool = True) -> None:
        """The daily pipeline for the days ``start..end``, then training, then publishing ``end``."""
        from workflows.jobs import daily_pipeline_job, publish_job, training_job

        with ThreadPoolExecutor(max_workers=1) as beside:
            # A new home's MLflow store is created (its tables: MLflow's migrations) beside the daily stage, whose
            # time is DuckDB's more than Python's, instead of in the first model asset.
            store = beside.submit(_create_mlflow_store, self.resources["registry"]) if train else None
            self._stage(daily_pipeline_job.name, f"{(end - start).days + 1} day(s) {start}..{end}", start, end)
            if store is not None:
                store.result()
        if train:
            self._stage(training_job.name, "training sets, models, hold-out evaluation, promotion")
        self._stage(publish_job.name, f"{end}: serving tables and the replay", end)
        with self.resources["warehouse"].connect(read_only=True) as conn:
            versions = conn.execute(
                "SELECT count(DISTINCT (model_name, model_version)) FROM model_replay WHERE day = ?", [end]
            ).fetchall()[0][0]
        _progress(f"[   replay] {end} scored by {versions} model version(s) trained before it")

    def _stage(self, job_name: str, what: str, start: dt.date | None = None, end: dt.date | None = None) -> None:
        """Launch a job, then report each of its assets in the order they ran: group, seconds, rows."""
        from dagster import AssetKey

        began = time.perf_counter()
        _progress(f"[{job_name:>9}] {what} ...")
        result = self.launch(job_name, start, end)
        graph = self.defs.resolve_asset_graph()
        metadata = {
            event.asset_key.to_user_string(): event.materialization.metadata
            for event in result.get_asset_materialization_events()
        }
        for step in sorted(self.instance.get_run_step_stats(result.run_id), key=lambda s: s.start_time or 0):
            group = graph.get(AssetKey(step.step_key)).group_name
            facts = metadata.get(step.step_key)
            if facts is None:  # a skippable asset that was not materialised: a serving table
                outcome = "not published: no champion for its model(s) yet (see Promotion)"
            elif "not_built_because" in facts:
                outcome = f"not built: {facts['not_built_because'].value}"
            elif "not_trained_because" in facts:
                outcome = f"not trained: {facts['not_trained_because'].value}"
            else:
                rows = facts.get("dagster/row_count")
                outcome = f"{rows.value:,} rows" if rows else ""
            _progress(f"[{group:>9}] {step.step_key:<24} {step.end_time - step.start_time:6.1f} s  {outcome}")
        _progress(f"[{job_name:>9}] done in {time.perf_counter() - began:5.1f} s")


def _has(conn, table: str) -> bool:
    return bool(
        conn.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [table]).fetchall()[0][0]
    )


def _count(conn, table: str) -> int:
    return int(conn.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]) if _has(conn, table) else 0


def summary(pipeline: Pipeline, published: dt.date, users: int = 3) -> str:
    """Rows per stage, the models beside their baselines, the policy each champion is, a few users'
    recommendations of the day ``published``, the UI commands: read on one connection (a warehouse's every opening
    reads its catalogue)."""
    from assets.logic.catalogue import CATALOGUE
    from resources.registry import CHAMPION

    registry = pipeline.resources["registry"]
    champions = {name: getattr(registry.version_for_alias(name, CHAMPION), "version", None) for name in CATALOGUE}
    with pipeline.resources["warehouse"].connect(read_only=True) as conn:
        lines = ["", "Rows per table:"]
        lines += [f"  {t:<26} {_count(conn, t):>10,}" for t in SUMMARY_TABLES]
        if _has(conn, "promotion_log"):
            lines += _model_summary(conn, users, champions, published)
    home = pipeline.home
    lines += [
        "",
        "Open the same state in the UIs:",
        f"  Dagster: shopseq ui --home {home}",
        f"     (or: SHOPSEQ_HOME={home} DAGSTER_HOME={home}/dagster_home dagster dev -w workspace.yaml)",
        f"  MLflow:  shopseq mlflow-ui --home {home}",
        f"     (or: mlflow ui --backend-store-uri sqlite:///{home}/mlflow.db --default-artifact-root "
        f"{home}/mlartifacts)",
    ]
    return "\n".join(lines)


def _champions_now(conn, decisions, champions: dict[str, int | None]):
    """The last promotion run's decision per model, with the champion the registry names now: a version promoted,
    rolled back or set in MLflow since is the one served, and its reason is the last move ``alias_history`` records
    (none for a move made in MLflow that no publish run has seen yet). ``serves``: the champion's kind and policy,
    from its stored evaluation."""
    import pandas as pd

    decisions = decisions.copy()
    # whole numbers or None, whatever dtype the log's column came in (a champion may be taken away, too)
    decisions["champion_version"] = pd.Series(
        [None if pd.isna(v) else int(v) for v in decisions["champion_version"]], index=decisions.index, dtype=object
    )
    for i, r in decisions.iterrows():
        now = champions.get(r.model_name)
        if now == r.champion_version:
            continue
        moved = (
            conn.execute(
                """SELECT changed_by || ': ' || reason FROM alias_history WHERE model_name = ? AND alias = 'champion'
                   AND to_version IS NOT DISTINCT FROM ? ORDER BY changed_at DESC LIMIT 1""",
                [r.model_name, now],
            ).fetchall()
            if _has(conn, "alias_history")
            else []
        )
        decisions.loc[i, ["champion_version", "decision"]] = [now, "set outside the promotion run"]
        decisions.loc[i, "reason"] = moved[0][0] if moved else "in MLflow, not yet recorded in alias_history"
    decisions["serves"] = None
    if _has(conn, "model_evaluations"):
        for i, r in decisions[decisions["champion_version"].notna()].iterrows():
            [(serves,)] = conn.execute(
                """SELECT any_value(policy_kind || ' ' || policy) FROM model_evaluations
                   WHERE model_name = ? AND model_version = ?""",
                [r.model_name, r.champion_version],
            ).fetchall()
            decisions.loc[i, "serves"] = serves
    return decisions


def _promotion_lines(decisions) -> list[str]:
    import pandas as pd

    return ["", "Promotion (the policy that serves each model, and why):"] + [
        f"  {r.model_name}: "
        + (
            f"champion v{r.champion_version}, {r.serves or 'learned lightgbm'}"
            if pd.notna(r.champion_version)
            else "no champion, not served"
        )
        + (" (skipped: its data cannot train it, above)" if r.decision == "skipped" else f" ({r.decision}: {r.reason})")
        for r in decisions.itertuples()
    ]


def _holdout_table(rows, model_name: str) -> list[str]:
    """One model's hold-out metrics: a row per method (the model, the bounds of its 95% bootstrap interval, then
    its baselines in the catalogue's order, each as served and raw), a column per target and metric; for a model
    measured per segment, its recall and NDCG of target ``any`` per segment below, with the users of each."""
    from assets.logic.catalogue import CATALOGUE

    spec = CATALOGUE.get(model_name)
    baselines = [m for b in (spec.baselines if spec else ()) for m in (b, f"{b}_raw")]
    order = ["model", "95% CI low", "95% CI high", "model_raw", *baselines]

    def table(frame, columns: list[str]) -> list[str]:
        pivot = frame.pivot_table(index="method", columns=columns, values="value")
        pivot = pivot[sorted(pivot.columns, key=lambda c: (c[0] != "any", *c) if isinstance(c, tuple) else (c,))]
        model = frame[frame["method"] == "model"].set_index(columns).reindex(pivot.columns)
        pivot.loc["95% CI low"], pivot.loc["95% CI high"] = model["ci_low"].to_numpy(), model["ci_high"].to_numpy()
        shown = [m for m in order if m in pivot.index] + sorted(set(pivot.index) - set(order))
        pivot = pivot.reindex(shown).rename_axis(index=None)
        return ["    " + line for line in pivot.round(3).to_string(na_rep="").splitlines()]

    overall = rows[rows["segment"] == "all"]
    targets = overall["target"].nunique() > 1  # the ranker's any / add_to_cart / purchase
    lines = table(overall, ["target", "metric"] if targets else ["metric"])
    segments = rows[(rows["segment"] != "all") & rows["metric"].isin(["recall@20", "ndcg@20"])]
    if len(segments):
        users = segments[segments["method"] == "model"].groupby("segment")["users"].max()
        users = users[users > 0]  # a segment no user falls in (no new users in the hold-out) has no metrics
        lines += [f"    by segment (target any; users: {', '.join(f'{s} {n:,}' for s, n in users.items())}):"]
        lines += table(segments, ["segment", "metric"])
    return lines


def _model_summary(conn, users: int, champions: dict[str, int | None], published: dt.date) -> list[str]:
    import pandas as pd

    lines = []
    decisions = conn.execute(
        """SELECT model_name, champion_version, decision, reason FROM promotion_log p
           QUALIFY row_number() OVER (PARTITION BY model_name ORDER BY decided_at DESC) = 1 ORDER BY model_name"""
    ).df()
    decisions = _champions_now(conn, decisions, champions)
    skipped = decisions[decisions["decision"] == "skipped"]
    trainable = decisions.loc[decisions["decision"] != "skipped", "model_name"].tolist()
    lines += ["", f"Models this home's data can train: {', '.join(trainable) or 'none'}"]
    if len(skipped):
        lines += ["Models it cannot train (skipped, the run goes on):"]
        lines += [f"  {r.model_name}: {r.reason}" for r in skipped.itertuples()]
    if not _has(conn, "model_evaluations"):
        return lines + _promotion_lines(decisions)
    # each model's newest learned version, as last evaluated: a champion kept over several days has an evaluation
    # per hold-out day, and is evaluated again after a newer challenger, so neither the latest evaluation nor all of
    # a version's rows would do
    evaluation = conn.execute(
        """WITH latest AS (
               SELECT model_name, model_version, max(evaluated_at) AS evaluated_at FROM model_evaluations
               WHERE coalesce(policy_kind, 'learned') = 'learned' GROUP BY model_name, model_version
               QUALIFY row_number() OVER (PARTITION BY model_name ORDER BY model_version DESC) = 1
           )
           SELECT e.* FROM model_evaluations e JOIN latest USING (model_name, model_version, evaluated_at)
           WHERE metric IN ('recall@20', 'ndcg@20', 'hr@20', 'mrr@20', 'auc', 'pr_auc', 'brier')"""
    ).df()
    recs = (
        conn.execute(
            """SELECT user_id, list(item_id ORDER BY rank)[1:5] AS top_5, any_value(model_name) AS model,
                  any_value(model_version) AS version, any_value(policy_kind || ' ' || policy) AS policy,
                  arg_min(reason, rank) AS first_reason
           FROM recommendations WHERE as_of_date = ? GROUP BY user_id ORDER BY user_id LIMIT ?""",
            [published, users],
        ).df()
        if _has(conn, "recommendations")
        else None
    )
    holdout = evaluation["holdout_day"].max() if len(evaluation) else "?"
    lines += [
        "",
        f"Temporal hold-out (features as of {pd.Timestamp(holdout).date()}, targets on the next day; the ranker's "
        "lists as served, after the business rules, and <method>_raw before them):",
    ]
    for name, rows in evaluation.groupby("model_name", sort=True):
        lines += [f"  {name}"] + _holdout_table(rows, name)
    lines += _promotion_lines(decisions)
    if recs is None or recs.empty:
        return lines
    lines += ["", f"Recommendations for {published} (first users, top 5 of 20):"]
    for r in recs.itertuples():
        lines += [
            f"  {r.user_id:<10} {', '.join(r.top_5)}  [{r.model} v{r.version}, {r.policy}]",
            f"  {'':<10} #1: {r.first_reason}",
        ]
    return lines


def cmd_demo(args: argparse.Namespace) -> int:
    from assets.logic.synthetic import ShopParams, write_day
    from resources import LandingSource

    end = args.start + dt.timedelta(days=args.days - 1)
    _check_partitions(args.start, end)
    home = prepare_home(args.home)
    _ = LandingSource(home=str(home), mode="synthetic").effective_mode  # refuses a home of ingested logs
    params = ShopParams(seed=args.seed, events_per_day=args.events_per_day, shop_start=args.start)
    landing = LandingSource(home=str(home))
    landing.save_shop(params)
    began = time.perf_counter()
    _progress(
        f"[  landing] synthetic shop: {args.days} days from {args.start}, ~{args.events_per_day:,} events/day -> "
        f"{landing.root}"
    )
    for i in range(args.days):
        write_day(params, args.start + dt.timedelta(days=i), str(landing.root))
    _progress(f"[  landing] done in {time.perf_counter() - began:5.1f} s")
    pipeline = Pipeline(home)
    pipeline.run(args.start, end)
    print(summary(pipeline, end))
    print(f"\nDemo finished in {time.perf_counter() - began:.0f} s.")
    return 0


def _pending(settings: dict, withdrawn: list[dt.date]) -> list[str]:
    """The withdrawn days still to remove from the warehouse: those of earlier ingests not yet removed, and these."""
    return sorted(set(settings.get(PENDING_WITHDRAWALS, [])) | {d.isoformat() for d in withdrawn})


def _pseudonym_settings(settings: dict, key: str | None, landed: bool) -> dict:
    """What ``settings.json`` records about pseudonymisation after this ingest; refuses an ingest that would
    mix raw ids with pseudonyms, or pseudonyms of two keys, in one home. Only a fingerprint of the key is kept."""
    from assets.logic.ingest import pseudonym

    fingerprint = pseudonym(key, "shopseq pseudonym key fingerprint") if key is not None else None
    if landed and "pseudonymised" in settings:
        if settings["pseudonymised"] and key is None:
            raise UsageError(
                "this home is pseudonymised: ingest with --pseudonymise and the same key in "
                f"${PSEUDONYM_KEY_VARIABLE}, or raw ids would reach its landing files"
            )
        if not settings["pseudonymised"] and key is not None:
            raise UsageError(
                "this home holds raw ids: a pseudonymised ingest would mix two id spaces; ingest into another --home"
            )
        if key is not None and settings.get("pseudonym_key_fingerprint") != fingerprint:
            raise UsageError(
                f"${PSEUDONYM_KEY_VARIABLE} is not the key this home was pseudonymised with "
                "(its fingerprint differs): the same shopper would get two pseudonyms"
            )
    return {"pseudonymised": key is not None, "pseudonym_key_fingerprint": fingerprint}


def cmd_ingest(args: argparse.Namespace) -> int:
    from assets.logic.ingest import FORMATS, IngestError, ingest, source_files
    from resources import LandingSource, Warehouse
    from resources.home import read_settings, write_settings

    try:
        source_files(args.path)  # a missing or unreadable file is named before the home is made or touched
    except IngestError as error:
        print(f"error: cannot ingest {error}", file=sys.stderr)
        return 2
    home = prepare_home(args.home)
    landing = LandingSource(home=str(home))
    tz = args.tz or FORMATS[args.format].default_tz
    settings = read_settings(str(home))
    landed = bool(landing.landed_days())
    if landed and settings.get("landing") != "files":
        raise UsageError(f"{landing.root} holds synthetic landing days; ingest real logs into another --home")
    if landed and settings.get("timezone", tz) != tz:
        raise UsageError(
            f"the days of {home} are {settings['timezone']} days; ingesting with --tz {tz} would mix two calendars"
        )
    key = None
    if args.pseudonymise:
        key = os.environ.get(PSEUDONYM_KEY_VARIABLE)
        if not key or len(key) < 16:
            raise UsageError(f"--pseudonymise needs a secret key of 16 characters or more in ${PSEUDONYM_KEY_VARIABLE}")
    privacy = _pseudonym_settings(settings, key, landed)
    began = time.perf_counter()
    try:
        # The home's settings are written once every file is read and staged, before any landing file is
        # published: a run never reads landing days under the settings of the home before this ingest.
        report = ingest(
            args.path,
            args.format,
            str(landing.root),
            tz,
            start=args.start,
            end=args.end,
            pseudonym_key=key,
            on_staged=lambda staged: write_settings(
                str(home),
                timezone=tz,
                landing="files",
                **privacy,
                **{PENDING_WITHDRAWALS: _pending(settings, staged.withdrawn)},
            ),
        )
    except IngestError as error:
        print(f"error: cannot ingest {error}", file=sys.stderr)
        return 2
    except ValueError as error:
        raise UsageError(str(error)) from None
    print(
        f"Ingested {len(report.per_file)} {args.format} file(s) into {landing.root} ({tz} days) "
        f"in {time.perf_counter() - began:.1f} s:"
    )
    print(report.table())
    for path, counts in report.per_file.items():
        print(
            f"  {path}: {counts['read']:,} rows read, {counts['quarantined_at_ingest']:,} quarantined at ingest "
            "(unparseable, or outside the valid days)"
        )
    if report.withdrawn:
        print(
            f"{', '.join(map(str, report.withdrawn))}: no longer in the re-ingested file(s), so no landing files "
            "any more (withdrawn)"
        )
    _withdraw_pending_days(home, Warehouse(home=str(home)))
    days = landing.landed_days()  # run materialises every landed day, this ingest's and those before it
    for day, accepted, median in report.partial_days():
        print(
            f"note: {day} has {accepted:,} accepted events, {accepted / median:.1%} of the median day's {median:,.0f} "
            f"({tz} days): the log {'ends' if day == max(report.per_day) else 'starts'} within it"
            + (
                f". As the last landed day it is the day run publishes for and holds the models' hold-out "
                f"targets: shopseq run --home {home} --end {day - dt.timedelta(days=1)} leaves it out."
                if days and day == days[-1]
                else "."
            )
        )
    if days:
        print(f"\nNext: shopseq run --home {home}   (materialises {days[0]}..{days[-1]})")
    return 0


def _check_partitions(start: dt.date, end: dt.date) -> None:
    """Both ends of a run are days of the daily partitions (from their first day up to today)."""
    from assets.partitions import daily_partitions

    for day in (start, end):
        if not daily_partitions.has_partition_key(day.isoformat()):
            first = daily_partitions.start.date()
            raise UsageError(f"{day} is not a daily partition: days run from {first} to yesterday (UTC)")


def _check_landing(landing, mode: str, landed: list[dt.date], start: dt.date, end: dt.date) -> None:
    """Every day of ``start``..``end`` can be read: landed, in a home of ingested logs; on or after the day the
    synthetic shop opened, in a synthetic home (its days are made when first read)."""
    if mode == "files":
        wanted = [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]
        missing = sorted(set(wanted) - set(landed))
        if missing:
            span = f"{missing[0]}..{missing[-1]} ({len(missing)} days)" if len(missing) > 1 else str(missing[0])
            have = f"{landed[0]}..{landed[-1]}" if landed else "none"
            raise UsageError(
                f"no landing files for {span} under {landing.root} (landed days: {have}); ingest them first, or "
                "choose --start and --end among the landed days"
            )
    elif start < (opened := landing.shop().shop_start):
        raise UsageError(f"--start {start} is before the synthetic shop of this home opened on {opened}")


def _withdraw_pending_days(home: Path, warehouse) -> dict[str, int]:
    """Delete from the warehouse the days an ingest withdrew from the landing (a re-ingested file no longer has
    them), as recorded in ``settings.json`` before that ingest published; then forget them. ``ingest`` calls it
    right after publishing; ``run`` calls it too, for an ingest stopped in between. Only days an ingest withdrew
    go: a landing folder archived or pruned by hand leaves the warehouse as it is."""
    from assets.logic.warehouse_sql import withdraw_days
    from resources.engine import withdraw_lake_days
    from resources.home import read_settings, write_settings

    pending = [dt.date.fromisoformat(d) for d in read_settings(str(home)).get(PENDING_WITHDRAWALS, [])]
    if not pending:
        return {}
    deleted = {}
    if Path(warehouse.path).exists():
        with warehouse.connect() as conn:
            deleted = withdraw_days(conn, pending, warehouse.timezone)
    deleted.update({f"{table} (lake days)": n for table, n in withdraw_lake_days(str(home), pending).items()})
    write_settings(str(home), **{PENDING_WITHDRAWALS: []})
    _progress(
        f"[  landing] withdrawn {', '.join(map(str, pending))}: removed from the warehouse ("
        + (", ".join(f"{t} {n:,}" for t, n in deleted.items()) or "no rows")
        + ")"
    )
    return deleted


def cmd_run(args: argparse.Namespace) -> int:
    from resources import LandingSource

    root = home_folder(args.home)  # the days are checked before the home is made: a mistyped day writes nothing
    landing = LandingSource(home=str(root), mode=args.landing_mode)
    mode = landing.effective_mode  # refuses synthetic days in a home of ingested logs, or one without its settings
    landed = landing.landed_days()
    if args.start is None and not landed:
        raise UsageError(f"no landing days under {root}/landing; pass --start (synthetic) or run shopseq ingest first")
    start = args.start or landed[0]
    end = args.end or (landed[-1] if args.start is None else start)
    if end < start:
        raise UsageError(f"--end {end} is before --start {start}")
    _check_partitions(start, end)
    _check_landing(landing, mode, landed, start, end)
    home = prepare_home(args.home)
    pipeline = Pipeline(home, landing_mode=args.landing_mode)
    _withdraw_pending_days(home, pipeline.resources["warehouse"])
    pipeline.run(start, end, train=not args.skip_training)
    print(summary(pipeline, end))
    return 0


OUTPUT_FORMATS = {".csv": "csv", ".parquet": "parquet", ".jsonl": "json", ".json": "json"}
FOREIGN_ITEMS = 0.1  # ``predict`` warns when fewer of a file's events are on items the home knows


def _scoring_models(registry, overrides: list[str]) -> tuple[dict, list[str]]:
    """{model name: version ref} to score with: each model's champion unless ``NAME=V`` (or ``V`` for the
    ranker) names a version; other models than the ranker without a champion are left out, with a note."""
    from assets.logic.catalogue import NEXT_ACTION_MODELS, NEXT_EVENT_MODEL, RANKER_MODEL, SESSION_MODEL
    from resources.registry import CHAMPION

    optional = [*NEXT_ACTION_MODELS.values(), NEXT_EVENT_MODEL]
    chosen = {}
    for text in overrides:
        name, _, version = text.rpartition("=")
        name = name or RANKER_MODEL
        if name not in (RANKER_MODEL, *optional) or not (version.isascii() and version.isdigit()):
            raise UsageError(
                f"--model-version {text!r}: give V (the ranker) or NAME=V with NAME one of "
                f"{RANKER_MODEL}, {', '.join(optional)} (or {SESSION_MODEL}, scoring sessions alone)"
            )
        chosen[name] = registry.version(name, int(version))
    notes = []
    chosen.setdefault(RANKER_MODEL, registry.champion(RANKER_MODEL))
    for name in optional:
        if name not in chosen:
            ref = registry.version_for_alias(name, CHAMPION)
            if ref is None:
                notes.append(f"{name} has no champion: its probability columns are left out")
            else:
                chosen[name] = ref
    return chosen, notes


def _output_file(text: str, home: Path, inputs: list[str]) -> Path:
    """``--out`` as a path to write: a known suffix, in a folder that exists, not itself a folder, neither inside
    the home (its state) nor one of the input files."""
    out = Path(text)
    if out.suffix not in OUTPUT_FORMATS:
        raise UsageError(f"--out {text!r}: name a {', '.join(OUTPUT_FORMATS)} file")
    try:
        is_folder, in_folder = out.is_dir(), out.parent.is_dir()
        resolved = out.resolve()
        overwrites_input = any(Path(i).resolve() == resolved for i in inputs)
    except (OSError, ValueError) as error:  # a NUL byte, a name too long
        raise UsageError(f"--out {text!r} is not a usable file name: {error}") from None
    if resolved.is_relative_to(home):
        raise UsageError(f"--out {text!r} is inside the home {home}, which holds shopseq's state: write elsewhere")
    if overwrites_input:
        raise UsageError(f"--out {text!r} is one of the --events files: it would be overwritten")
    if is_folder:
        raise UsageError(f"--out {text!r} is a folder: name a file inside it")
    if not in_folder:
        raise UsageError(f"--out {text!r}: the folder {str(out.parent)!r} does not exist")
    return out


def cmd_predict(args: argparse.Namespace) -> int:
    import duckdb

    from assets.logic.candidates import RANKER_FEATURES
    from assets.logic.catalogue import NEXT_ACTION_MODELS, NEXT_EVENT_MODEL, RANKER_MODEL, SESSION_MODEL
    from assets.logic.features import USER_FEATURE_COLUMNS
    from assets.logic.ingest import FORMATS, IngestError
    from assets.logic.next_event import NEXT_EVENT_FEATURES
    from assets.logic.predict import known_items, load_item_side, read_sequences, score_sequences
    from assets.logic.serving import BusinessRules, check_features
    from resources import ModelRegistry, Warehouse
    from resources.home import read_settings
    from resources.registry import NoChampionError

    home = prepare_home(args.home, existing=True)
    out = _output_file(args.out, home, args.events)
    warehouse = Warehouse(home=str(home))
    if not Path(warehouse.path).exists():
        raise UsageError(f"{warehouse.path} does not exist: run shopseq run (or demo) on this home first")
    registry = ModelRegistry(home=str(home), tracking_uri=os.environ.get("SHOPSEQ_MLFLOW_TRACKING_URI", ""))
    from resources.registry import CHAMPION

    overrides = args.model_version or []
    auto = args.protocol == "auto"
    session_pins = [text for text in overrides if text.rpartition("=")[0] == SESSION_MODEL]
    session_champion = registry.version_for_alias(SESSION_MODEL, CHAMPION)
    if args.protocol == "auto":  # a home of anonymous sessions has no ranker: the in-session model scores them
        use_session = (session_champion or session_pins) and registry.version_for_alias(RANKER_MODEL, CHAMPION) is None
        args.protocol = "session" if use_session and len(session_pins) == len(overrides) else "next-day"
    if args.protocol == "session":
        if len(session_pins) != len(overrides):
            raise UsageError(f"--model-version with --protocol session: give {SESSION_MODEL}=V only")
        if session_pins:
            version = session_pins[-1].rpartition("=")[2]
            if not (version.isascii() and version.isdigit()):
                raise UsageError(f"--model-version {session_pins[-1]!r}: give {SESSION_MODEL}=V, V a version number")
            try:
                session_champion = registry.version(SESSION_MODEL, int(version))
            except ValueError as error:
                raise UsageError(str(error)) from None
        elif session_champion is None:
            raise UsageError(f"--protocol session: {SESSION_MODEL} has no champion on this home (see the run summary)")
        return _predict_sessions(args, home, out, warehouse, registry, session_champion)
    try:
        refs, notes = _scoring_models(registry, args.model_version or [])
    except NoChampionError as error:
        also = f"; nor has {SESSION_MODEL}, which would score sessions" if auto and session_champion is None else ""
        raise UsageError(f"{error}{also} (see the run summary)") from None
    except ValueError as error:
        raise UsageError(str(error)) from None
    inputs = {RANKER_MODEL: RANKER_FEATURES, NEXT_EVENT_MODEL: NEXT_EVENT_FEATURES}
    boosters = {}
    for name, ref in refs.items():
        boosters[name] = registry.load_policy(ref)
        check_features(boosters[name], inputs.get(name, USER_FEATURE_COLUMNS), f"{name} v{ref.version}")
    item_day = dt.date.fromisoformat(registry.run_tags(refs[RANKER_MODEL])["holdout_day"])
    tz = read_settings(str(home)).get("timezone", FORMATS[args.format].default_tz)  # the home's days, else the format's
    began = time.perf_counter()
    with duckdb.connect() as conn:
        try:
            report = read_sequences(conn, args.events, args.format, tz)
            read_seconds = time.perf_counter() - began
            with warehouse.read_lock():
                load_item_side(conn, warehouse.path, item_day, warehouse.timezone)
            known = known_items(conn, "SELECT item_id FROM predict_item_now")
        except (IngestError, ValueError) as error:
            print(f"error: cannot score {error}", file=sys.stderr)
            return 2
        frame = score_sequences(
            conn,
            boosters[RANKER_MODEL],
            {action: boosters[name] for action, name in NEXT_ACTION_MODELS.items() if name in boosters},
            item_day,
            args.k,
            BusinessRules(min_items=args.k),
            boosters.get(NEXT_EVENT_MODEL),
        )
        frame["models"] = ", ".join(f"{n} v{r.version}" for n, r in refs.items())
        scored_seconds = time.perf_counter() - began - read_seconds
        _write_predictions(conn, frame, out)
    sequences = frame["sequence_id"].nunique()
    print(_read_line(args, report, f" ({tz} days)", f" in {read_seconds:.1f} s"))
    print(
        f"Scored {sequences:,} sequences as of their last event in {scored_seconds:.1f} s with "
        f"{frame['models'].iloc[0]}; item statistics as of {item_day}."
    )
    sources = frame["source"].value_counts()
    print("Items by candidate source: " + ", ".join(f"{s} {n:,}" for s, n in sources.items()))
    _print_short_lists(frame, args.k, "the warehouse knows too few popular items")
    _print_known_items(known, f"item statistics as of {item_day}")
    for note in notes:
        print(f"note: {note}")
    print(f"Wrote {len(frame):,} rows to {out}")
    return 0


def _read_line(args: argparse.Namespace, report: dict, days: str = "", seconds: str = "") -> str:
    """What ``predict`` read: rows = accepted + quarantined, with the count of each quarantine reason."""
    reasons = {k: v for k, v in report.items() if k not in ("read", "accepted", "quarantined")}
    return (
        f"Read {args.format} {', '.join(args.events)}{days}: {report['read']:,} rows = {report['accepted']:,} "
        f"accepted + {report['quarantined']:,} quarantined"
        + (f" ({', '.join(f'{r} {n:,}' for r, n in sorted(reasons.items()))})" if reasons else "")
        + f"{seconds}."
    )


def _print_short_lists(frame, k: int, why: str) -> None:
    short = (frame.groupby("sequence_id")["rank"].max() < k).sum()
    if short:
        print(f"{short:,} of {frame['sequence_id'].nunique():,} sequences got fewer than {k} items ({why}).")


def _print_known_items(known: tuple[int, int], of: str) -> None:
    """How many of the file's events are on items the home knows; a file of another shop knows next to none. A
    file without an item (searches only) has nothing to tell."""
    events, on_known = known
    if not events:
        return
    share = on_known / events
    print(
        f"{on_known:,} of the file's {events:,} events with an item ({share:.1%}) are on items the home knows",
        f"({of}).",
    )
    if share < FOREIGN_ITEMS:
        print(
            f"warning: under {FOREIGN_ITEMS:.0%} of the file's events are on items this home knows: is it a log of "
            "the shop the home learned? Its lists can then only be the home's popular items and the sequences' own "
            "items."
        )


def _write_predictions(conn, frame, out: Path) -> None:
    """The output appears whole or not at all: written beside it under a short name, then renamed."""
    import duckdb

    staged = out.with_name(f".shopseq-predict-{os.getpid()}.partial")
    conn.register("predictions", frame)
    try:
        conn.execute(f"COPY predictions TO ? (FORMAT {OUTPUT_FORMATS[out.suffix]})", [str(staged)])
        staged.replace(out)
    except (duckdb.IOException, OSError) as error:
        raise UsageError(f"--out {str(out)!r} cannot be written: {str(error).splitlines()[0]}") from None
    finally:
        staged.unlink(missing_ok=True)


def _predict_sessions(args: argparse.Namespace, home: Path, out: Path, warehouse, registry, ref) -> int:
    """``predict`` on a home whose only next-item champion is the in-session model: each session of the file, as
    of its last event, gets its top-k next items."""
    import duckdb

    from assets.logic.catalogue import NEXT_EVENT_MODEL, SESSION_MODEL
    from assets.logic.ingest import FORMATS, IngestError
    from assets.logic.next_event import NEXT_EVENT_FEATURES
    from assets.logic.predict import read_sequences, score_sessions
    from assets.logic.serving import check_features
    from assets.logic.session_model import SESSION_FEATURES
    from resources.home import read_settings
    from resources.registry import CHAMPION

    model = registry.load_policy(ref)
    check_features(model, SESSION_FEATURES, f"{SESSION_MODEL} v{ref.version}")
    next_event_ref = registry.version_for_alias(NEXT_EVENT_MODEL, CHAMPION)  # where the log has event types
    next_event_model = registry.load_policy(next_event_ref) if next_event_ref else None
    if next_event_model is not None:
        check_features(next_event_model, NEXT_EVENT_FEATURES, f"{NEXT_EVENT_MODEL} v{next_event_ref.version}")
    tz = read_settings(str(home)).get("timezone", FORMATS[args.format].default_tz)
    began = time.perf_counter()
    with duckdb.connect() as conn:
        try:
            report = read_sequences(conn, args.events, args.format, tz)
            with warehouse.read_lock():
                frame, cutoff, known = score_sessions(conn, warehouse.path, model, args.k, next_event_model)
        except (IngestError, ValueError) as error:
            print(f"error: cannot score {error}", file=sys.stderr)
            return 2
        frame["models"] = f"{SESSION_MODEL} v{ref.version}" + (
            f", {NEXT_EVENT_MODEL} v{next_event_ref.version}" if next_event_ref else ""
        )
        _write_predictions(conn, frame, out)
    print(_read_line(args, report))
    print(
        f"Scored {frame['sequence_id'].nunique():,} sessions as of their last event in "
        f"{time.perf_counter() - began:.1f} s with {frame['models'].iloc[0]}; item side from the warehouse's "
        f"events before {cutoff}."
    )
    _print_short_lists(
        frame,
        args.k,
        f"the warehouse has few events before {cutoff}, the file's first: a list adds to a session's own items only "
        "what the shop's history before the file knows",
    )
    _print_known_items(known, "items of any of the warehouse's events")
    if next_event_ref is None:
        print(f"note: {NEXT_EVENT_MODEL} has no champion: its p_next_* columns are left out")
    print(f"Wrote {len(frame):,} rows to {out}")
    return 0


def _move_champion(args: argparse.Namespace, version_of) -> int:
    """Point ``champion`` of ``args.model`` at ``version_of(registry, conn, current)`` and record the change."""
    from assets.logic.lifecycle import record_alias_change
    from resources import ModelRegistry, Warehouse
    from resources.registry import CHAMPION

    home = prepare_home(args.home, existing=True)
    registry = ModelRegistry(home=str(home), tracking_uri=os.environ.get("SHOPSEQ_MLFLOW_TRACKING_URI", ""))
    current = registry.version_for_alias(args.model, CHAMPION)
    with Warehouse(home=str(home)).connect() as conn:
        try:
            target = version_of(registry, conn, current)
        except ValueError as error:
            raise UsageError(str(error)) from None
        registry.set_alias(target, CHAMPION, args.reason)
        record_alias_change(
            conn,
            args.model,
            CHAMPION,
            current.version if current else None,
            target.version,
            args.reason,
            f"shopseq {args.command}",
        )
    print(
        f"{args.model}: champion v{current.version if current else '-'} -> v{target.version} ({args.reason}). "
        "The next publish run (shopseq run --skip-training, or the publish job) scores with it."
    )
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    return _move_champion(args, lambda registry, conn, current: registry.version(args.model, args.version))


def cmd_rollback(args: argparse.Namespace) -> int:
    from assets.logic.lifecycle import rollback_target
    from resources.registry import CHAMPION

    def previous(registry, conn, current):
        if current is None:
            raise ValueError(f"{args.model} has no champion to roll back")
        version = rollback_target(conn, args.model, CHAMPION, current.version)
        if version is None:
            raise ValueError(
                f"{args.model} v{current.version} is the first champion on record: nothing to roll back to"
            )
        return registry.version(args.model, version)

    args.reason = args.reason or "rollback"
    return _move_champion(args, previous)


def cmd_explain(args: argparse.Namespace) -> int:
    from dagster import DagsterInstance

    from resources import ModelRegistry, Warehouse
    from workflows.explain import explain

    home = prepare_home(args.home, existing=True)
    registry = ModelRegistry(home=str(home), tracking_uri=os.environ.get("SHOPSEQ_MLFLOW_TRACKING_URI", ""))
    try:
        print(explain(Warehouse(home=str(home)), registry, DagsterInstance.get(), args.user, args.day))
    except ValueError as error:
        raise UsageError(str(error)) from None
    return 0


def _is_failure_record(record) -> bool:
    """A line the run_failure_recorder sensor wrote: the fields ``shopseq failures`` prints, of their types."""
    return (
        isinstance(record, dict)
        and all(isinstance(record.get(k), str) for k in ("time", "job", "run_id"))
        and isinstance(record.get("partition"), (str, type(None)))
        and isinstance(record.get("failed_checks"), list)
        and isinstance(record.get("failed_steps"), list)
        and all(
            isinstance(s, dict) and isinstance(s.get("step"), str) and isinstance(s.get("error"), (str, type(None)))
            for s in record["failed_steps"]
        )
    )


def cmd_failures(args: argparse.Namespace) -> int:
    import json

    from workflows.sensors import RUN_FAILURES_FILE

    try:
        path = Path(args.home).expanduser().resolve() / RUN_FAILURES_FILE
    except (OSError, ValueError) as error:
        raise UsageError(f"--home {args.home!r} is not a usable folder name: {error}") from None
    try:
        lines = path.read_bytes().decode("utf-8", errors="replace").splitlines() if path.exists() else []
    except OSError as error:
        raise UsageError(f"{path} cannot be read: {error.strerror}") from None
    records, unreadable, seen = [], [], set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short when the recorder was killed mid-write
            record = None
        if not _is_failure_record(record):
            unreadable.append(number)
        elif record["run_id"] not in seen:  # a run both shopseq run and the sensor recorded is listed once
            seen.add(record["run_id"])
            records.append(record)
    if unreadable:
        print(
            f"note: {path} line(s) {', '.join(map(str, unreadable))} are not complete failure records (cut short "
            "or edited?); skipped",
            file=sys.stderr,
        )
    if not records:
        print(f"no failed runs recorded in {path}")
        return 0
    for record in records[-args.last :]:
        where = f" partition {record['partition']}" if record["partition"] else ""
        print(f"{record['time']}  {record['job']}{where}  run {record['run_id']}")
        for step in record["failed_steps"]:
            print(f"    {step['step']}: {step['error'].splitlines()[0][:300] if step['error'] else ''}")
        for check in record["failed_checks"]:
            print(f"    check failed: {check}")
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
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{home}/mlflow.db",
        "--default-artifact-root",
        f"{home}/mlartifacts",
    ]
    print(" ".join(command[1:]), flush=True)
    os.execvp(command[0], command)


def _whole_number(low: int, high: int = 2**63 - 1):
    """An argparse type: a whole number in ``[low, high]``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low:,}, not {value:,}")
        if value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high:,}, not {value:,}")
        return value

    return parse


_positive_int = _whole_number(1)


def _timezone(text: str) -> str:
    from assets.logic.warehouse_sql import check_timezone

    try:
        return check_timezone(text, "time zone")
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


# Days a command accepts: the partitions start in 2014 (assets/partitions.py); a year typo such as 9999 would
# overflow the calendar's arithmetic before it reached a clear error.
FIRST_DAY, LAST_DAY = dt.date(1995, 1, 1), dt.date(2999, 12, 31)


def _date(text: str) -> dt.date:
    try:
        day = dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None
    if not FIRST_DAY <= day <= LAST_DAY:
        raise argparse.ArgumentTypeError(f"{day} is outside {FIRST_DAY}..{LAST_DAY}")
    return day


def build_parser() -> argparse.ArgumentParser:
    from assets.logic.catalogue import CATALOGUE
    from assets.logic.ingest import FORMATS
    from assets.logic.synthetic import ShopParams

    parser = argparse.ArgumentParser(prog="shopseq", description="Predict what e-commerce shoppers do next.")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_home(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--home",
            default=os.environ.get("SHOPSEQ_HOME", ".shopseq"),
            help="home folder for all state (default: $SHOPSEQ_HOME or ./.shopseq)",
        )
        return p

    demo = with_home(sub.add_parser("demo", help="synthetic landing data -> the whole graph -> summary"))
    demo.add_argument(
        "--days",
        type=_whole_number(4, 3660),
        default=14,
        help="days of synthetic data (default 14; at least 4: training needs two labelled cut-off days and a hold-out)",
    )
    demo.add_argument("--events-per-day", type=_whole_number(1, 100_000_000), default=20_000)
    demo.add_argument("--start", type=_date, default=ShopParams().shop_start, help="first day (default %(default)s)")
    demo.add_argument("--seed", type=_whole_number(0, 2**32 - 1), default=ShopParams().seed)
    demo.set_defaults(func=cmd_demo)

    ingest = with_home(sub.add_parser("ingest", help="split real logs into daily landing partitions, report counts"))
    ingest.add_argument("--format", required=True, choices=sorted(FORMATS))
    ingest.add_argument("--path", required=True, nargs="+", action="extend", help="source files (.gz too; repeatable)")
    ingest.add_argument(
        "--tz",
        type=_timezone,
        help="the shop's timezone: partition days, and how times without an offset are read "
        "(default: the format's, UTC except taobao = Asia/Shanghai)",
    )
    ingest.add_argument(
        "--start", type=_date, help="first valid day; earlier events are quarantined (timestamp_out_of_range)"
    )
    ingest.add_argument("--end", type=_date, help="last valid day; later events are quarantined")
    ingest.add_argument(
        "--pseudonymise",
        action="store_true",
        help=f"replace user and session ids by a keyed hash (key in ${PSEUDONYM_KEY_VARIABLE})",
    )
    ingest.set_defaults(func=cmd_ingest)

    run = with_home(sub.add_parser("run", help="materialise the daily graph for days, train, evaluate, publish"))
    run.add_argument("--start", type=_date, help="first day (default: the first landing day)")
    run.add_argument("--end", type=_date, help="last day (default: --start, or the last landing day)")
    run.add_argument(
        "--landing-mode", choices=["auto", "synthetic", "files"], default=os.environ.get("SHOPSEQ_LANDING_MODE", "auto")
    )
    run.add_argument("--skip-training", action="store_true", help="publish with the current champion")
    run.set_defaults(func=cmd_run)

    predict = with_home(
        sub.add_parser(
            "predict",
            help="score every sequence of a log file as of its last event: top-k items + next-action probabilities",
        )
    )
    predict.add_argument("--events", required=True, nargs="+", action="extend", help="log files (.gz too; repeatable)")
    predict.add_argument("--format", required=True, choices=sorted(FORMATS))
    predict.add_argument(
        "--k", type=_whole_number(1, 1000), default=20, help="items per sequence (default %(default)s)"
    )
    predict.add_argument("--out", required=True, help="output file: .csv, .parquet or .jsonl")
    predict.add_argument(
        "--protocol",
        choices=("auto", "next-day", "session"),
        default="auto",
        help="session: each session's next items from the in-session champion; next-day: each user's "
        "(or session's) items for tomorrow from the ranker; auto (default): next-day when the ranker "
        "has a champion, else session",
    )
    predict.add_argument(
        "--model-version",
        action="append",
        metavar="[NAME=]V",
        help="score with this version instead of the champion: V for the ranker, NAME=V for another model "
        "(repeatable; shopseq_session_next_item=V scores sessions with that version)",
    )
    predict.set_defaults(func=cmd_predict)

    promote = with_home(sub.add_parser("promote", help="make a model version the champion (recorded in alias_history)"))
    promote.add_argument("--model", required=True, choices=sorted(CATALOGUE))
    promote.add_argument("--version", required=True, type=_positive_int)
    promote.add_argument("--reason", required=True)
    promote.set_defaults(func=cmd_promote)

    rollback = with_home(sub.add_parser("rollback", help="move the champion back to the version it replaced"))
    rollback.add_argument("--model", required=True, choices=sorted(CATALOGUE))
    rollback.add_argument("--reason", help="recorded with the change (default: rollback)")
    rollback.set_defaults(func=cmd_rollback)

    explain = with_home(sub.add_parser("explain", help="which model, partitions and checks produced a user's rows"))
    explain.add_argument("--user", required=True)
    explain.add_argument("--day", required=True, type=_date)
    explain.set_defaults(func=cmd_explain)

    sub.add_parser(
        "bench",
        add_help=False,
        help="benchmark every stage on synthetic days of 1M and 10M events beside "
        "a pandas path and DuckDB's scan (shopseq bench --help)",
    )
    failures = with_home(sub.add_parser("failures", help="the failed runs recorded by the run_failure_recorder sensor"))
    failures.add_argument("--last", type=_positive_int, default=20, help="how many, newest last (default %(default)s)")
    failures.set_defaults(func=cmd_failures)

    for name, port, func in (("ui", 3000, cmd_ui), ("mlflow-ui", 5000, cmd_mlflow_ui)):
        p = with_home(sub.add_parser(name, help=f"open the {'Dagster' if name == 'ui' else 'MLflow'} UI on the home"))
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=_whole_number(1, 65535), default=port)
        p.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # The two beta parameters of Dagster in use are deliberate (see assets/partitions.py); the output is for people.
    warnings.filterwarnings("ignore", message=".*(backfill_policy|allow_nonexistent_upstream_partitions).*")
    if argv[:1] == ["bench"]:  # its own options: shopseq bench --help
        from bench.run import main as bench_main

        return bench_main(argv[1:])
    args = build_parser().parse_args(argv)
    from resources.home import SettingsInvalid
    from resources.registry import RegistryUnavailable

    try:
        return args.func(args)
    except (UsageError, SettingsInvalid) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (StageFailed, RegistryUnavailable) as failure:
        print(f"error: {failure}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
