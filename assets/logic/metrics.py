"""Offline metrics: top-K ranking quality (OTTO-style recall) and binary next-action quality."""

import numpy as np
import pandas as pd
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    log_loss,
    roc_auc_score,
)


def ranking_metrics(recommendations: pd.DataFrame, targets: pd.DataFrame, k: int) -> dict[str, float]:
    """Recall@K, HR@K, NDCG@K and MRR@K over the users in ``targets``.

    ``recommendations``: columns user_id, item_id, rank (1 = best); ``targets``:
    user_id, item_id (distinct). Users without recommendations count as misses.
    Recall@K = hits / min(K, |targets|) (OTTO style); NDCG uses binary gains.
    """
    users = targets["user_id"].drop_duplicates()
    n_users = len(users)
    if n_users == 0:
        return {f"{m}@{k}": float("nan") for m in ("recall", "hr", "ndcg", "mrr")} | {"users": 0}
    top = recommendations[recommendations["rank"] <= k]
    hits = top.merge(targets[["user_id", "item_id"]].drop_duplicates(), on=["user_id", "item_id"])
    n_targets = targets.groupby("user_id")["item_id"].nunique()
    per_user = pd.DataFrame(index=users.values)
    per_user["hits"] = hits.groupby("user_id").size()
    per_user["dcg"] = (1.0 / np.log2(hits["rank"] + 1.0)).groupby(hits["user_id"]).sum()
    per_user["first_hit"] = hits.groupby("user_id")["rank"].min()
    per_user = per_user.fillna({"hits": 0.0, "dcg": 0.0})
    ideal_n = np.minimum(n_targets.reindex(per_user.index).to_numpy(), k)
    idcg = np.array([np.sum(1.0 / np.log2(np.arange(2, n + 2))) for n in ideal_n])
    return {
        f"recall@{k}": float(np.mean(per_user["hits"].to_numpy() / ideal_n)),
        f"hr@{k}": float(np.mean(per_user["hits"].to_numpy() > 0)),
        f"ndcg@{k}": float(np.mean(per_user["dcg"].to_numpy() / idcg)),
        f"mrr@{k}": float(np.mean(np.where(per_user["first_hit"].isna(), 0.0, 1.0 / per_user["first_hit"]))),
        "users": n_users,
    }


def binary_metrics(y_true: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """AUC, PR-AUC, log loss and Brier of probabilities ``p`` for labels ``y_true``."""
    y = np.asarray(y_true).astype(int)
    p = np.clip(np.asarray(p, dtype=float), 1e-6, 1 - 1e-6)
    both = len(np.unique(y)) == 2
    return {
        "auc": float(roc_auc_score(y, p)) if both else float("nan"),
        "pr_auc": float(average_precision_score(y, p)) if both else float("nan"),
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "brier": float(brier_score_loss(y, p)),
        "positive_rate": float(y.mean()) if len(y) else float("nan"),
        "rows": int(len(y)),
    }


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
    ranked = scored.sort_values(["user_id", score_column, "item_id"], ascending=[True, False, True])
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
