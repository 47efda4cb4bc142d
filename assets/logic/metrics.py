"""Offline metrics: top-K ranking quality (OTTO-style recall) and binary next-action quality."""

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    log_loss,
)

from assets.logic import profile

RANKING_METRICS = ("recall", "hr", "ndcg", "mrr")
BOOTSTRAP_SAMPLES = 200


def per_user_ranking(recommendations: pd.DataFrame, targets: pd.DataFrame, k: int) -> pd.DataFrame:
    """Recall@K, HR@K, NDCG@K and MRR@K of each user in ``targets`` (index user_id).

    ``recommendations``: columns user_id, item_id, rank (1 = best); ``targets``:
    user_id, item_id (distinct). Users without recommendations count as misses.
    Recall@K = hits / min(K, |targets|) (OTTO style); NDCG uses binary gains.
    """
    return per_user_rankings(recommendations, targets, (k,))[k]


def per_user_rankings(recommendations: pd.DataFrame, targets: pd.DataFrame, ks) -> dict[int, pd.DataFrame]:
    """``per_user_ranking`` at each K of ``ks``, the lists matched with the targets once (at the largest K)."""
    users = targets["user_id"].drop_duplicates()
    n_targets = targets.groupby("user_id")["item_id"].nunique().reindex(users.values).to_numpy()
    top = recommendations[recommendations["rank"] <= max(ks)]
    matched = top.merge(targets[["user_id", "item_id"]].drop_duplicates(), on=["user_id", "item_id"])
    result = {}
    for k in ks:
        hits = matched[matched["rank"] <= k]
        per_user = pd.DataFrame(index=users.values)
        per_user["hits"] = hits.groupby("user_id").size()
        per_user["dcg"] = (1.0 / np.log2(hits["rank"] + 1.0)).groupby(hits["user_id"]).sum()
        per_user["first_hit"] = hits.groupby("user_id")["rank"].min()
        per_user = per_user.fillna({"hits": 0.0, "dcg": 0.0})
        ideal_n = np.minimum(n_targets, k)
        # the ideal DCG of n hits, for each n up to K (the same sums as summing each user's own)
        ideal = np.array([np.sum(1.0 / np.log2(np.arange(2, n + 2))) for n in range(k + 1)])
        idcg = ideal[ideal_n]
        result[k] = pd.DataFrame(
            {
                "recall": per_user["hits"].to_numpy() / ideal_n,
                "hr": (per_user["hits"].to_numpy() > 0).astype(float),
                "ndcg": per_user["dcg"].to_numpy() / idcg if len(idcg) else np.array([]),
                "mrr": np.where(per_user["first_hit"].isna(), 0.0, 1.0 / per_user["first_hit"]),
            },
            index=per_user.index,
        )
    return result


def bootstrap_interval(
    values: np.ndarray, statistic=None, samples: int = BOOTSTRAP_SAMPLES, seed: int = 7
) -> tuple[float, float]:
    """95% percentile bootstrap interval over resampled rows (users) of ``values``: of their mean
    (vectorised), or of ``statistic(rows)`` when given (``values`` are then row indices)."""
    values = np.asarray(values)
    if len(values) < 2:
        return float("nan"), float("nan")
    with profile.step("bootstrap"):
        draws = np.random.default_rng(seed).integers(0, len(values), size=(samples, len(values)))
        if statistic is None:
            stats = values[draws].mean(axis=1)
        else:
            stats = np.array([statistic(values[d]) for d in draws], dtype=float)
        return float(np.nanpercentile(stats, 2.5)), float(np.nanpercentile(stats, 97.5))


def auc(y_true: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC by the rank-sum formula (ties share ranks); NaN with one class."""
    y = np.asarray(y_true).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(p)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def binary_metrics(y_true: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """AUC, PR-AUC, log loss and Brier of probabilities ``p`` for labels ``y_true``."""
    y = np.asarray(y_true).astype(int)
    p = np.clip(np.asarray(p, dtype=float), 1e-6, 1 - 1e-6)
    both = len(np.unique(y)) == 2
    return {
        "auc": auc(y, p),
        "pr_auc": float(average_precision_score(y, p)) if both else float("nan"),
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "brier": float(brier_score_loss(y, p)),
        "positive_rate": float(y.mean()) if len(y) else float("nan"),
        "rows": int(len(y)),
    }


def reliability_table(y_true: np.ndarray, p: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """Calibration: rows grouped by predicted probability (equal-count bins), mean predicted
    probability beside the observed rate; a calibrated model has them close."""
    frame = pd.DataFrame({"y": np.asarray(y_true, dtype=float), "p": np.asarray(p, dtype=float)})
    frame["bin"] = pd.qcut(frame["p"].rank(method="first"), q=min(bins, len(frame)), labels=False)
    table = frame.groupby("bin").agg(rows=("y", "size"), mean_predicted=("p", "mean"), observed_rate=("y", "mean"))
    return table.reset_index(drop=True).round(4)


def top_k(
    scored: pd.DataFrame,
    score_column: str,
    k: int,
    fallback_items: list[str] | None = None,
    users: pd.Series | None = None,
) -> pd.DataFrame:
    """Top ``k`` items per user by ``score_column`` (ties by item id), padded from ``fallback_items``.

    ``users`` (default: the users in ``scored``) may name users without any scored
    item; they get the fallback list. Returns user_id, item_id, score, rank;
    fallback rows get score NaN.
    """
    # only the columns it returns are sorted: a wide candidate frame would move every feature column
    ranked = scored[["user_id", "item_id", score_column]].sort_values(
        ["user_id", score_column, "item_id"], ascending=[True, False, True]
    )
    ranked = ranked.assign(rank=ranked.groupby("user_id").cumcount() + 1)
    ranked = ranked[ranked["rank"] <= k][["user_id", "item_id", score_column, "rank"]]
    ranked = ranked.rename(columns={score_column: "score"})
    if not fallback_items:
        return ranked.reset_index(drop=True)
    users = (scored["user_id"] if users is None else users).drop_duplicates()
    pad = pd.DataFrame(
        {
            "user_id": np.repeat(users.to_numpy(), len(fallback_items)),
            "item_id": np.tile(np.asarray(fallback_items, dtype=object), len(users)),
            "fallback_order": np.tile(np.arange(len(fallback_items)), len(users)),
        }
    )
    pad = pad.merge(ranked[["user_id", "item_id"]], on=["user_id", "item_id"], how="left", indicator=True)
    pad = pad[pad["_merge"] == "left_only"].drop(columns="_merge")
    have = ranked.groupby("user_id").size().reindex(users, fill_value=0)
    pad["rank"] = have.reindex(pad["user_id"]).to_numpy() + pad.groupby("user_id").cumcount().to_numpy() + 1
    pad = pad[pad["rank"] <= k].drop(columns="fallback_order").assign(score=np.nan)
    return pd.concat([ranked, pad], ignore_index=True).sort_values(["user_id", "rank"], ignore_index=True)
