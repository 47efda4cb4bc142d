"""Promotion: the best measured policy of each model serves. A learned challenger becomes champion only when it
beats every baseline and the current champion; when it does not, the best rule policy may take its place."""

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
from dagster import AssetCheckSpec, AssetKey, Config, MaterializeResult, MetadataValue, asset

from assets.logic.catalogue import CATALOGUE, ModelSpec, best_baseline, holdout_day, main_metric, training_blocker
from assets.logic.lifecycle import record_alias_change
from assets.logic.policies import LEARNED, RULE
from assets.logic.warehouse_sql import ensure_table
from assets.models import MODEL_ASSETS, store_evaluation
from expectations import validate
from resources import ModelRegistry, Warehouse
from resources.registry import CHALLENGER, CHAMPION, ModelVersionRef


class PromotionConfig(Config):
    auto_promote: bool = True
    """Off: challengers are only recorded; a person moves the champion alias."""
    min_relative_improvement: float = 0.0
    """A challenger must beat the champion's main metric on the same hold-out by this fraction."""
    max_segment_regression: float = 0.05
    """No segment (new users, returning users, cold items) may lose more than this fraction of the champion's
    main metric on the same hold-out."""


def segment_regressions(
    challenger: pd.DataFrame, champion: pd.DataFrame, target: str, metric: str, tolerance: float
) -> list[str]:
    """Segments (other than ``all``) where the challenger's main metric falls more than ``tolerance``
    (relative) below the champion's on the same hold-out, beyond the challenger's 95% bootstrap interval (a small
    segment's value moves by chance; only a loss its interval cannot explain blocks), worded for the decision."""

    def per_segment(evaluation):
        rows = evaluation[
            (evaluation["method"] == "model")
            & (evaluation["target"] == target)
            & (evaluation["metric"] == metric)
            & (evaluation["segment"] != "all")
        ]
        return rows.set_index("segment")[["value", "ci_high"]].dropna(subset=["value"])

    new, old = per_segment(challenger), per_segment(champion)
    return [
        f"{segment} {new.at[segment, 'value']:.4f} (95% CI up to {new.at[segment, 'ci_high']:.4f}) "
        f"< {old.at[segment, 'value']:.4f} - {tolerance:.0%}"
        for segment in new.index.intersection(old.index)
        if new.at[segment, "ci_high"] < old.at[segment, "value"] * (1.0 - tolerance)
    ]


def same_model(challenger_tags: dict[str, str], champion_tags: dict[str, str]) -> bool:
    """Whether two versions' training runs logged the same ``model_sha256`` (the hash of a learned model's file) or
    ``policy_sha256`` (a rule's definition): a re-run on unchanged data trains the same model, and moving the alias
    to its copy would change nothing but the version the served rows name. Versions logged before the hash was
    recorded are compared on their metrics only."""
    return any(
        challenger_tags.get(key) is not None and challenger_tags.get(key) == champion_tags.get(key)
        for key in ("model_sha256", "policy_sha256")
    )


@dataclass(frozen=True, eq=False)
class Contender:
    """A version measured on the current hold-out: its policy, kind and main metric there."""

    ref: ModelVersionRef
    policy: str
    kind: str
    value: float
    evaluation: pd.DataFrame

    def describe(self) -> str:
        return f"{self.kind} {self.policy} v{self.ref.version}"


def choose(learned: Contender, rules: list[Contender], baseline: tuple[str, float]) -> tuple[Contender | None, str]:
    """The policy this hold-out puts forward: the learned challenger when it beats every baseline (``baseline``: the
    best one's name and value, rules and measure-only baselines alike), else the best rule policy (ties: the first
    listed), else none. Returns it and why."""
    name, value = baseline
    if learned.value > value:
        return learned, f"learned {learned.policy} {learned.value:.4f} beats the best baseline {name} {value:.4f}"
    lost = f"learned {learned.policy} {learned.value:.4f} does not beat the best baseline {name} {value:.4f}"
    if not rules:
        return None, f"{lost}, and no rule may serve in its place"
    best = max(rules, key=lambda r: np.nan_to_num(r.value, nan=-np.inf))
    return best, f"{lost}; the best rule policy is {best.policy} {best.value:.4f}"


def decide(
    contender: Contender | None,
    why: str,
    champion: Contender | None,
    config: PromotionConfig,
    regressions: list[str] = (),
) -> tuple[bool, str]:
    """Whether the contender replaces the champion, and why, from metrics measured on one hold-out window."""
    if contender is None:
        return False, why
    if champion is None:
        return True, f"first policy to serve: {why}"
    if regressions:
        return False, f"{why}; but {contender.describe()} regresses on segments: {'; '.join(regressions)}"
    needed = champion.value * (1.0 + config.min_relative_improvement)
    if contender.value > needed:
        return True, (
            f"{why}; {contender.describe()} {contender.value:.4f} beats champion {champion.describe()} "
            f"{champion.value:.4f} (needed > {needed:.4f})"
        )
    return False, (
        f"{why}; {contender.describe()} {contender.value:.4f} does not beat champion {champion.describe()} "
        f"{champion.value:.4f} (needed > {needed:.4f})"
    )


def _stored_evaluations(conn, model_name: str, day) -> dict[int, tuple[str, str, pd.DataFrame]]:
    """{version: (policy, kind, evaluation)} of every version evaluated on the hold-out ``day`` (its latest)."""
    ensure_table(conn, "model_evaluations", add_new_columns=True)
    rows = conn.execute(
        """SELECT * FROM model_evaluations WHERE model_name = ? AND holdout_day = ?
           QUALIFY evaluated_at = max(evaluated_at) OVER (PARTITION BY model_version)""",
        [model_name, day],
    ).df()
    return {
        int(version): (group["policy"].iloc[0] or "lightgbm", group["policy_kind"].iloc[0] or LEARNED, group)
        for version, group in rows.groupby("model_version")
    }


def _evaluate_unstored(
    conn_factory, registry: ModelRegistry, spec: ModelSpec, refs: list, day, stored: dict, tz: str
) -> None:
    """Measure on the hold-out of ``day`` each version of ``refs`` without a stored evaluation there (a champion
    trained on another hold-out is re-scored on this one, once), and store it. The models come from MLflow before
    the warehouse is opened; they are evaluated under a reader's lock and stored under the writer's."""
    missing = {ref.version: ref for ref in refs if ref is not None and ref.version not in stored}
    if not missing:
        return
    loaded = {version: (registry.load_policy(ref), registry.run_tags(ref)) for version, ref in missing.items()}
    with conn_factory(read_only=True) as conn:
        rules = spec.rules(conn)
        evaluations = {version: spec.evaluate(conn, model, rules, tz)[0] for version, (model, _) in loaded.items()}
    with conn_factory() as conn:
        for version, evaluation in evaluations.items():
            tags = loaded[version][1]
            policy, kind = tags.get("policy", "lightgbm"), tags.get("policy_kind", LEARNED)
            store_evaluation(conn, evaluation, missing[version], day, policy, kind)
            stored[version] = (policy, kind, evaluation)


def _contender(spec: ModelSpec, ref: ModelVersionRef, stored: dict) -> Contender:
    """``ref`` measured on the hold-out: its stored evaluation (``_evaluate_unstored`` made the missing ones)."""
    policy, kind, evaluation = stored[ref.version]
    return Contender(ref, policy, kind, main_metric(evaluation, spec), evaluation)


def _decision(
    spec: ModelSpec,
    contender: Contender | None,
    champion_before: Contender | None,
    champion,
    decision: str,
    reason: str,
    baseline: float | None,
    day,
) -> dict:
    return {
        "model_name": spec.name,
        "challenger_version": contender.ref.version if contender else None,
        "champion_version": champion.version if champion else None,
        "champion_run_id": champion.run_id if champion else None,
        "decision": decision,
        "reason": reason,
        "metric": f"{spec.target}/{spec.metric}",
        "challenger_metric": contender.value if contender else None,
        "champion_metric_before": champion_before.value if champion_before else None,
        "best_baseline": baseline,
        "holdout_day": day,
        "decided_at": pd.Timestamp.now("UTC").tz_localize(None),
        "policy": contender.policy if contender else None,
        "policy_kind": contender.kind if contender else None,
    }


def promote_model(conn_factory, registry: ModelRegistry, spec: ModelSpec, config: PromotionConfig, tz: str) -> dict:
    """One model's promotion decision on its current hold-out (see ``champion_promotion``; days of the shop's time
    zone ``tz``), carried out."""
    with conn_factory(read_only=True) as conn:
        cannot_train = training_blocker(conn, spec.name, tz)
    champion = registry.version_for_alias(spec.name, CHAMPION)
    if cannot_train:  # its training asset trained nothing: the decision says why, any earlier champion stays
        return _decision(
            spec, None, None, champion, "skipped", f"this home's data cannot train it: {cannot_train}", None, None
        )
    challenger = registry.version_for_alias(spec.name, CHALLENGER)
    if challenger is None:
        raise RuntimeError(f"model {spec.name!r} has no '{CHALLENGER}' version: run its training asset first")
    with conn_factory() as conn:  # a writer's: the evaluations table may have to be made
        day = holdout_day(conn, spec.training_set)
        stored = _stored_evaluations(conn, spec.name, day)
    if challenger.version in stored:
        # Only evaluations made since the challenger's were made on the hold-out's rows as they are now (its rules
        # are stored right after it): the same day's rows change when an ingest withdraws a day, so a champion
        # evaluated before is evaluated again, not compared by an old figure.
        since = stored[challenger.version][2]["evaluated_at"].max()
        stored = {v: e for v, e in stored.items() if e[2]["evaluated_at"].max() >= since}
    rule_refs = [
        ModelVersionRef(spec.name, version, rows["run_id"].iloc[0])
        for version, (policy, kind, rows) in sorted(stored.items())
        if kind == RULE and policy in spec.baselines
    ]
    _evaluate_unstored(conn_factory, registry, spec, [challenger, champion], day, stored, tz)
    learned = _contender(spec, challenger, stored)
    rules = sorted(
        (_contender(spec, ref, stored) for ref in rule_refs), key=lambda r: spec.baselines.index(r.policy)
    )  # ties go to the first listed
    before = _contender(spec, champion, stored) if champion is not None else None
    baseline = best_baseline(learned.evaluation, spec)
    contender, why = choose(learned, rules, baseline)
    if contender is not None and before is not None and contender.ref.version == before.ref.version:
        promote, reason = False, f"{why}; it is already the champion"
    elif (
        contender is not None
        and before is not None
        and same_model(registry.run_tags(contender.ref), registry.run_tags(before.ref))
    ):
        promote, reason = False, f"{why}; identical to the champion v{before.ref.version} (same sha256)"
    else:
        regressions = (
            segment_regressions(
                contender.evaluation, before.evaluation, spec.target, spec.metric, config.max_segment_regression
            )
            if contender and before
            else []
        )
        promote, reason = decide(contender, why, before, config, regressions)
        if promote and not config.auto_promote:
            promote, reason = False, f"automatic promotion is off; would promote: {reason}"
    measured = [learned] + ([contender] if contender not in (None, learned) else [])
    for version in [m for m in measured if before is None or m.ref.version != before.ref.version]:
        chosen = version is contender and promote
        registry.annotate(
            version.ref,
            f"{'Promoted' if chosen else 'Kept'} on the hold-out of {day} ({spec.target}/{spec.metric}), "
            f"{version.kind} policy {version.policy}: {reason}. This version {version.value:.4f}, best baseline "
            f"{baseline[0]} {baseline[1]:.4f}, champion before "
            + (f"{before.describe()} {before.value:.4f}" if before else "none")
            + ".",
            {
                "promotion_decision": "promoted" if chosen else "kept",
                "promotion_reason": reason[:5000],
                "promotion_holdout_day": str(day),
            },
        )
    if promote:
        registry.set_alias(contender.ref, CHAMPION, reason)
        with conn_factory() as conn:
            record_alias_change(
                conn,
                spec.name,
                CHAMPION,
                before.ref.version if before else None,
                contender.ref.version,
                f"{contender.describe()}: {reason}",
                "champion_promotion",
            )
        champion = contender.ref
    return _decision(
        spec, contender or learned, before, champion, "promoted" if promote else "kept", reason, baseline[1], day
    )


@asset(
    # a champion trained on another hold-out is evaluated again here, reading what its model asset reads
    deps=[
        *MODEL_ASSETS,
        *sorted({AssetKey(t) for spec in CATALOGUE.values() for t in (spec.training_set, *spec.reads)}),
    ],
    group_name="training",
    kinds={"mlflow"},
    owners=["team:ml"],
    check_specs=[AssetCheckSpec("champion_promotion_suite", asset="champion_promotion", blocking=True)],
)
def champion_promotion(config: PromotionConfig, warehouse: Warehouse, registry: ModelRegistry) -> MaterializeResult:
    """For each model of the catalogue: the policy its hold-out puts forward (the learned challenger if it beats
    every baseline, else the best rule policy) against the champion re-scored on the same hold-out; the ``champion``
    alias moves when it wins, and the decision is logged with the kind of policy that serves."""
    started = time.perf_counter()
    decisions = [
        promote_model(warehouse.connect, registry, spec, config, warehouse.timezone) for spec in CATALOGUE.values()
    ]
    frame = pd.DataFrame(decisions).astype(
        {
            "challenger_version": "Int64",
            "champion_version": "Int64",
            "challenger_metric": float,
            "champion_metric_before": float,
            "best_baseline": float,
        }
    )
    with warehouse.connect() as conn:
        ensure_table(conn, "promotion_log", add_new_columns=True)
        conn.register("incoming_frame", frame)
        conn.execute("INSERT INTO promotion_log BY NAME SELECT * FROM incoming_frame")
        conn.unregister("incoming_frame")
    champions = {d["model_name"]: registry.version_for_alias(d["model_name"], CHAMPION) for d in decisions}
    return MaterializeResult(
        metadata={
            "dagster/row_count": len(frame),
            "decisions": MetadataValue.md(
                frame.drop(columns=["decided_at", "champion_run_id"]).to_markdown(index=False)
            ),
            **{
                f"{name}_champion_in_mlflow": MetadataValue.url(registry.version_url(ref))
                for name, ref in champions.items()
                if ref is not None
            },
            "seconds": round(time.perf_counter() - started, 2),
            **{f"{d['model_name']}_champion": d["champion_version"] or "none" for d in decisions},
        },
        check_results=[validate(frame, "champion_promotion", "champion_promotion_suite")],
    )
