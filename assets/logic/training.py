"""Point-in-time training sets, LightGBM training and the temporal hold-out evaluation.

A cut-off day D pairs features as of the end of D with labels from day D + 1.
Training stacks the cut-offs before the hold-out; the hold-out is the last cut-off
whose next day has landed, so no label the model was trained on is evaluated.
"""

import datetime as dt
from dataclasses import dataclass, field

import duckdb
import lightgbm as lgb
import numpy as np
import pandas as pd

from assets.logic.candidates import RANKER_FEATURES
from assets.logic.features import USER_FEATURE_COLUMNS
from assets.logic.metrics import binary_metrics, ranking_metrics, top_k

NEXT_ACTION_LABELS = {
    "purchase": "count(*) FILTER (WHERE event_type = 'purchase') > 0",
    "add_to_cart": "count(*) FILTER (WHERE event_type = 'add_to_cart') > 0",
    "return": "count(*) > 0",
}
RELEVANCE_SQL = "max(CASE event_type WHEN 'purchase' THEN 3 WHEN 'add_to_cart' THEN 2 ELSE 1 END)"


@dataclass(frozen=True)
class LightGBMParams:
    """Fixed, seeded LightGBM settings: the same data gives the same model."""

    num_boost_round: int = 200
    learning_rate: float = 0.05
    num_leaves: int = 31
    min_data_in_leaf: int = 20
    feature_fraction: float = 0.9
    bagging_fraction: float = 0.9
    bagging_freq: int = 1
    seed: int = 42
    extra: dict = field(default_factory=dict)

    def to_lightgbm(self, objective: str) -> dict:
        return {
            "objective": objective,
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_data_in_leaf,
            "feature_fraction": self.feature_fraction,
            "bagging_fraction": self.bagging_fraction,
            "bagging_freq": self.bagging_freq,
            "seed": self.seed,
            "deterministic": True,
            "force_row_wise": True,
            "num_threads": 2,
            "verbosity": -1,
            **self.extra,
        }


def labelled_cutoffs(conn: duckdb.DuckDBPyConnection) -> list[dt.date]:
    """Days D with user features and candidates as of D and cleaned events on D + 1."""
    rows = conn.execute(
        """
        SELECT DISTINCT f.as_of_date FROM user_features f
        WHERE f.as_of_date IN (SELECT DISTINCT as_of_date FROM ranking_candidates)
          AND EXISTS (SELECT 1 FROM cleaned_events e
                      WHERE e.event_time >= f.cutoff AND e.event_time < f.cutoff + INTERVAL 1 DAY)
        ORDER BY 1
        """
    ).fetchall()
    return [r[0] for r in rows]


def split_cutoffs(cutoffs: list[dt.date], train_days: int) -> tuple[list[dt.date], dt.date]:
    """The last labelled cut-off is the hold-out; up to ``train_days`` before it train."""
    if len(cutoffs) < 2:
        raise ValueError(
            f"need at least 2 labelled cut-off days (features as of D and events on D + 1), found {len(cutoffs)}: "
            "materialise more daily partitions first"
        )
    return cutoffs[:-1][-train_days:], cutoffs[-1]


def next_action_frame(conn: duckdb.DuckDBPyConnection, days: list[dt.date]) -> pd.DataFrame:
    """User features as of each cut-off with next-day labels ``label_<target>`` (0/1)."""
    labels = ", ".join(f"CAST({sql} AS INTEGER) AS label_{name}" for name, sql in NEXT_ACTION_LABELS.items())
    return conn.execute(
        f"""
        WITH next_day AS (
            SELECT f.as_of_date, e.user_id, {labels}
            FROM (SELECT DISTINCT as_of_date, cutoff FROM user_features WHERE list_contains($days, as_of_date)) f
            JOIN cleaned_events e ON e.event_time >= f.cutoff AND e.event_time < f.cutoff + INTERVAL 1 DAY AND NOT e.is_bot
            GROUP BY f.as_of_date, e.user_id
        )
        SELECT u.*, {", ".join(f"coalesce(n.label_{name}, 0) AS label_{name}" for name in NEXT_ACTION_LABELS)}
        FROM user_features u LEFT JOIN next_day n USING (as_of_date, user_id)
        WHERE list_contains($days, u.as_of_date)
        ORDER BY u.as_of_date, u.user_id
        """,
        {"days": days},
    ).df()


def ranker_frame(conn: duckdb.DuckDBPyConnection, days: list[dt.date], positives_only: bool) -> pd.DataFrame:
    """Candidates as of each cut-off with next-day relevance (0 none, 1 view, 2 cart, 3 purchase).

    ``positives_only`` keeps the (user, day) groups with at least one relevant
    candidate: the only groups LambdaRank learns from.
    """
    return conn.execute(
        f"""
        WITH next_day AS (
            SELECT f.as_of_date, e.user_id, e.item_id, {RELEVANCE_SQL} AS relevance
            FROM (SELECT DISTINCT as_of_date, cutoff FROM ranking_candidates WHERE list_contains($days, as_of_date)) f
            JOIN cleaned_events e ON e.event_time >= f.cutoff AND e.event_time < f.cutoff + INTERVAL 1 DAY
                 AND NOT e.is_bot AND e.item_id IS NOT NULL
            GROUP BY ALL
        ),
        labelled AS (
            SELECT c.*, coalesce(n.relevance, 0) AS relevance
            FROM ranking_candidates c LEFT JOIN next_day n USING (as_of_date, user_id, item_id)
            WHERE list_contains($days, c.as_of_date)
        )
        SELECT * FROM labelled
        WHERE NOT $positives_only
           OR (as_of_date, user_id) IN (SELECT (as_of_date, user_id) FROM labelled WHERE relevance > 0)
        ORDER BY as_of_date, user_id, item_id
        """,
        {"days": days, "positives_only": positives_only},
    ).df()


def train_binary(frame: pd.DataFrame, label: str, params: LightGBMParams) -> lgb.Booster:
    if frame[label].nunique() < 2:
        raise ValueError(f"training labels {label!r} hold a single class over {len(frame)} rows: cannot train")
    data = lgb.Dataset(frame[USER_FEATURE_COLUMNS].astype(float), label=frame[label], free_raw_data=True)
    return lgb.train(params.to_lightgbm("binary"), data, num_boost_round=params.num_boost_round)


def train_lambdarank(frame: pd.DataFrame, params: LightGBMParams) -> lgb.Booster:
    if frame.empty:
        raise ValueError("the ranker training set is empty: no user had a next-day event among their candidates")
    ordered = frame.sort_values(["as_of_date", "user_id"], kind="stable")
    groups = ordered.groupby(["as_of_date", "user_id"], sort=False).size().to_numpy()
    data = lgb.Dataset(ordered[RANKER_FEATURES].astype(float), label=ordered["relevance"], group=groups)
    lgb_params = params.to_lightgbm("lambdarank") | {"lambdarank_truncation_level": 20}
    return lgb.train(lgb_params, data, num_boost_round=params.num_boost_round)


def holdout_targets(conn: duckdb.DuckDBPyConnection, day: dt.date) -> pd.DataFrame:
    """Distinct (user, item, event_type) of day D + 1 for users with history before it."""
    return conn.execute(
        """
        WITH bounds AS (SELECT any_value(cutoff) AS cutoff FROM ranking_candidates WHERE as_of_date = $day)
        SELECT DISTINCT e.user_id, e.item_id, e.event_type
        FROM cleaned_events e, bounds b
        WHERE e.event_time >= b.cutoff AND e.event_time < b.cutoff + INTERVAL 1 DAY
          AND NOT e.is_bot AND e.item_id IS NOT NULL
          AND e.user_id IN (SELECT user_id FROM cleaned_events, bounds WHERE event_time < bounds.cutoff AND NOT is_bot)
        """,
        {"day": day},
    ).df()


def popular_items(candidates: pd.DataFrame) -> list[str]:
    pop = candidates[candidates["in_popular"] == 1][["item_id", "popular_rank"]].drop_duplicates("item_id")
    return pop.sort_values(["popular_rank", "item_id"])["item_id"].tolist()


TARGET_FILTERS = {"any": None, "add_to_cart": "add_to_cart", "purchase": "purchase"}


def recommendation_lists(candidates: pd.DataFrame, scores: np.ndarray, users: pd.Series, k: int) -> dict[str, pd.DataFrame]:
    """Top-k lists of the model and of the baselines for the same users, from one candidate set."""
    popular = popular_items(candidates)
    scored = candidates.assign(
        model=scores,
        repeat_recent=candidates["recent_score"].where(candidates["in_recent"] == 1),
        recent_covis_pop=candidates["in_recent"] * 1e6 + candidates["recent_score"] * 1e3 + candidates["covis_score"],
    )
    return {
        "model": top_k(scored, "model", k, popular, users),
        "popularity": top_k(scored.iloc[0:0], "model", k, popular, users),
        "repeat_recent": top_k(scored.dropna(subset=["repeat_recent"]), "repeat_recent", k),
        "recent_covis_pop": top_k(scored, "recent_covis_pop", k, popular, users),
    }


def evaluate_ranker(
    candidates: pd.DataFrame, booster: lgb.Booster, targets: pd.DataFrame, ks: tuple[int, ...] = (10, 20)
) -> pd.DataFrame:
    """Model and baselines on the hold-out: one row per (method, target, metric)."""
    users = targets["user_id"].drop_duplicates()
    pool = candidates[candidates["user_id"].isin(users)].reset_index(drop=True)
    scores = booster.predict(pool[RANKER_FEATURES].astype(float)) if len(pool) else np.array([])
    rows = []
    lists = recommendation_lists(pool, scores, users, max(ks))
    for target, event_type in TARGET_FILTERS.items():
        t = targets if event_type is None else targets[targets["event_type"] == event_type]
        t = t[["user_id", "item_id"]].drop_duplicates()
        for method, recs in lists.items():
            for k in ks:
                result = ranking_metrics(recs, t, k)
                n_users = result.pop("users")
                rows += [{"method": method, "target": target, "metric": m, "value": v, "users": n_users} for m, v in result.items()]
    return pd.DataFrame(rows)


def evaluate_next_action(holdout: pd.DataFrame, booster: lgb.Booster, label: str, train_rate: float) -> pd.DataFrame:
    """The next-action model beside two simple rules on the hold-out cut-off."""
    y = holdout[label].to_numpy()
    # Past purchases first, activity as the tie-break, scaled to the training base rate.
    rule = holdout["purchases_28d"] + 0.01 * holdout["events_28d"]
    candidates = {
        "model": booster.predict(holdout[USER_FEATURE_COLUMNS].astype(float)),
        "buy_history_rule": np.clip(rule.to_numpy() * (train_rate / max(rule.mean(), 1e-9)), 0.0, 1.0),
        "base_rate": np.full(len(holdout), train_rate),
    }
    rows = []
    for method, p in candidates.items():
        for metric, value in binary_metrics(y, p).items():
            rows.append({"method": method, "target": label, "metric": metric, "value": value, "users": len(y)})
    return pd.DataFrame(rows)


def metric_value(evaluation: pd.DataFrame, method: str, target: str, metric: str) -> float:
    hit = evaluation[(evaluation["method"] == method) & (evaluation["target"] == target) & (evaluation["metric"] == metric)]
    if hit.empty:
        raise KeyError(f"no {metric} for {method}/{target} in the evaluation")
    return float(hit["value"].iloc[0])
