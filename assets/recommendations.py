"""Serving: daily recommendation and next-action tables, scored with the ``champion`` models."""

import time

import pandas as pd
from dagster import (
    AssetCheckSpec,
    AssetExecutionContext,
    Config,
    MaterializeResult,
    asset,
)

from assets.common import frame_for_checks, markdown_preview
from assets.features import ranking_candidates, user_features
from assets.logic.candidates import RANKER_FEATURES
from assets.logic.features import USER_FEATURE_COLUMNS
from assets.logic.serving import (
    TOP_K,
    BusinessRules,
    check_features,
    predict_next_action_day,
    recommend_day,
)
from assets.logic.warehouse_sql import (
    date_bounds,
    ensure_table,
    replace_window_from_frame,
)
from assets.models import NEXT_ACTION_MODEL, RANKER_MODEL
from assets.partitions import DAILY_ASSET, partition_days
from assets.promotion import champion_promotion
from expectations import validate
from resources import ModelRegistry, Warehouse


class RecommendationConfig(Config):
    """Business rules, applied after ranking (see ``assets.logic.serving.BusinessRules``)."""

    exclude_purchased: bool = True
    max_per_category: int = 5
    deny_items: list[str] = []
    min_items: int = TOP_K

    def rules(self) -> BusinessRules:
        return BusinessRules(self.exclude_purchased, self.max_per_category, tuple(self.deny_items), self.min_items)


_COMMON = dict(**DAILY_ASSET, group_name="serving", kinds={"duckdb", "lightgbm"}, owners=["team:ml"])
_LINEAGE = "model_name VARCHAR NOT NULL, model_version BIGINT NOT NULL, run_id VARCHAR NOT NULL, scored_at TIMESTAMP"
TABLES = {
    "recommendations": f"(as_of_date DATE NOT NULL, user_id VARCHAR NOT NULL, rank BIGINT NOT NULL, item_id VARCHAR NOT NULL, score DOUBLE, source VARCHAR, reason VARCHAR, rules VARCHAR, {_LINEAGE})",
    "next_action_predictions": f"(as_of_date DATE NOT NULL, user_id VARCHAR NOT NULL, p_purchase DOUBLE NOT NULL, {_LINEAGE})",
}


def _publish(context, warehouse: Warehouse, registry: ModelRegistry, table: str, model_name: str, features, score_day):
    started = time.perf_counter()
    champion = registry.champion(model_name)
    booster = registry.load_booster(champion)
    check_features(booster, features, f"{model_name} v{champion.version}")
    days = partition_days(context)
    rows = {}
    with warehouse.connect() as conn:
        ensure_table(conn, table, TABLES[table])
        for day in days:
            frame = score_day(conn, booster, day).assign(
                model_name=model_name, model_version=champion.version, run_id=champion.run_id,
                scored_at=pd.Timestamp.now("UTC").tz_localize(None),
            )
            rows[str(day)] = replace_window_from_frame(conn, table, "as_of_date", *date_bounds(day), frame)
        checked, sampled = frame_for_checks(conn, table, "as_of_date", days)
    return MaterializeResult(
        metadata={
            "dagster/row_count": sum(rows.values()),
            "rows_per_day": rows,
            "model_name": model_name,
            "model_version": champion.version,
            "mlflow_run_id": champion.run_id,
            "preview": markdown_preview(checked, 20),
            "seconds": round(time.perf_counter() - started, 2),
        },
        check_results=[validate(checked, table, f"{table}_suite", extra_metadata={"sampled": sampled})],
    )


@asset(
    **_COMMON,
    deps=[ranking_candidates, champion_promotion],
    check_specs=[AssetCheckSpec("recommendations_suite", asset="recommendations", blocking=True)],
)
def recommendations(
    context: AssetExecutionContext, config: RecommendationConfig, warehouse: Warehouse, registry: ModelRegistry
) -> MaterializeResult:
    """Top 20 items for every user active on the day, as of its end, scored by the champion ranker and
    filtered by the business rules; each row names its candidate source, the rules, the model version
    and the MLflow run that scored it."""
    rules = config.rules()
    return _publish(
        context, warehouse, registry, "recommendations", RANKER_MODEL, RANKER_FEATURES,
        lambda conn, booster, day: recommend_day(conn, booster, day, rules=rules),
    )


@asset(
    **_COMMON,
    deps=[user_features, champion_promotion],
    check_specs=[AssetCheckSpec("next_action_predictions_suite", asset="next_action_predictions", blocking=True)],
)
def next_action_predictions(
    context: AssetExecutionContext, warehouse: Warehouse, registry: ModelRegistry
) -> MaterializeResult:
    """Probability that each user active on the day purchases the next day, from the champion model."""
    return _publish(
        context, warehouse, registry, "next_action_predictions", NEXT_ACTION_MODEL, USER_FEATURE_COLUMNS,
        predict_next_action_day,
    )
