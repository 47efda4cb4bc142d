"""Promotion: a challenger becomes champion only when it beats the baselines and the current champion."""

import time

import pandas as pd
from dagster import AssetCheckSpec, Config, MaterializeResult, MetadataValue, asset

from assets.logic.lifecycle import record_alias_change
from assets.logic.warehouse_sql import ensure_table
from assets.logic.training import metric_value
from assets.models import (
    BASELINES,
    MAIN_METRIC,
    NEXT_ACTION_ASSETS,
    holdout_evaluation,
    next_event_model,
    training_blocker,
    next_item_ranker,
)
from expectations import validate
from resources import ModelRegistry, Warehouse
from resources.registry import CHALLENGER, CHAMPION


# One row per model and promotion run (the columns the first versions created from the decisions frame).
PROMOTION_LOG_COLUMNS = """(model_name VARCHAR, challenger_version BIGINT, champion_version BIGINT, champion_run_id VARCHAR,
    decision VARCHAR, reason VARCHAR, metric VARCHAR, challenger_metric DOUBLE, champion_metric_before DOUBLE,
    best_baseline DOUBLE, holdout_day DATE, decided_at TIMESTAMP_NS)"""


class PromotionConfig(Config):
    auto_promote: bool = True
    """Off: challengers are only recorded; a person moves the champion alias."""
    min_relative_improvement: float = 0.0
    """A challenger must beat the champion's main metric on the same hold-out by this fraction."""
    max_segment_regression: float = 0.05
    """No segment (new users, returning users, cold items) may lose more than this fraction of the champion's
    main metric on the same hold-out."""


def segment_regressions(challenger: pd.DataFrame, champion: pd.DataFrame, target: str, metric: str,
                        tolerance: float) -> list[str]:
    """Segments (other than ``all``) where the challenger's main metric falls more than ``tolerance``
    (relative) below the champion's on the same hold-out, beyond the challenger's 95% bootstrap interval (a small
    segment's value moves by chance; only a loss its interval cannot explain blocks), worded for the decision."""
    def per_segment(evaluation):
        rows = evaluation[(evaluation["method"] == "model") & (evaluation["target"] == target)
                          & (evaluation["metric"] == metric) & (evaluation["segment"] != "all")]
        return rows.set_index("segment")[["value", "ci_high"]].dropna(subset=["value"])

    new, old = per_segment(challenger), per_segment(champion)
    return [f"{segment} {new.at[segment, 'value']:.4f} (95% CI up to {new.at[segment, 'ci_high']:.4f}) "
            f"< {old.at[segment, 'value']:.4f} - {tolerance:.0%}"
            for segment in new.index.intersection(old.index)
            if new.at[segment, "ci_high"] < old.at[segment, "value"] * (1.0 - tolerance)]


def same_model(challenger_tags: dict[str, str], champion_tags: dict[str, str]) -> bool:
    """Whether two versions' training runs logged the same ``model_sha256`` (the hash of the model file): a re-run
    on unchanged data trains the same model, and moving the alias to its copy would change nothing but the version
    the served rows name. Versions logged before the hash was recorded are compared on their metrics only."""
    digest = challenger_tags.get("model_sha256")
    return digest is not None and digest == champion_tags.get("model_sha256")


def decide(
    challenger_metric: float, best_baseline: float, champion_metric: float | None, config: PromotionConfig,
    regressions: list[str] = (),
) -> tuple[bool, str]:
    """Whether to promote, and why, from metrics measured on one hold-out window."""
    if challenger_metric <= best_baseline:
        return False, f"challenger {challenger_metric:.4f} does not beat the best baseline {best_baseline:.4f}"
    if champion_metric is None:
        return True, f"first model to beat the baselines ({challenger_metric:.4f} > {best_baseline:.4f})"
    if regressions:
        return False, f"challenger regresses on segments: {'; '.join(regressions)}"
    needed = champion_metric * (1.0 + config.min_relative_improvement)
    if challenger_metric > needed:
        return True, f"challenger {challenger_metric:.4f} beats champion {champion_metric:.4f} (needed > {needed:.4f})"
    return False, f"challenger {challenger_metric:.4f} does not beat champion {champion_metric:.4f} (needed > {needed:.4f})"


@asset(
    deps=[*NEXT_ACTION_ASSETS, next_item_ranker, next_event_model],
    group_name="training",
    kinds={"mlflow"},
    owners=["team:ml"],
    check_specs=[AssetCheckSpec("champion_promotion_suite", asset="champion_promotion", blocking=True)],
)
def champion_promotion(config: PromotionConfig, warehouse: Warehouse, registry: ModelRegistry) -> MaterializeResult:
    """For each model: compare the challenger with the baselines and with the champion re-scored on the
    challenger's hold-out, move the ``champion`` alias when it wins, and log the decision."""
    started = time.perf_counter()
    decisions = []
    for model_name, (target, metric) in MAIN_METRIC.items():
        with warehouse.connect() as conn:
            cannot_train = training_blocker(conn, model_name)
        if cannot_train:  # its training asset trained nothing: the decision says why, any earlier champion stays
            champion = registry.version_for_alias(model_name, CHAMPION)
            decisions.append({
                "model_name": model_name, "challenger_version": None,
                "champion_version": champion.version if champion else None,
                "champion_run_id": champion.run_id if champion else None, "decision": "skipped",
                "reason": f"this home's data cannot train it: {cannot_train}", "metric": f"{target}/{metric}",
                "challenger_metric": None, "champion_metric_before": None, "best_baseline": None, "holdout_day": None,
                "decided_at": pd.Timestamp.now("UTC").tz_localize(None),
            })
            continue
        challenger = registry.version_for_alias(model_name, CHALLENGER)
        if challenger is None:
            raise RuntimeError(f"model {model_name!r} has no '{CHALLENGER}' version: run its training asset first")
        champion = registry.version_for_alias(model_name, CHAMPION)
        with warehouse.connect() as conn:
            evaluation, holdout_day = holdout_evaluation(conn, model_name, registry.load_booster(challenger))
            champion_metric, regressions = None, []
            if champion is not None and champion.version != challenger.version:
                champion_eval, _ = holdout_evaluation(conn, model_name, registry.load_booster(champion))
                champion_metric = metric_value(champion_eval, "model", target, metric)
                regressions = segment_regressions(evaluation, champion_eval, target, metric, config.max_segment_regression)
        challenger_metric = metric_value(evaluation, "model", target, metric)
        best_baseline = max(metric_value(evaluation, b, target, metric) for b in BASELINES[model_name])
        if champion is not None and champion.version == challenger.version:
            promote, reason = False, "challenger is already the champion"
        elif champion is not None and same_model(registry.run_tags(challenger), registry.run_tags(champion)):
            promote, reason = False, f"identical to the champion v{champion.version} (same model file sha256)"
        else:
            promote, reason = decide(challenger_metric, best_baseline, champion_metric, config, regressions)
            if promote and not config.auto_promote:
                promote, reason = False, f"automatic promotion is off; would promote: {reason}"
        if champion is None or champion.version != challenger.version:
            registry.annotate(
                challenger,
                f"{'Promoted' if promote else 'Kept as challenger'} on the hold-out of {holdout_day} ({target}/{metric}): "
                f"{reason}. Challenger {challenger_metric:.4f}, best baseline {best_baseline:.4f}, champion before "
                + (f"{champion_metric:.4f}" if champion_metric is not None else "none") + ".",
                {"promotion_decision": "promoted" if promote else "kept", "promotion_reason": reason,
                 "promotion_holdout_day": str(holdout_day)},
            )
        if promote:
            registry.set_alias(challenger, CHAMPION, reason)
            with warehouse.connect() as conn:
                record_alias_change(conn, model_name, CHAMPION, champion.version if champion else None,
                                    challenger.version, reason, "champion_promotion")
            champion = challenger
        decisions.append(
            {
                "model_name": model_name,
                "challenger_version": challenger.version,
                "champion_version": champion.version if champion else None,
                "champion_run_id": champion.run_id if champion else None,
                "decision": "promoted" if promote else "kept",
                "reason": reason,
                "metric": f"{target}/{metric}",
                "challenger_metric": challenger_metric,
                "champion_metric_before": champion_metric,
                "best_baseline": best_baseline,
                "holdout_day": holdout_day,
                "decided_at": pd.Timestamp.now("UTC").tz_localize(None),
            }
        )
    frame = pd.DataFrame(decisions).astype(
        {"challenger_version": "Int64", "champion_version": "Int64", "challenger_metric": float,
         "champion_metric_before": float, "best_baseline": float}
    )
    with warehouse.connect() as conn:
        ensure_table(conn, "promotion_log", PROMOTION_LOG_COLUMNS)
        conn.register("incoming_frame", frame)
        conn.execute("INSERT INTO promotion_log BY NAME SELECT * FROM incoming_frame")
        conn.unregister("incoming_frame")
    champions = {d["model_name"]: registry.version_for_alias(d["model_name"], CHAMPION) for d in decisions}
    return MaterializeResult(
        metadata={
            "dagster/row_count": len(frame),
            "decisions": MetadataValue.md(frame.drop(columns=["decided_at", "champion_run_id"]).to_markdown(index=False)),
            **{f"{name}_champion_in_mlflow": MetadataValue.url(registry.version_url(ref))
               for name, ref in champions.items() if ref is not None},
            "seconds": round(time.perf_counter() - started, 2),
            **{f"{d['model_name']}_champion": d["champion_version"] or "none" for d in decisions},
        },
        check_results=[validate(frame, "champion_promotion", "champion_promotion_suite")],
    )
