"""Training: point-in-time training sets, LightGBM next-action and next-item models, gated promotion."""

import datetime as dt
import hashlib
import time

import numpy as np
import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
)

from assets.cleaned_events import cleaned_events
from assets.common import markdown_preview, point_in_time_check, reconciliation_check
from assets.features import ranking_candidates, user_features
from assets.logic import next_event, plots, training
from assets.logic.candidates import RANKER_FEATURES
from assets.logic.features import USER_FEATURE_COLUMNS
from assets.logic.metrics import reliability_table
from assets.logic.warehouse_sql import day_bounds, ensure_table, replace_table
from expectations import validate
from resources import ModelRegistry, Warehouse

# Next-action models: the label of the training set each one learns, and its registered name.
NEXT_ACTION_MODELS = {
    "label_purchase": "shopseq_next_purchase",
    "label_add_to_cart": "shopseq_next_cart",
    "label_return": "shopseq_next_return",
}
NEXT_ACTION_LABEL = {name: label for label, name in NEXT_ACTION_MODELS.items()}
RANKER_MODEL = "shopseq_next_item_ranker"
NEXT_EVENT_MODEL = "shopseq_next_event"
# The metric each model is promoted on: (target, metric); higher is better.
MAIN_METRIC = {
    **{name: (label, "auc") for label, name in NEXT_ACTION_MODELS.items()},
    RANKER_MODEL: ("any", "ndcg@20"),
    NEXT_EVENT_MODEL: ("next_event_type", "auc"),
}
TRAINING_TABLE = {
    **{name: "next_action_training_set" for name in NEXT_ACTION_MODELS.values()},
    RANKER_MODEL: "ranker_training_set",
    NEXT_EVENT_MODEL: "next_event_training_set",
}
# The key that orders each training set's rows: LightGBM (its histogram bins, bagging, the ranker's query groups) and
# the bootstrap intervals of the evaluation see the same rows in the same order on every run.
TRAINING_SET_ORDER = {
    "next_action_training_set": "as_of_date, user_id",
    "ranker_training_set": "as_of_date, user_id, item_id",
    "next_event_training_set": "as_of_date, next_time, user_id, event_id",
}
BASELINES = {
    **{name: (training.HISTORY_RULES[label][0], "base_rate") for label, name in NEXT_ACTION_MODELS.items()},
    RANKER_MODEL: ("popularity", "repeat_recent", "covisitation", "markov", "recent_covis_pop"),
    NEXT_EVENT_MODEL: ("class_prior", "last_type_markov"),
}
EVALUATION_COLUMNS = """(segment VARCHAR, method VARCHAR, target VARCHAR, metric VARCHAR, value DOUBLE, ci_low DOUBLE,
    ci_high DOUBLE, users BIGINT, model_name VARCHAR, model_version BIGINT, run_id VARCHAR, holdout_day DATE,
    evaluated_at TIMESTAMP)"""

_COMMON = dict(group_name="training", owners=["team:ml"])


class TrainingSetConfig(Config):
    train_days: int = 0
    """How many consecutive cut-off days before the hold-out day are stacked for training (0: every labelled one;
    the last of them is the validation day that picks the number of boosting rounds)."""


class TrainingConfig(Config):
    # Small trees, up to many rounds: next-day behaviour is noisy and training sets have a few
    # thousand users per cut-off (chosen on the Taobao sample's training days, see README).
    num_boost_round: int = 300
    """The cap: early stopping on the validation day (the last training cut-off) picks the rounds up to it."""
    early_stopping_rounds: int = 30
    """Rounds without improvement on the validation day before boosting stops (0: no validation day, no stopping)."""
    learning_rate: float = 0.05
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


def read_training_set(conn, table: str, split: str | None = None) -> pd.DataFrame:
    """The rows of a training set (of one split, or all), in the order of ``TRAINING_SET_ORDER``."""
    where = "WHERE split = $split" if split else ""
    return conn.execute(f"SELECT * FROM {table} {where} ORDER BY split DESC, {TRAINING_SET_ORDER[table]}",
                        {"split": split} if split else {}).df()


def model_sha256(booster) -> str:
    """The sha256 of the model file MLflow stores for ``booster`` (LightGBM's text format): equal hashes, equal models."""
    return hashlib.sha256(booster.model_to_string().encode()).hexdigest()


# The fewest examples of a label's rarer class (or users, for the ranker) a split needs to train on and to measure
# on: below it a hold-out AUC rests on a handful of users (one returning session among 17,710 on YooChoose).
MIN_EXAMPLES = 5
# What each next-action label says of a user on the day after a cut-off, for the reasons a model cannot train.
_LABEL_MEANS = {"label_purchase": "purchased", "label_add_to_cart": "added an item to the cart", "label_return": "came back"}


def training_blocker(conn, model_name: str) -> str | None:
    """Why this home's data cannot train ``model_name`` or measure it on the hold-out, or None when it can.

    A click log has no purchases, anonymous sessions never come back the next day, a log of views has one event
    type: a model whose labels hold one class (or no row) is skipped with this reason, by its training asset and by
    promotion alike, instead of failing the run."""
    table = TRAINING_TABLE[model_name]
    if model_name == RANKER_MODEL:
        users = dict(conn.execute(f"SELECT split, count(DISTINCT user_id) FROM {table} GROUP BY split").fetchall())
        if users.get("train", 0) < MIN_EXAMPLES:
            return (f"{users.get('train', 0)} user(s) touched one of their candidates on the day after a training "
                    f"cut-off, fewer than {MIN_EXAMPLES} (users who do not come back the next day leave the next-day "
                    "ranker nothing to learn)")
        day = conn.execute(f"SELECT min(as_of_date) FROM {table} WHERE split = 'holdout'").fetchone()[0]
        measured = 0 if day is None else training.holdout_targets(conn, pd.Timestamp(day).date())["user_id"].nunique()
        if measured < MIN_EXAMPLES:
            return (f"{measured} user(s) with history came back on the day after the hold-out cut-off, fewer than "
                    f"{MIN_EXAMPLES}: NDCG@20 cannot be measured")
        return None
    label = "next_type" if model_name == NEXT_EVENT_MODEL else NEXT_ACTION_LABEL[model_name]
    for split, rows, values in conn.execute(
        f"SELECT split, count(*), list(DISTINCT {label} ORDER BY {label}) FROM {table} GROUP BY split ORDER BY split DESC"
    ).fetchall():
        if len(values) >= 2:
            continue
        if model_name == NEXT_EVENT_MODEL:
            return (f"every session's next event in the {split} split ({rows:,} states) is a {values[0]}: "
                    "there is no other event type to tell apart")
        return (f"{label} is {values[0]} in all {rows:,} rows of the {split} split: "
                f"{'no' if values[0] == 0 else 'every'} user {_LABEL_MEANS[label]} on the day after its cut-off")
    if model_name != NEXT_EVENT_MODEL:
        for split, rows, minority, value in conn.execute(
            f"""SELECT split, count(*), least(sum({label}), count(*) - sum({label})),
                       CASE WHEN sum({label}) * 2 < count(*) THEN 1 ELSE 0 END
                FROM {table} GROUP BY split ORDER BY split DESC"""
        ).fetchall():
            if minority < MIN_EXAMPLES:
                return (f"only {minority} of the {rows:,} rows of the {split} split have {label} = {value}, fewer than "
                        f"{MIN_EXAMPLES}: too few to learn from, or to measure an AUC on")
    splits = {r[0] for r in conn.execute(f"SELECT DISTINCT split FROM {table}").fetchall()}
    missing = {"train", "holdout"} - splits
    return f"the {table} has no {' or '.join(sorted(missing))} rows" if missing else None


def skipped_result(context: AssetExecutionContext, model_name: str, reason: str) -> MaterializeResult:
    """A model asset that trained nothing because the data cannot train it: said in the run log, in the asset's
    metadata, and as a warning (not a blocking failure) of its evaluation check, which has nothing to validate."""
    context.log.warning(f"{model_name} not trained: {reason}")
    return MaterializeResult(
        metadata={"model_name": model_name, "trained": False, "not_trained_because": reason},
        check_results=[AssetCheckResult(
            check_name="model_evaluation_suite", passed=False, severity=AssetCheckSeverity.WARN,
            description=f"no model trained, so no evaluation: {reason}", metadata={"not_trained_because": reason},
        )],
    )


def holdout_evaluation(conn, model_name: str, booster) -> tuple[pd.DataFrame, dt.date]:
    """A model and its baselines on the hold-out cut-off of the current training set; refuses
    a hold-out on which the model's main metric is undefined (it could not be promoted)."""
    evaluation, day = _evaluate(conn, model_name, booster)
    target, metric = MAIN_METRIC[model_name]
    value = training.metric_value(evaluation, "model", target, metric)
    if not np.isfinite(value):
        users = evaluation.loc[(evaluation["method"] == "model") & (evaluation["target"] == target)
                               & (evaluation["segment"] == "all"), "users"].max()
        raise ValueError(
            f"{model_name}: the hold-out (features as of {day}, targets on the next day) cannot measure {metric} "
            f"for target {target!r} ({users} users, no positive or no negative among them); land more days"
        )
    return evaluation, day


def _evaluate(conn, model_name: str, booster) -> tuple[pd.DataFrame, dt.date]:
    if model_name == NEXT_EVENT_MODEL:
        frame = read_training_set(conn, "next_event_training_set")
        holdout = frame[frame["split"] == "holdout"]
        day = pd.Timestamp(holdout["as_of_date"].iloc[0]).date()
        return next_event.evaluate_next_event(holdout, booster, frame[frame["split"] == "train"]), day
    if model_name == RANKER_MODEL:
        holdout = read_training_set(conn, "ranker_training_set", "holdout")
        day = pd.Timestamp(holdout["as_of_date"].iloc[0]).date()
        targets = training.holdout_targets(conn, day)
        markov = training.markov_recommendations(conn, day, targets["user_id"].unique().tolist(), 20)
        return training.evaluate_ranker(holdout, booster, targets, markov), day
    label = NEXT_ACTION_LABEL[model_name]
    frame = read_training_set(conn, "next_action_training_set")
    train_rate = float(frame.loc[frame["split"] == "train", label].mean())
    holdout = frame[frame["split"] == "holdout"]
    day = pd.Timestamp(holdout["as_of_date"].iloc[0]).date()
    return training.evaluate_next_action(holdout, booster, label, train_rate), day


def _split_frame(train: pd.DataFrame, holdout: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([train.assign(split="train"), holdout.assign(split="holdout")], ignore_index=True)


def _point_in_time(frame: pd.DataFrame, hours_since_last_event: str) -> pd.DataFrame:
    """Per as-of day: the cut-off and the latest event any row's features describe."""
    latest = frame["cutoff"] - pd.to_timedelta(frame[hours_since_last_event], unit="h")
    return (
        frame.assign(latest_event_time=latest)
        .groupby("as_of_date", as_index=False)
        .agg(cutoff=("cutoff", "min"), latest_event_time=("latest_event_time", "max"), rows=("cutoff", "size"))
    )


def _training_set_result(
    frame: pd.DataFrame, table: str, train_days, holdout_day, started, hours_since_last_event: str
) -> MaterializeResult:
    return MaterializeResult(
        metadata={
            "dagster/row_count": len(frame),
            "train_cutoffs": [str(d) for d in train_days],
            "holdout_cutoff": str(holdout_day),
            "train_rows": int((frame["split"] == "train").sum()),
            "holdout_rows": int((frame["split"] == "holdout").sum()),
            "preview": markdown_preview(frame),
            "seconds": round(time.perf_counter() - started, 2),
        },
        check_results=[
            validate(frame, table, f"{table}_suite"),
            point_in_time_check(_point_in_time(frame, hours_since_last_event), f"{table}_point_in_time"),
        ],
    )


@asset(
    **_COMMON,
    deps=[user_features, cleaned_events],
    kinds={"duckdb"},
    check_specs=[
        AssetCheckSpec("next_action_training_set_suite", asset="next_action_training_set", blocking=True),
        AssetCheckSpec("next_action_training_set_point_in_time", asset="next_action_training_set", blocking=True,
                       description="Features of every row describe only events before its cut-off."),
    ],
)
def next_action_training_set(config: TrainingSetConfig, warehouse: Warehouse) -> MaterializeResult:
    """User features as of the end of each cut-off day D with 0/1 labels from day D + 1
    (purchase, add to cart, return); the last labelled cut-off is the temporal hold-out."""
    started = time.perf_counter()
    with warehouse.connect() as conn:
        train_days, holdout_day = training.split_cutoffs(training.labelled_cutoffs(conn), config.train_days)
        frame = _split_frame(
            training.next_action_frame(conn, train_days), training.next_action_frame(conn, [holdout_day])
        )
        replace_table(conn, "next_action_training_set", frame)
    return _training_set_result(
        frame, "next_action_training_set", train_days, holdout_day, started, "hours_since_last_event"
    )


@asset(
    **_COMMON,
    deps=[ranking_candidates, cleaned_events],
    kinds={"duckdb"},
    check_specs=[
        AssetCheckSpec("ranker_training_set_suite", asset="ranker_training_set", blocking=True),
        AssetCheckSpec("ranker_training_set_point_in_time", asset="ranker_training_set", blocking=True,
                       description="Features of every row describe only events before its cut-off."),
    ],
)
def ranker_training_set(config: TrainingSetConfig, warehouse: Warehouse) -> MaterializeResult:
    """Candidates as of each cut-off day D with graded relevance from day D + 1 (training keeps users
    with a relevant candidate; the hold-out keeps every candidate)."""
    started = time.perf_counter()
    with warehouse.connect() as conn:
        train_days, holdout_day = training.split_cutoffs(training.labelled_cutoffs(conn), config.train_days)
        frame = _split_frame(
            training.ranker_frame(conn, train_days, positives_only=True),
            training.ranker_frame(conn, [holdout_day], positives_only=False),
        )
        replace_table(conn, "ranker_training_set", frame)
    return _training_set_result(
        frame, "ranker_training_set", train_days, holdout_day, started, "user_hours_since_last_event"
    )


@asset(
    **_COMMON,
    deps=[cleaned_events, user_features, ranking_candidates],  # the labelled cut-offs need features and candidates
    kinds={"duckdb"},
    check_specs=[
        AssetCheckSpec("next_event_training_set_suite", asset="next_event_training_set", blocking=True),
        AssetCheckSpec("next_event_training_set_point_in_time", asset="next_event_training_set", blocking=True,
                       description="Every state describes only its session up to the state's event (before the "
                       "labelled next event) and the user's activity before the session."),
    ],
)
def next_event_training_set(config: TrainingSetConfig, warehouse: Warehouse) -> MaterializeResult:
    """In-session states labelled with the type of the session's next event: training states have their next
    event on the days after the training cut-offs, hold-out states on the day after the hold-out cut-off (the
    same days as the other models' labels)."""
    started = time.perf_counter()
    with warehouse.connect() as conn:
        train_days, holdout_day = training.split_cutoffs(training.labelled_cutoffs(conn), config.train_days)
        tz = warehouse.timezone
        frames = []
        for split, days in (("train", train_days), ("holdout", [holdout_day])):
            for day in days:  # states whose next event is on day + 1, as of the cut-off day
                start, end = day_bounds(day + dt.timedelta(days=1), tz)
                states = next_event.next_event_frame(conn, start, end)
                frames.append(states.assign(split=split, as_of_date=pd.Timestamp(day).as_unit("ns")))
        frame = pd.concat(frames, ignore_index=True)
        replace_table(conn, "next_event_training_set", frame)
        in_order = reconciliation_check(
            conn, "next_event_training_set_point_in_time",
            """SELECT as_of_date AS day, count(*) AS expected,
                      count(*) FILTER (WHERE state_time <= next_time AND session_start <= state_time) AS actual
               FROM next_event_training_set GROUP BY ALL ORDER BY 1""",
            {},
        )
    return MaterializeResult(
        metadata={
            "dagster/row_count": len(frame),
            "train_cutoffs": [str(d) for d in train_days],
            "holdout_cutoff": str(holdout_day),
            "train_rows": int((frame["split"] == "train").sum()),
            "holdout_rows": int((frame["split"] == "holdout").sum()),
            "next_types": MetadataValue.md(frame.groupby(["split", "next_type"]).size().unstack(0).fillna(0).to_markdown()),
            "preview": markdown_preview(frame),
            "seconds": round(time.perf_counter() - started, 2),
        },
        check_results=[validate(frame, "next_event_training_set", "next_event_training_set_suite"), in_order],
    )


def _comparison_markdown(evaluation: pd.DataFrame, metrics: list[str]) -> MetadataValue:
    """Model and baselines side by side per segment and target; the model with its 95% interval."""
    shown = evaluation[evaluation["metric"].isin(metrics)]
    table = shown.pivot_table(index=["segment", "target", "metric"], columns="method", values="value", sort=False).round(4)
    model = shown[shown["method"] == "model"].set_index(["segment", "target", "metric"]).reindex(table.index)
    table["model 95% CI"] = [
        f"{lo:.4f}..{hi:.4f}" if pd.notna(lo) else "" for lo, hi in zip(model["ci_low"], model["ci_high"])
    ]
    return MetadataValue.md(table.reset_index().to_markdown(index=False))


def _record_model(
    context: AssetExecutionContext,
    warehouse: Warehouse,
    registry: ModelRegistry,
    model_name: str,
    booster,
    train: pd.DataFrame,
    features: list[str],
    evaluation: pd.DataFrame,
    config: TrainingConfig,
    holdout_day: dt.date,
    started: float,
    extra_tables: dict[str, pd.DataFrame] | None = None,
    extra_figures: dict | None = None,
) -> MaterializeResult:
    """Log the run to MLflow (with its training data as a dataset input and figures), register the version as
    challenger, store its evaluation."""
    flat = {
        (f"{row.method}.{row.target}.{row.metric}" + ("" if row.segment == "all" else f".{row.segment}")).replace("@", "_at_"): row.value
        for row in evaluation.itertuples()
        if pd.notna(row.value)
    }
    ref = registry.log_lightgbm(
        model_name,
        booster,
        train[features].astype(float),
        params={**config.model_dump(), "features": len(features), "train_rows": len(train),
                "boosting_rounds": booster.current_iteration()},  # the rule's trees and the early-stopped rounds
        metrics=flat,
        tags={
            "dagster_run_id": context.run.run_id,
            "model_sha256": model_sha256(booster),
            "holdout_day": str(holdout_day),
            "train_cutoffs": ",".join(sorted({str(pd.Timestamp(d).date()) for d in train["as_of_date"]})),
        },
        tables={"holdout_evaluation": evaluation, **(extra_tables or {})},
        datasets={"training": (train, f"{TRAINING_TABLE[model_name]} (train split)")},
        figures={"feature_importance": plots.importance_figure(booster), **(extra_figures or {}),
                 **_metric_by_day(warehouse, model_name, evaluation, holdout_day)},
    )
    stored = evaluation.assign(
        model_name=model_name, model_version=ref.version, run_id=ref.run_id, holdout_day=holdout_day,
        evaluated_at=pd.Timestamp.now("UTC").tz_localize(None),
    )
    with warehouse.connect() as conn:
        ensure_table(conn, "model_evaluations", EVALUATION_COLUMNS)
        conn.register("incoming_frame", stored)
        conn.execute("INSERT INTO model_evaluations BY NAME SELECT * FROM incoming_frame")
        conn.unregister("incoming_frame")
    target, metric = MAIN_METRIC[model_name]
    return MaterializeResult(
        metadata={
            "model_name": model_name,
            "model_version": ref.version,
            "dagster/row_count": len(stored),
            "mlflow_run_id": ref.run_id,
            "mlflow_run": MetadataValue.url(registry.run_url(ref.run_id)),
            "mlflow_model_version": MetadataValue.url(registry.version_url(ref)),
            "mlflow_model_uri": ref.uri,
            "holdout_day": str(holdout_day),
            "train_rows": len(train),
            f"holdout_{metric}": training.metric_value(evaluation, "model", target, metric),
            "model_vs_baselines": _comparison_markdown(evaluation, [metric, "recall@20", "auc", "brier"]),
            **{name: MetadataValue.md(table.to_markdown(index=False)) for name, table in (extra_tables or {}).items()},
            "seconds": round(time.perf_counter() - started, 2),
        },
        check_results=[validate(evaluation, "model_evaluation", "model_evaluation_suite")],
    )


def _metric_by_day(warehouse: Warehouse, model_name: str, evaluation: pd.DataFrame, holdout_day: dt.date) -> dict:
    """The main metric of this model's earlier versions per replayed day, with this hold-out, as a figure."""
    target, metric = MAIN_METRIC[model_name]
    this = evaluation[(evaluation["segment"] == "all") & (evaluation["target"] == target) & (evaluation["metric"] == metric)]
    per_day = [this.assign(day=pd.Timestamp(holdout_day + dt.timedelta(days=1)))[["day", "method", "value"]]]
    with warehouse.connect() as conn:
        if conn.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'model_replay'").fetchone()[0]:
            per_day.append(conn.execute(
                """SELECT day, method, value FROM model_replay
                   WHERE model_name = ? AND segment = 'all' AND target = ? AND metric = ?""",
                [model_name, target, metric],
            ).df())
    per_day = pd.concat([f for f in per_day if len(f)], ignore_index=True)
    return {"metric_by_day": plots.metric_by_day_figure(per_day, f"{target} {metric}")}


def _train_and_record(context, config: TrainingConfig, warehouse: Warehouse, registry: ModelRegistry, model_name: str,
                      train_model, features: list[str]) -> MaterializeResult:
    """Train ``model_name`` on the train split of its training set, evaluate it on the hold-out, record it."""
    started = time.perf_counter()
    with warehouse.connect() as conn:
        if reason := training_blocker(conn, model_name):
            return skipped_result(context, model_name, reason)
        train = read_training_set(conn, TRAINING_TABLE[model_name], "train")
        booster = train_model(train, config.params())
        evaluation, holdout_day = holdout_evaluation(conn, model_name, booster)
    return _record_model(context, warehouse, registry, model_name, booster, train, features, evaluation, config,
                         holdout_day, started)


def _next_action_asset(asset_name: str, label: str, what: str):
    model_name = NEXT_ACTION_MODELS[label]

    @asset(
        name=asset_name,
        **_COMMON,
        deps=[next_action_training_set],
        kinds={"lightgbm", "mlflow"},
        check_specs=[AssetCheckSpec("model_evaluation_suite", asset=asset_name, blocking=True)],
        description=f"LightGBM probability that a user {what} tomorrow, evaluated on the temporal hold-out beside "
        f"{training.HISTORY_RULES[label][0]} and the base rate (with a reliability table), logged and registered "
        f"in MLflow as {model_name}@challenger.",
    )
    def _model(
        context: AssetExecutionContext, config: TrainingConfig, warehouse: Warehouse, registry: ModelRegistry
    ) -> MaterializeResult:
        started = time.perf_counter()
        with warehouse.connect() as conn:
            if reason := training_blocker(conn, model_name):
                return skipped_result(context, model_name, reason)
            train = read_training_set(conn, "next_action_training_set", "train")
            booster = training.train_binary(train, label, config.params())
            evaluation, holdout_day = holdout_evaluation(conn, model_name, booster)
            holdout = read_training_set(conn, "next_action_training_set", "holdout")
        reliability = reliability_table(holdout[label], booster.predict(holdout[USER_FEATURE_COLUMNS].astype(float)))
        return _record_model(context, warehouse, registry, model_name, booster, train, USER_FEATURE_COLUMNS,
                             evaluation, config, holdout_day, started, {"reliability": reliability},
                             {"calibration": plots.calibration_figure(reliability)})

    return _model


next_purchase_model = _next_action_asset("next_purchase_model", "label_purchase", "purchases")
next_cart_model = _next_action_asset("next_cart_model", "label_add_to_cart", "adds an item to the cart")
next_return_model = _next_action_asset("next_return_model", "label_return", "comes back (any event)")
NEXT_ACTION_ASSETS = [next_purchase_model, next_cart_model, next_return_model]


@asset(
    **_COMMON,
    deps=[ranker_training_set],
    kinds={"lightgbm", "mlflow"},
    check_specs=[AssetCheckSpec("model_evaluation_suite", asset="next_item_ranker", blocking=True)],
)
def next_item_ranker(
    context: AssetExecutionContext, config: TrainingConfig, warehouse: Warehouse, registry: ModelRegistry
) -> MaterializeResult:
    """LightGBM LambdaRank reranker of the candidates, evaluated on the temporal hold-out (next-day
    protocol) beside popularity, repeat-recent and recent+co-visitation+popularity, registered as ``challenger``."""
    return _train_and_record(context, config, warehouse, registry, RANKER_MODEL, training.train_lambdarank, RANKER_FEATURES)


@asset(
    **_COMMON,
    deps=[next_event_training_set],
    kinds={"lightgbm", "mlflow"},
    check_specs=[AssetCheckSpec("model_evaluation_suite", asset="next_event_model", blocking=True)],
)
def next_event_model(
    context: AssetExecutionContext, config: TrainingConfig, warehouse: Warehouse, registry: ModelRegistry
) -> MaterializeResult:
    """LightGBM multiclass model of the type of a session's next event (view, search, cart, remove, favourite,
    purchase) from the session so far, evaluated on the hold-out day's states beside the class prior and a
    last-type Markov chain, registered in MLflow as shopseq_next_event@challenger."""
    return _train_and_record(context, config, warehouse, registry, NEXT_EVENT_MODEL, next_event.train_next_event,
                             next_event.NEXT_EVENT_FEATURES)
