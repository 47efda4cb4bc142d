"""Serving: daily recommendation and next-action tables, scored with the ``champion`` models."""

import datetime as dt
import json
import time
from collections.abc import Iterable

import duckdb
import pandas as pd
import pyarrow as pa
from dagster import (
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetSpec,
    Config,
    MaterializeResult,
    MetadataValue,
    multi_asset,
)

from assets.common import markdown_preview, suite_check
from assets.features import item_features, ranking_candidates, user_features
from assets.logic.candidates import RANKER_FEATURES
from assets.logic.catalogue import CATALOGUE, NEXT_ACTION_MODELS, RANKER_MODEL, ModelSpec
from assets.logic.features import USER_FEATURE_COLUMNS
from assets.logic.lifecycle import record_outside_moves
from assets.logic.policies import policy_kind, policy_name
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
    replace_window_from_frames,
)
from assets.partitions import DAILY_ASSET, PUBLISH_AUTOMATION, partition_days
from assets.promotion import champion_promotion
from resources import ModelRegistry, Warehouse
from resources.registry import CHAMPION, ModelVersionRef


class RecommendationConfig(Config):
    """Business rules, applied after ranking (see ``assets.logic.serving.BusinessRules``)."""

    exclude_purchased: bool = True
    max_per_category: int = 5
    deny_items: list[str] = []
    min_items: int = TOP_K

    def rules(self) -> BusinessRules:
        return BusinessRules(self.exclude_purchased, self.max_per_category, tuple(self.deny_items), self.min_items)


# Set by workflows.sensors.champion_alias_sensor on the publish runs it requests: {model: [from, to]}.
ALIAS_MOVES_TAG = "shopseq/alias_moves"


def _serving(name: str, deps: list, description: str) -> dict:
    """The declaration of a daily serving table. It is published only where its models have a champion: its
    function yields the materialisation, or nothing when there is nothing to publish (the asset is then not
    materialised and the run still succeeds). This is the one publishing gate, for ``shopseq run``, the sensors and
    a launch from the UI alike."""
    return dict(
        name=name,
        specs=[
            AssetSpec(
                name,
                deps=deps,
                description=description,
                skippable=True,
                automation_condition=PUBLISH_AUTOMATION,
                group_name="serving",
                kinds={"duckdb", "lightgbm"},
                owners=["team:ml"],
            )
        ],
        check_specs=[AssetCheckSpec(f"{name}_suite", asset=name, blocking=True)],
        can_subset=True,
        **DAILY_ASSET,
    )


def publish_day(
    conn: duckdb.DuckDBPyConnection,
    table: str,
    day: dt.date,
    scored: Iterable[tuple[ModelVersionRef, object, Iterable[pd.DataFrame | pa.Table]]],
) -> int:
    """Replace ``day`` of ``table`` (a served table of the schema) with the rows of each model in ``scored``, given
    as (version, its model or rule policy, frames of rows), every row naming its model version, run, policy and
    kind. The frames are made and written one at a time, in one transaction (see ``replace_window_from_frames``).
    Returns the rows written."""
    ensure_table(conn, table, add_new_columns=True)
    scored_at = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    batches = (
        _append_constants(
            rows,
            model_name=ref.name,
            model_version=ref.version,
            run_id=ref.run_id,
            scored_at=scored_at,
            policy=policy_name(model),
            policy_kind=policy_kind(model),
        )
        for ref, model, frames in scored
        for rows in frames
    )
    return replace_window_from_frames(conn, table, "as_of_date", *date_bounds(day), batches)


def _append_constants(rows: pd.DataFrame | pa.Table, **columns) -> pa.Table:
    table = rows if isinstance(rows, pa.Table) else pa.Table.from_pandas(rows, preserve_index=False)
    for column, value in columns.items():
        table = table.append_column(column, pa.repeat(value, len(table)))
    return table


def _publish(context, warehouse: Warehouse, registry: ModelRegistry, table: str, scorers: dict):
    """Score each day with the champion of every model in ``scorers`` ({model name: (features, score_day)}, where
    ``score_day`` gives the day's rows in one or more frames) and replace the day's rows of ``table``; every row
    names its model version, run and policy. A champion may be a learned model or a rule policy: both score the
    same way. Yields the materialisation, or nothing when none of the models has a champion yet.

    A model without a champion has its rows left out, with a warning and the model named in the metadata.
    """
    started = time.perf_counter()
    champions, unserved = {}, []
    for model_name, (features, score_day) in scorers.items():
        champion = registry.version_for_alias(model_name, CHAMPION)
        if champion is None:
            context.log.warning(f"{model_name} has no champion (see promotion_log): its rows are not published")
            unserved.append(model_name)
            continue
        model = registry.load_policy(champion)
        check_features(model, features, f"{model_name} v{champion.version}")
        champions[model_name] = (champion, model, score_day)
    if not champions:
        context.log.info(f"{table} is not published: none of {', '.join(scorers)} has a champion yet")
        return
    days = partition_days(context)
    rows = {}
    with warehouse.connect() as conn:
        moves = context.run.tags.get(ALIAS_MOVES_TAG)
        if moves:  # a run the champion_alias_sensor asked for: record moves made in the MLflow UI
            record_outside_moves(conn, CHAMPION, json.loads(moves), "MLflow UI (seen by champion_alias_sensor)")
        for day in days:
            rows[str(day)] = publish_day(
                conn,
                table,
                day,
                ((champion, model, score_day(conn, model, day)) for champion, model, score_day in champions.values()),
            )
        suite, head = suite_check(conn, table, "as_of_date", days)
    yield MaterializeResult(
        metadata={
            "dagster/row_count": sum(rows.values()),
            "rows_per_day": rows,
            "models": MetadataValue.md(
                "| model | version | policy | kind | MLflow run |\n|---|---|---|---|---|\n"
                + "\n".join(
                    f"| {n} | {c.version} | {policy_name(m)} | {policy_kind(m)} | {c.run_id} |"
                    for n, (c, m, _) in champions.items()
                )
            ),
            "models_without_champion": ", ".join(unserved) or "none",
            "preview": markdown_preview(head, 20),
            "seconds": round(time.perf_counter() - started, 2),
        },
        check_results=[suite],
    )


@multi_asset(
    **_serving(
        "recommendations",
        # the day's active users come from user_features; the candidates are read with their user and item features
        [ranking_candidates, user_features, item_features, champion_promotion],
        "Top 20 items for every user active on the day, as of its end, scored by the champion ranker (learned or "
        "rule) and filtered by the business rules; each row names its candidate source, the rules, the model "
        "version, its policy and the MLflow run that scored it.",
    )
)
def recommendations(
    context: AssetExecutionContext, config: RecommendationConfig, warehouse: Warehouse, registry: ModelRegistry
):
    rules = config.rules()
    yield from _publish(
        context,
        warehouse,
        registry,
        "recommendations",
        {RANKER_MODEL: (RANKER_FEATURES, lambda conn, booster, day: recommend_day(conn, booster, day, rules=rules))},
    )


@multi_asset(
    **_serving(
        "next_action_predictions",
        [user_features, champion_promotion],
        "For each user active on the day, the probability that they purchase, add to cart, and come back the next "
        "day (one row per action), each from its champion model (learned or rule); an action whose model has no "
        "champion is left out.",
    )
)
def next_action_predictions(context: AssetExecutionContext, warehouse: Warehouse, registry: ModelRegistry):
    yield from _publish(
        context,
        warehouse,
        registry,
        "next_action_predictions",
        {name: (USER_FEATURE_COLUMNS, _action_scorer(action)) for action, name in NEXT_ACTION_MODELS.items()},
    )


def _action_scorer(action: str):
    return lambda conn, booster, day: [predict_next_action_day(conn, booster, day).assign(action=action)]


def _published_asset(spec: ModelSpec):
    """The daily serving asset of a catalogue model that declares ``publish``: its champion's rows for the day."""
    rows_of = spec.publish

    @multi_asset(
        **_serving(
            spec.serves,
            [AssetKey("cleaned_events"), champion_promotion],
            f"Published daily from the champion of {spec.name} (learned or rule), every row naming it.",
        )
    )
    def _served(context: AssetExecutionContext, warehouse: Warehouse, registry: ModelRegistry):
        tz = warehouse.timezone
        yield from _publish(
            context,
            warehouse,
            registry,
            spec.serves,
            {spec.name: (spec.features, lambda conn, model, day: [rows_of(conn, model, day, tz)])},
        )

    return _served


PUBLISHED_ASSETS = [_published_asset(spec) for spec in CATALOGUE.values() if spec.publish]
