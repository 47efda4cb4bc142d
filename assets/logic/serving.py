"""Scoring a day's active users with a champion model: top-k recommendations and next-action probabilities."""

import datetime as dt

import duckdb
import lightgbm as lgb
import numpy as np
import pandas as pd

from assets.logic.candidates import RANKER_FEATURES
from assets.logic.features import USER_FEATURE_COLUMNS
from assets.logic.metrics import top_k
from assets.logic.training import popular_items

TOP_K = 20


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


def recommend_day(conn: duckdb.DuckDBPyConnection, booster: lgb.Booster, day: dt.date, k: int = TOP_K) -> pd.DataFrame:
    """Top-k items for every user active on ``day``, as of its end; popular items fill short lists."""
    users = active_users(conn, day)
    candidates = conn.execute(
        "SELECT * FROM ranking_candidates WHERE as_of_date = ? AND user_id IN (SELECT unnest(?))",
        [day, users.tolist()],
    ).df()
    scores = booster.predict(candidates[RANKER_FEATURES].astype(float)) if len(candidates) else np.array([])
    recs = top_k(candidates.assign(model=scores), "model", k, popular_items(candidates), users)
    source = candidates[["user_id", "item_id", "source"]]
    recs = recs.merge(source, on=["user_id", "item_id"], how="left").fillna({"source": "popular"})
    return recs.assign(as_of_date=day)


def predict_next_action_day(conn: duckdb.DuckDBPyConnection, booster: lgb.Booster, day: dt.date) -> pd.DataFrame:
    """Probability that each user active on ``day`` purchases on the next day."""
    users = active_users(conn, day)
    features = conn.execute(
        "SELECT * FROM user_features WHERE as_of_date = ? AND user_id IN (SELECT unnest(?)) ORDER BY user_id",
        [day, users.tolist()],
    ).df()
    p = booster.predict(features[USER_FEATURE_COLUMNS].astype(float)) if len(features) else np.array([])
    return pd.DataFrame({"as_of_date": day, "user_id": features["user_id"], "p_purchase": p})
