"""Per-partition replay: each day scored by the models trained before it, so a backfill re-evaluates history."""

import datetime as dt
import time

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetDep,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    TimeWindowPartitionMapping,
    asset,
)

from assets.cleaned_events import cleaned_events
from assets.features import item_features, ranking_candidates, user_features
from assets.logic.catalogue import CATALOGUE, best_baseline, main_metric
from assets.logic.policies import LEARNED
from assets.logic.warehouse_sql import date_bounds, ensure_table, replace_window_from_frames
from assets.partitions import DAILY_ASSET, PUBLISH_AUTOMATION, partition_days
from expectations import validate
from resources import ModelRegistry, Warehouse

_YESTERDAY = TimeWindowPartitionMapping(start_offset=-1, end_offset=0)


def model_trained_before(versions, day: dt.date):
    """Of ``versions`` ([(ref, run tags)], oldest first), the newest learned one whose data (training and hold-out
    labels) all lie before ``day`` -- its hold-out cut-off is at most day - 2 -- as (ref, hold-out cut-off), or
    None. Rule policies are replayed as the baselines beside it."""
    eligible = [
        (ref, dt.date.fromisoformat(tags["holdout_day"]))
        for ref, tags in versions
        if "holdout_day" in tags and tags.get("policy_kind", LEARNED) == LEARNED
    ]
    eligible = [(ref, holdout) for ref, holdout in eligible if holdout <= day - dt.timedelta(days=2)]
    return eligible[-1] if eligible else None


@asset(
    **DAILY_ASSET,
    automation_condition=PUBLISH_AUTOMATION,
    group_name="evaluation",
    kinds={"duckdb", "lightgbm"},
    owners=["team:ml"],
    deps=[
        AssetDep(ranking_candidates, partition_mapping=_YESTERDAY),
        AssetDep(user_features, partition_mapping=_YESTERDAY),
        AssetDep(item_features, partition_mapping=_YESTERDAY),  # the ranker's candidates are read with them
        cleaned_events,
    ],
    check_specs=[AssetCheckSpec("model_evaluation_suite", asset="model_replay", blocking=True)],
)
def model_replay(context: AssetExecutionContext, warehouse: Warehouse, registry: ModelRegistry) -> MaterializeResult:
    """For each day D of the partition window, every model's newest version trained before D (its training and
    hold-out labels all before D) scored on D (features as of D - 1, targets on D) beside its baselines. A
    backfill re-evaluates history with the models that existed then; days no model predates get no rows."""
    started = time.perf_counter()
    versions = {name: registry.versions(name) for name in CATALOGUE}
    days = partition_days(context)
    # every version the window needs, loaded from MLflow before the warehouse is opened
    eligible = {(name, day): model_trained_before(versions[name], day) for day in days for name in CATALOGUE}
    models = {ref: registry.load_policy(ref) for ref in {found[0] for found in eligible.values() if found}}
    frames, summary = [], []
    with warehouse.connect() as conn:
        ensure_table(conn, "model_replay")
        for day in days:
            rows = []
            for name, spec in CATALOGUE.items():
                found = eligible[name, day]
                if found is None:
                    continue
                ref, holdout_day = found
                evaluation = spec.replay(conn, models[ref], day, warehouse.timezone)
                if evaluation is None:
                    continue
                rows.append(
                    evaluation.assign(
                        day=day,
                        model_name=name,
                        model_version=ref.version,
                        run_id=ref.run_id,
                        holdout_day=holdout_day,
                        evaluated_at=pd.Timestamp.now("UTC").tz_localize(None),
                    )
                )
                summary.append(
                    {
                        "day": str(day),
                        "model": f"{name} v{ref.version}",
                        "metric": f"{spec.target}/{spec.metric}",
                        "model_value": main_metric(evaluation, spec),
                        "best_baseline": best_baseline(evaluation, spec)[1],
                    }
                )
            day_rows = [pd.concat(rows, ignore_index=True)] if rows else []
            frames += day_rows  # none: a re-run with fewer eligible models leaves none of the day's old rows
            replace_window_from_frames(conn, "model_replay", "day", *date_bounds(day), day_rows)
    replayed = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if len(replayed):
        check = validate(replayed.drop(columns="day"), "model_evaluation", "model_evaluation_suite")
    else:
        check = AssetCheckResult(
            check_name="model_evaluation_suite",
            passed=True,
            metadata={"rows": 0, "why": "no model was trained before any day of the window"},
        )
    return MaterializeResult(
        metadata={
            "dagster/row_count": len(replayed),
            "replayed": MetadataValue.md(
                pd.DataFrame(summary).round(4).to_markdown(index=False)
                if summary
                else "_no day of the window is after a model's training data_"
            ),
            "seconds": round(time.perf_counter() - started, 2),
        },
        check_results=[check],
    )
