"""Scoring a day's active users with a champion model: top-k recommendations and next-action probabilities."""

import datetime as dt
import functools
import tempfile
from dataclasses import dataclass
from pathlib import Path

import duckdb
import lightgbm as lgb
import numpy as np
import pandas as pd

from assets.logic.candidates import RANKER_FEATURES
from assets.logic.explanations import reasons
from assets.logic.features import USER_FEATURE_COLUMNS

TOP_K = 20
FALLBACK_REASON = "popular with shoppers right now (fills the list)"
# Batches of at least this many candidates are scored by the ranker compiled to machine code by lleaves (same
# scores as LightGBM to ~1e-14; 1.1M candidates, 300 trees, 2 cores: 1.1-1.5 s against LightGBM's 5.1 s). Compiling
# costs ~3.5 s once per model and process, so small batches (tests, predict on a few users) keep LightGBM's predict.
COMPILED_SCORING_ROWS = 500_000


def active_users(conn: duckdb.DuckDBPyConnection, day: dt.date) -> pd.Series:
    """Users (not bots) with an event in the 24 hours before the cut-off of ``day``."""
    return conn.execute(
        "SELECT user_id FROM user_features WHERE as_of_date = ? AND events_1d > 0 ORDER BY 1", [day]
    ).df()["user_id"]


def check_features(booster: lgb.Booster, expected: list[str], model: str) -> None:
    """Refuse a model whose inputs are not the features this code computes."""
    if booster.feature_name() != expected:
        missing = sorted(set(expected) ^ set(booster.feature_name()))
        raise ValueError(f"model {model} expects other features than the warehouse provides (differences: {missing[:10]})")


@functools.lru_cache(maxsize=4)
def _compiled(model: str):
    import lleaves  # imports LLVM: only where a large batch is scored

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.txt"
        path.write_text(model)
        compiled = lleaves.Model(model_file=str(path))
        compiled.compile()
    return compiled


def ranker_scores(booster: lgb.Booster, candidates: pd.DataFrame) -> np.ndarray:
    """The ranker's score for every candidate row (see ``COMPILED_SCORING_ROWS``)."""
    features = np.ascontiguousarray(candidates[RANKER_FEATURES], dtype=np.float64)
    if len(features) >= COMPILED_SCORING_ROWS:
        return _compiled(booster.model_to_string()).predict(features)
    return booster.predict(features) if len(features) else np.array([])


@dataclass(frozen=True)
class BusinessRules:
    """Rules applied after ranking, in this order, and recorded in every row (column ``rules``).

    ``exclude_purchased`` is on by default: on the Taobao sample only 4% of next-day
    purchases (and 1.4% of next-day views) are of items the user had already bought,
    so a slot is worth more on an item not bought yet; shops with replenishment
    categories (groceries) should turn it off.
    """

    exclude_purchased: bool = True
    max_per_category: int = 5  # 0: no cap
    deny_items: tuple[str, ...] = ()
    min_items: int = TOP_K  # shorter lists are filled from the popular items (source "fallback")

    def describe(self) -> str:
        parts = ["exclude_purchased"] if self.exclude_purchased else []
        parts += [f"max_per_category={self.max_per_category}"] if self.max_per_category else []
        parts += [f"deny_items={len(self.deny_items)}"] if self.deny_items else []
        return ";".join(parts + [f"min_items={self.min_items}"])


RULE_COLUMNS = ["user_id", "item_id", "category_id", "source", "ui_purchases", "popular_rank"]


_RULES_SQL = """
WITH allowed AS (
    SELECT * FROM scored
    WHERE user_id IN (SELECT user_id FROM users) AND NOT list_contains($deny, item_id)
      AND (NOT $exclude_purchased OR coalesce(ui_purchases, 0) = 0)
),
-- ties in score go to the more popular item, then by item id, wherever the ranking is cut or numbered
ranked AS (
    SELECT *, row_number() OVER (PARTITION BY user_id ORDER BY score DESC, popular_rank, item_id) AS rank FROM (
        SELECT * FROM allowed
        QUALIFY $cap = 0 OR row_number() OVER (PARTITION BY user_id, coalesce(category_id, item_id)
                                               ORDER BY score DESC, popular_rank, item_id) <= $cap
    )
    QUALIFY rank <= $k
),
have AS (SELECT user_id, count(*) AS n FROM ranked GROUP BY user_id),
-- only users with short lists are filled: the anti-join and its window touch their rows alone
short AS (SELECT user_id, coalesce(h.n, 0) AS n FROM users LEFT JOIN have h USING (user_id) WHERE coalesce(h.n, 0) < $fill),
fallback AS (
    SELECT a.* REPLACE (CAST(NULL AS DOUBLE) AS score, 'fallback' AS source),
           s.n + row_number() OVER (PARTITION BY a.user_id ORDER BY a.popular_rank, a.item_id) AS rank
    FROM allowed a JOIN short s USING (user_id)
    WHERE a.popular_rank < 999
      AND NOT EXISTS (SELECT 1 FROM ranked r WHERE r.user_id = a.user_id AND r.item_id = a.item_id)
    QUALIFY rank <= $fill
)
SELECT user_id, item_id, score, source, rank, $rules AS rules {extra}
FROM (SELECT * FROM ranked UNION ALL BY NAME SELECT * FROM fallback)
ORDER BY user_id, rank
"""


def apply_rules(scored: pd.DataFrame, users: pd.Series, rules: BusinessRules, k: int) -> pd.DataFrame:
    """Top-k per user from scored candidates (user_id, item_id, category_id, source, ui_purchases,
    popular_rank, score) under ``rules``; returns user_id, item_id, score, source, rank, rules (and ``row``
    when the candidates have it). Runs in DuckDB: millions of candidate rows sort in a second there."""
    with duckdb.connect() as conn:
        conn.register("scored", scored)
        conn.register("users", pd.DataFrame({"user_id": users.to_numpy()}))
        return conn.execute(
            _RULES_SQL.format(extra=", row" if "row" in scored.columns else ""),
            {"deny": list(rules.deny_items), "exclude_purchased": rules.exclude_purchased, "cap": rules.max_per_category,
             "k": k, "fill": min(rules.min_items, k), "rules": rules.describe()},
        ).df()


def recommend(
    booster: lgb.Booster, candidates: pd.DataFrame, users: pd.Series, k: int = TOP_K, rules: BusinessRules = BusinessRules()
) -> pd.DataFrame:
    """Top-k items per user from scored candidates under the business rules, each with the reason
    its largest feature contributions give."""
    scores = ranker_scores(booster, candidates)
    # The rules read a few columns: copying the wide candidate frame through sorts and merges dominated the cost.
    narrow = candidates[RULE_COLUMNS].assign(score=scores, row=np.arange(len(candidates)))
    recs = apply_rules(narrow, users, rules, k)
    chosen = candidates.iloc[recs.pop("row").to_numpy()]
    recs["reason"] = reasons(booster, chosen).to_numpy() if len(chosen) else []
    recs.loc[recs["source"] == "fallback", "reason"] = FALLBACK_REASON
    return recs


def recommend_day(
    conn: duckdb.DuckDBPyConnection, booster: lgb.Booster, day: dt.date, k: int = TOP_K, rules: BusinessRules = BusinessRules()
) -> pd.DataFrame:
    """Top-k items for every user active on ``day``, as of its end (see ``recommend``)."""
    users = active_users(conn, day)
    candidates = conn.execute(
        "SELECT * FROM ranking_candidates WHERE as_of_date = ? AND user_id IN (SELECT unnest(?))",
        [day, users.tolist()],
    ).df()
    return recommend(booster, candidates, users, k, rules).assign(as_of_date=day)


def predict_next_action_day(conn: duckdb.DuckDBPyConnection, booster: lgb.Booster, day: dt.date) -> pd.DataFrame:
    """Each active user's probability, from a next-action model, of that action on the next day."""
    users = active_users(conn, day)
    features = conn.execute(
        "SELECT * FROM user_features WHERE as_of_date = ? AND user_id IN (SELECT unnest(?)) ORDER BY user_id",
        [day, users.tolist()],
    ).df()
    p = booster.predict(features[USER_FEATURE_COLUMNS].astype(float)) if len(features) else np.array([])
    return pd.DataFrame({"as_of_date": day, "user_id": features["user_id"], "probability": p})
