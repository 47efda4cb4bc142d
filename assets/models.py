"""Training: point-in-time training sets, the models of the catalogue, their hold-out evaluation and MLflow record.

Every asset here is generated from ``assets.logic.catalogue``: one training-set asset per ``TrainingSetSpec``, one
model asset per ``ModelSpec``. A model asset trains the learned model, evaluates it beside its baselines on the
hold-out, registers it as ``challenger``, registers each rule policy that may serve in its place (a new version
only when the rule changed), and stores every evaluation once in ``model_evaluations`` for promotion to read.
"""

import datetime as dt
import hashlib
import time

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
)

from assets.common import markdown_preview
from assets.logic import catalogue, plots, profile, training
from assets.logic.catalogue import (
    CATALOGUE,
    TRAINING_SETS,
    ModelSpec,
    TrainingSetSpec,
    main_metric,
    read_training_set,
    training_blocker,
)
from assets.logic.policies import LEARNED, RULE, policy_name
from assets.logic.warehouse_sql import ensure_table, replace_table
from expectations import validate, validate_window
from resources import ModelRegistry, Warehouse
from resources.registry import EXAMPLE_ROWS

_COMMON = dict(group_name="training", owners=["team:ml"])


class TrainingSetConfig(Config):
    train_days: int = 7
    """How many consecutive cut-off days before the hold-out day are stacked for training (0: every labelled one;
    the last of them is the validation day that picks the number of boosting rounds). A week by default: training
    time grows with every day stacked, and behaviour older than a week says less of tomorrow."""


class TrainingConfig(Config):
    # Small trees, up to many rounds: next-day behaviour is noisy and training sets have a few
    # thousand users per cut-off (chosen on the Taobao sample's training days, see README).
    num_boost_round: int = 300
    """The cap: early stopping on the validation day (the last training cut-off) picks the rounds up to it."""
    early_stopping_rounds: int = 30
    """Rounds without improvement on the validation day before boosting stops (0: no validation day, no stopping)."""
    learning_rate: float = 0.1
    """Half the rounds of 0.05 for the same fit: on the Taobao sample every model measured within noise of 0.05
    (docs/models.md)."""
    num_leaves: int = 7
    min_data_in_leaf: int = 50
    seed: int = 42

    def params(self) -> training.LightGBMParams:
        return training.LightGBMParams(
            num_boost_round=self.num_boost_round,
            early_stopping_rounds=self.early_stopping_rounds,
            learning_rate=self.learning_rate,
            num_leaves=self.num_leaves,
            min_data_in_leaf=self.min_data_in_leaf,
            seed=self.seed,
        )


def profile_metadata(seconds: dict[str, float], started: float) -> dict:
    """An asset's total seconds and where they went (``assets.logic.profile``: the steps timed, and the rest)."""
    total = time.perf_counter() - started
    steps = {**seconds, "other": total - sum(seconds.values())}
    return {"seconds": round(total, 2), "profile": {step: round(value, 3) for step, value in steps.items()}}


def model_sha256(booster) -> str:
    """The sha256 of the model file MLflow stores for ``booster`` (LightGBM's text format): equal hashes, equal
    models."""
    return hashlib.sha256(booster.model_to_string().encode()).hexdigest()


def skipped_result(context: AssetExecutionContext, model_name: str, reason: str) -> MaterializeResult:
    """A model asset that trained nothing because the data cannot train it: said in the run log, in the asset's
    metadata, and as a warning (not a blocking failure) of its evaluation check, which has nothing to validate."""
    context.log.warning(f"{model_name} not trained: {reason}")
    return MaterializeResult(
        metadata={"model_name": model_name, "trained": False, "not_trained_because": reason},
        check_results=[
            AssetCheckResult(
                check_name="model_evaluation_suite",
                passed=False,
                severity=AssetCheckSeverity.WARN,
                description=f"no model trained, so no evaluation: {reason}",
                metadata={"not_trained_because": reason},
            )
        ],
    )


def _comparison_markdown(evaluation: pd.DataFrame, metrics: list[str]) -> MetadataValue:
    """Model and baselines side by side per segment and target; the model with its 95% interval."""
    shown = evaluation[evaluation["metric"].isin(metrics)]
    table = shown.pivot_table(
        index=["segment", "target", "metric"], columns="method", values="value", sort=False
    ).round(4)
    model = shown[shown["method"] == "model"].set_index(["segment", "target", "metric"]).reindex(table.index)
    table["model 95% CI"] = [
        f"{lo:.4f}..{hi:.4f}" if pd.notna(lo) else "" for lo, hi in zip(model["ci_low"], model["ci_high"])
    ]
    return MetadataValue.md(table.reset_index().to_markdown(index=False))


def _flat_metrics(evaluation: pd.DataFrame) -> dict[str, float]:
    return {
        (f"{row.method}.{row.target}.{row.metric}" + ("" if row.segment == "all" else f".{row.segment}")).replace(
            "@", "_at_"
        ): row.value
        for row in evaluation.itertuples()
        if pd.notna(row.value)
    }


def store_evaluation(conn, evaluation: pd.DataFrame, ref, holdout_day: dt.date, policy: str, kind: str) -> None:
    """Keep one version's evaluation on one hold-out in ``model_evaluations``, where promotion reads it."""
    stored = evaluation.assign(
        model_name=ref.name,
        model_version=ref.version,
        run_id=ref.run_id,
        holdout_day=holdout_day,
        evaluated_at=pd.Timestamp.now("UTC").tz_localize(None),
        policy=policy,
        policy_kind=kind,
    )
    ensure_table(conn, "model_evaluations", add_new_columns=True)
    conn.register("incoming_frame", stored)
    conn.execute("INSERT INTO model_evaluations BY NAME SELECT * FROM incoming_frame")
    conn.unregister("incoming_frame")


def as_rule_evaluation(evaluation: pd.DataFrame, rule: str) -> pd.DataFrame:
    """A rule's evaluation from the learned model's: the rule's rows become method ``model`` (raw lists too), the
    learned model's rows are left out, the other baselines stay: the same numbers, computed once."""
    method = evaluation["method"]
    kept = evaluation[~method.isin(["model", "model_raw"])]
    return kept.assign(method=kept["method"].replace({rule: "model", f"{rule}_raw": "model_raw"}))


def _record_model(
    context: AssetExecutionContext,
    warehouse: Warehouse,
    registry: ModelRegistry,
    spec: ModelSpec,
    booster,
    rules: dict,
    train: pd.DataFrame,
    evaluation: pd.DataFrame,
    extras: tuple[dict, dict],
    config: TrainingConfig,
    holdout_day: dt.date,
) -> dict:
    """Log the run to MLflow (with its training data as a dataset input and figures), register the version as
    challenger, register the rule policies that may serve in its place, store every evaluation; returns the model
    asset's metadata."""
    tables, figures = extras
    # the input example (and signature) logged with a LightGBM model and the rules; a model that logs itself has its own
    example = train.head(EXAMPLE_ROWS)[spec.features].astype(float) if spec.log is None or rules else None
    cutoffs = pd.to_datetime(train["as_of_date"].drop_duplicates())
    tags = {
        "dagster_run_id": context.run.run_id,
        "holdout_day": str(holdout_day),
        "train_cutoffs": ",".join(sorted(cutoffs.dt.strftime("%Y-%m-%d"))),
    }
    if spec.log is not None:  # a learned model of another kind than LightGBM logs itself
        tables = {"holdout_evaluation": evaluation, **tables}
        with profile.step("mlflow"):
            ref = spec.log(registry, spec.name, booster, train, _flat_metrics(evaluation), tags, tables)
    else:
        with profile.step("plots"):
            figures = {
                "feature_importance": plots.importance_figure(booster),
                **figures,
                **_metric_by_day(warehouse, spec, evaluation, holdout_day),
            }
        with profile.step("mlflow"):
            ref = registry.log_lightgbm(
                spec.name,
                booster,
                example,
                params={
                    **config.model_dump(),
                    "features": len(spec.features),
                    "train_rows": len(train),
                    "boosting_rounds": booster.current_iteration(),
                },  # the rule's trees and the early-stopped rounds
                metrics=_flat_metrics(evaluation),
                tags={**tags, "model_sha256": model_sha256(booster)},
                tables={"holdout_evaluation": evaluation, **tables},
                datasets={"training": (train, f"{spec.training_set} (train split)")},
                figures=figures,
            )
    rule_refs = {}
    for name, policy in rules.items():
        rule_evaluation = as_rule_evaluation(evaluation, name)
        with profile.step("mlflow"):
            rule_refs[name] = registry.rule_version(
                spec.name,
                policy,
                example,
                _flat_metrics(rule_evaluation),
                tags,
                {"holdout_evaluation": rule_evaluation},
            )
    with profile.step("store"), warehouse.connect() as conn:
        store_evaluation(conn, evaluation, ref, holdout_day, policy_name(booster), LEARNED)
        for name, rule_ref in rule_refs.items():
            store_evaluation(conn, as_rule_evaluation(evaluation, name), rule_ref, holdout_day, name, RULE)
    return {
        "model_name": spec.name,
        "model_version": ref.version,
        "dagster/row_count": len(evaluation),
        "mlflow_run": MetadataValue.url(registry.run_url(ref.run_id)),
        "mlflow_model_version": MetadataValue.url(registry.version_url(ref)),
        "mlflow_model_uri": ref.uri,
        "rule_policies": MetadataValue.md(
            "| rule | version |\n|---|---|\n" + "\n".join(f"| {name} | {r.version} |" for name, r in rule_refs.items())
        )
        if rule_refs
        else "none",
        "holdout_day": str(holdout_day),
        "train_rows": len(train),
        f"holdout_{spec.metric}": main_metric(evaluation, spec),
        "model_vs_baselines": _comparison_markdown(evaluation, [spec.metric, "recall@20", "auc", "brier"]),
        **{name: MetadataValue.md(table.to_markdown(index=False)) for name, table in tables.items()},
    }


def _metric_by_day(warehouse: Warehouse, spec: ModelSpec, evaluation: pd.DataFrame, holdout_day: dt.date) -> dict:
    """The main metric of this model's earlier versions per replayed day, with this hold-out, as a figure."""
    model_name, target, metric = spec.name, spec.target, spec.metric
    this = evaluation[
        (evaluation["segment"] == "all") & (evaluation["target"] == target) & (evaluation["metric"] == metric)
    ]
    per_day = [this.assign(day=pd.Timestamp(holdout_day + dt.timedelta(days=1)))[["day", "method", "value"]]]
    with warehouse.connect(read_only=True) as conn:
        if conn.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'model_replay'").fetchone()[
            0
        ]:
            per_day.append(
                conn.execute(
                    """SELECT day, method, value FROM model_replay
                   WHERE model_name = ? AND segment = 'all' AND target = ? AND metric = ?""",
                    [model_name, target, metric],
                ).df()
            )
    per_day = pd.concat([f for f in per_day if len(f)], ignore_index=True)
    return {"metric_by_day": plots.metric_by_day_figure(per_day, f"{target} {metric}")}


def _not_built(context: AssetExecutionContext, spec: TrainingSetSpec, reason: str) -> MaterializeResult:
    """A training set this home's data cannot make: said in the run log, its metadata and as warnings of its checks."""
    context.log.warning(f"{spec.table} not built: {reason}")
    return MaterializeResult(
        metadata={"built": False, "not_built_because": reason},
        check_results=[
            AssetCheckResult(
                check_name=name,
                passed=False,
                severity=AssetCheckSeverity.WARN,
                description=f"nothing to check: {reason}",
            )
            for name in (f"{spec.table}_suite", f"{spec.table}_point_in_time")
        ],
    )


def _training_set_asset(spec: TrainingSetSpec):
    @asset(
        name=spec.table,
        **_COMMON,
        deps=[AssetKey(dep) for dep in spec.deps],
        kinds={"duckdb"},
        description=spec.description,
        check_specs=[
            AssetCheckSpec(f"{spec.table}_suite", asset=spec.table, blocking=True),
            AssetCheckSpec(
                f"{spec.table}_point_in_time",
                asset=spec.table,
                blocking=True,
                description="Every row describes only what happened before its cut-off.",
            ),
        ],
    )
    def _training_set(
        context: AssetExecutionContext, config: TrainingSetConfig, warehouse: Warehouse
    ) -> MaterializeResult:
        started = time.perf_counter()
        with profile.profiled() as seconds:
            with warehouse.connect() as conn:
                tz = warehouse.timezone
                cutoffs = spec.cutoffs(conn, tz)
                if len(cutoffs) < 2:  # the models it feeds are skipped (``training_blocker``): no stale rows stay
                    conn.execute(f"DROP TABLE IF EXISTS {spec.table}")
                    return _not_built(
                        context,
                        spec,
                        f"{len(cutoffs)} cut-off day(s) with labels for it; it needs 2, one of them for the hold-out",
                    )
                train_days, holdout_day = training.split_cutoffs(cutoffs, spec.train_days(config.train_days))
                with profile.step("build"):
                    frame = spec.build(conn, train_days, holdout_day, tz)
                with profile.step("store"):
                    replace_table(conn, spec.table, frame)
                with profile.step("suite"):  # as the daily tables': expectations counted in SQL over every row
                    checked, _ = validate_window(conn, spec.table, {}, spec.table, f"{spec.table}_suite")
                with profile.step("point_in_time"):
                    suite, per_day = spec.point_in_time(conn, frame)
            with profile.step("point_in_time"):
                in_time = validate(
                    per_day,
                    suite,
                    f"{spec.table}_point_in_time",
                    extra_metadata={"per_day": markdown_preview(per_day, 31)},
                )
        return MaterializeResult(
            metadata={
                "dagster/row_count": len(frame),
                "train_cutoffs": [str(d) for d in train_days],
                "holdout_cutoff": str(holdout_day),
                "train_rows": int((frame["split"] == "train").sum()),
                "holdout_rows": int((frame["split"] == "holdout").sum()),
                "preview": markdown_preview(frame),
                **profile_metadata(seconds, started),
            },
            check_results=[checked, in_time],
        )

    return _training_set


def _model_asset(spec: ModelSpec):
    @asset(
        name=spec.asset,
        **_COMMON,
        deps=[AssetKey(table) for table in (spec.training_set, *spec.reads)],
        kinds={"lightgbm", "mlflow"},
        check_specs=[AssetCheckSpec("model_evaluation_suite", asset=spec.asset, blocking=True)],
        description=f"{spec.description} Registered in MLflow as {spec.name}@challenger.",
    )
    def _model(
        context: AssetExecutionContext, config: TrainingConfig, warehouse: Warehouse, registry: ModelRegistry
    ) -> MaterializeResult:
        started = time.perf_counter()
        with profile.profiled() as seconds:
            with profile.step("read"), warehouse.connect(read_only=True) as conn:
                if reason := training_blocker(conn, spec.name, warehouse.timezone):
                    return skipped_result(context, spec.name, reason)
                train = read_training_set(conn, spec.training_set, "train")
                trained_for = pd.Timestamp(catalogue.holdout_day(conn, spec.training_set)).date()
            with profile.step("train"):
                booster = spec.train(train, config.params())  # no connection: readers and other runs' steps go on
            with profile.step("evaluate"), warehouse.connect(read_only=True) as conn:
                rules = spec.rules(conn)
                evaluation, evaluated_on = spec.evaluate(conn, booster, rules, warehouse.timezone)
                extras = spec.extras(conn, booster) if spec.extras else ({}, {})
            if evaluated_on != trained_for:
                raise RuntimeError(
                    f"{spec.training_set} was rebuilt while {spec.name} trained (hold-out {trained_for}, then "
                    f"{evaluated_on}): materialise {spec.asset} again"
                )
            metadata = _record_model(
                context, warehouse, registry, spec, booster, rules, train, evaluation, extras, config, evaluated_on
            )
        return MaterializeResult(
            metadata={**metadata, **profile_metadata(seconds, started)},
            check_results=[validate(evaluation, "model_evaluation", "model_evaluation_suite")],
        )

    return _model


TRAINING_SET_ASSETS = [_training_set_asset(spec) for spec in TRAINING_SETS.values()]
MODEL_ASSETS = [_model_asset(spec) for spec in CATALOGUE.values()]
