"""The warehouse's schema, in one place: the canonical event, every table's columns, and the day column each daily
table is partitioned by. Tables are created with ``warehouse_sql.ensure_table(conn, name)``, which reads them here.

The feature and candidate tables have one DOUBLE column per feature: their columns are the feature lists of
``features.py`` and ``candidates.py`` (the SQL that computes them lives beside them), read here when a table is made.
The training sets are written whole from their frames; their columns are held by their suites
(``expectations/suites``)."""

# The canonical event types every landing format is mapped to (assets/logic/events.py, ingest.py).
EVENT_TYPES = ("view", "search", "add_to_cart", "remove_from_cart", "favorite", "purchase")

# The columns of the canonical event (landing files may add provenance: source_file, source_line, raw,
# ingest_reason).
CANONICAL_COLUMNS = (
    "event_time",
    "user_id",
    "session_id",
    "event_type",
    "item_id",
    "category_id",
    "price",
    "query",
    "event_id",
)
_EVENT = """event_time TIMESTAMP NOT NULL, user_id VARCHAR NOT NULL, session_id VARCHAR, event_type VARCHAR NOT NULL,
    item_id VARCHAR, category_id VARCHAR, price DOUBLE, query VARCHAR, event_id VARCHAR NOT NULL"""

# Every served row names the policy that produced it: the model version, its MLflow run, the policy (a rule's name,
# or ``lightgbm``) and its kind (``rule`` or ``learned``).
_LINEAGE = """model_name VARCHAR NOT NULL, model_version BIGINT NOT NULL, run_id VARCHAR NOT NULL, scored_at TIMESTAMP,
    policy VARCHAR, policy_kind VARCHAR"""

# A hold-out evaluation row: one metric of one method (the model, or a baseline) on a segment and target.
_EVALUATION = """segment VARCHAR, method VARCHAR, target VARCHAR, metric VARCHAR, value DOUBLE, ci_low DOUBLE,
    ci_high DOUBLE, users BIGINT, model_name VARCHAR, model_version BIGINT, run_id VARCHAR, holdout_day DATE,
    evaluated_at TIMESTAMP, policy VARCHAR, policy_kind VARCHAR"""

TABLES = {
    "raw_events": f"({_EVENT}, source_file VARCHAR NOT NULL, source_line BIGINT NOT NULL)",
    "raw_events_quarantine": """(partition_date DATE NOT NULL, source_file VARCHAR NOT NULL,
        source_line BIGINT NOT NULL, reason VARCHAR NOT NULL, raw VARCHAR)""",
    "cleaned_events": f"({_EVENT}, is_bot BOOLEAN NOT NULL)",
    "sessions": """(session_start TIMESTAMP NOT NULL, session_end TIMESTAMP NOT NULL, session_id VARCHAR NOT NULL,
        user_id VARCHAR NOT NULL, n_events BIGINT, n_views BIGINT, n_carts BIGINT, n_purchases BIGINT,
        n_searches BIGINT, n_items BIGINT, duration_s DOUBLE, converted BOOLEAN)""",
    "user_sequences": """(day DATE NOT NULL, user_id VARCHAR NOT NULL, n_events BIGINT, n_sessions BIGINT,
        items VARCHAR[], event_types VARCHAR[])""",
    "model_evaluations": f"({_EVALUATION})",
    # each day scored by the models trained before it (assets/replay.py)
    "model_replay": f"(day DATE NOT NULL, {_EVALUATION})",
    # one row per model and promotion run; ``policy`` and ``policy_kind`` name the policy the decision was about
    "promotion_log": """(model_name VARCHAR, challenger_version BIGINT, champion_version BIGINT,
        champion_run_id VARCHAR, decision VARCHAR, reason VARCHAR, metric VARCHAR, challenger_metric DOUBLE,
        champion_metric_before DOUBLE, best_baseline DOUBLE, holdout_day DATE, decided_at TIMESTAMP_NS,
        policy VARCHAR, policy_kind VARCHAR)""",
    "alias_history": """(changed_at TIMESTAMP NOT NULL, model_name VARCHAR NOT NULL, alias VARCHAR NOT NULL,
        from_version BIGINT, to_version BIGINT NOT NULL, reason VARCHAR NOT NULL, changed_by VARCHAR NOT NULL)""",
    "recommendations": f"""(as_of_date DATE NOT NULL, user_id VARCHAR NOT NULL, rank BIGINT NOT NULL,
        item_id VARCHAR NOT NULL, score DOUBLE, source VARCHAR, reason VARCHAR, rules VARCHAR, {_LINEAGE})""",
    "next_action_predictions": f"""(as_of_date DATE NOT NULL, user_id VARCHAR NOT NULL, action VARCHAR NOT NULL,
        probability DOUBLE NOT NULL, {_LINEAGE})""",
    "item_next_items": f"""(as_of_date DATE NOT NULL, item_id VARCHAR NOT NULL, rank BIGINT NOT NULL,
        next_item_id VARCHAR NOT NULL, score DOUBLE, source VARCHAR, {_LINEAGE})""",
}

# Every table partitioned by the shop's day, with the column its partition is read from: a TIMESTAMP (UTC, the day
# is the shop's day in its timezone) or a DATE.
DAILY_TABLES = {
    "raw_events": "event_time",
    "raw_events_quarantine": "partition_date",
    "cleaned_events": "event_time",
    "sessions": "session_start",
    "user_sequences": "day",
    "user_features": "as_of_date",
    "item_features": "as_of_date",
    "ranking_candidates": "as_of_date",
    "recommendations": "as_of_date",
    "next_action_predictions": "as_of_date",
    "item_next_items": "as_of_date",
    "model_replay": "day",
}


def table_columns(name: str) -> str:
    """The column definitions of the warehouse table ``name`` (a parenthesised list for CREATE TABLE)."""
    if name in TABLES:
        return TABLES[name]
    # imported here: the feature modules create their tables through ensure_table, which reads this module
    from assets.logic.candidates import CANDIDATE_FEATURES
    from assets.logic.features import ITEM_FEATURE_COLUMNS, USER_FEATURE_COLUMNS

    features = {
        "user_features": (USER_FEATURE_COLUMNS, "user_id VARCHAR NOT NULL", ""),
        "item_features": (
            ITEM_FEATURE_COLUMNS,
            "item_id VARCHAR NOT NULL",
            ", category_id VARCHAR, item_score_1d DOUBLE",
        ),
        "ranking_candidates": (
            CANDIDATE_FEATURES,
            "user_id VARCHAR NOT NULL, item_id VARCHAR NOT NULL, category_id VARCHAR, source VARCHAR NOT NULL",
            "",
        ),
    }
    if name not in features:
        raise KeyError(f"{name} is not a table of the warehouse schema (assets/logic/schema.py)")
    columns, keys, extra = features[name]
    doubles = ", ".join(f"{c} DOUBLE" for c in columns)
    last = ", last_event_time TIMESTAMP" if name != "ranking_candidates" else ""
    return f"(as_of_date DATE NOT NULL, cutoff TIMESTAMP NOT NULL, {keys}, {doubles}{extra}{last})"
