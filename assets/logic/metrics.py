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
    return RankedLists({"": recommendations}, max(ks)).per_user(targets, ks)[""]


class RankedLists:
    """Several methods' top-K lists (``{method: frame}``, columns user_id, item_id, rank) measured against any
    number of target sets (``per_user``): every list's (user, item) pairs are encoded once, as one integer each, so
    a target set is matched with every list by one lookup of integers instead of a merge of ids per list."""

    def __init__(self, lists: dict[str, pd.DataFrame], k: int):
        self.methods = list(lists)
        top = [frame[frame["rank"] <= k] for frame in lists.values()]
        self.method = np.repeat(np.arange(len(top)), [len(frame) for frame in top])
        self.rank = np.concatenate([frame["rank"].to_numpy(dtype=np.int64) for frame in top])
        self.user, users = pd.factorize(np.concatenate([frame["user_id"].to_numpy(object) for frame in top]))
        item, items = pd.factorize(np.concatenate([frame["item_id"].to_numpy(object) for frame in top]))
        self.users, self.items = pd.Index(users), pd.Index(items)
        self.pair = self.user.astype(np.int64) * max(len(items), 1) + item

    def per_user(self, targets: pd.DataFrame, ks) -> dict[str, dict[int, pd.DataFrame]]:
        """``per_user_ranking`` of each method's list at each K of ``ks`` against ``targets`` (user_id, item_id):
        one row per target user, in order of first appearance."""
        users = targets["user_id"].drop_duplicates()
        user, item = self.users.get_indexer(targets["user_id"]), self.items.get_indexer(targets["item_id"])
        known = (user >= 0) & (item >= 0)  # a pair no list holds is no hit
        matched = np.flatnonzero(np.isin(self.pair, np.unique(user[known] * max(len(self.items), 1) + item[known])))
        # the position among ``users`` of each matched row's user
        position = np.full(len(self.users), -1)
        listed = self.users.get_indexer(users)
        position[listed[listed >= 0]] = np.flatnonzero(listed >= 0)
        n_targets = targets.groupby("user_id")["item_id"].nunique().reindex(users.values).to_numpy()
        n = len(users)
        result = {}
        for code, method in enumerate(self.methods):
            rows = matched[self.method[matched] == code]
            at, rank = position[self.user[rows]], self.rank[rows]
            result[method] = {}
            for k in ks:
                hit = rank <= k
                hits = np.bincount(at[hit], minlength=n).astype(float)
                dcg = np.bincount(at[hit], weights=1.0 / np.log2(rank[hit] + 1.0), minlength=n)
                first_hit = np.full(n, np.inf)
                np.minimum.at(first_hit, at[hit], rank[hit])
                ideal_n = np.minimum(n_targets, k)
                # the ideal DCG of n hits, for each n up to K (the same sums as summing each user's own)
                ideal = np.array([np.sum(1.0 / np.log2(np.arange(2, m + 2))) for m in range(k + 1)])
                result[method][k] = pd.DataFrame(
                    {
                        "recall": hits / ideal_n,
                        "hr": (hits > 0).astype(float),
                        "ndcg": dcg / ideal[ideal_n] if n else np.array([]),
                        "mrr": 1.0 / first_hit,  # 0 without a hit
                    },
                    index=users.values,
                )
        return result


def bootstrap_interval(values: np.ndarray, samples: int = BOOTSTRAP_SAMPLES, seed: int = 7) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean of ``values`` over resampled rows (users)."""
    return bootstrap_intervals(np.asarray(values)[:, None], samples, seed)[0]


def bootstrap_draws(rows: int, samples: int = BOOTSTRAP_SAMPLES, seed: int = 7) -> np.ndarray:
    """The rows each of ``samples`` resamples draws: the same for every statistic of the same rows."""
    return np.random.default_rng(seed).integers(0, rows, size=(samples, rows))


def auc_interval(
    y_true: np.ndarray, p: np.ndarray, samples: int = BOOTSTRAP_SAMPLES, seed: int = 7
) -> tuple[float, float]:
    """95% percentile bootstrap interval of ``auc`` over resampled rows (users), from the draws of
    ``bootstrap_interval``. Each resample's AUC is counted from one sort of the scores: a resample weighs each row
    by how often it drew it, and its AUC is the weighted share of (positive, negative) pairs ranked in order, ties
    counted half. Those sums are whole or half numbers, exact, so each AUC is the one ``auc`` computes from the
    resampled rows' ranks, to the bit."""
    y, p = np.asarray(y_true).astype(bool), np.asarray(p, dtype=float)
    n = len(y)
    if n < 2:
        return float("nan"), float("nan")
    with profile.step("bootstrap"):
        group = np.unique(p, return_inverse=True)[1].ravel()  # each row's tie group of scores, lowest first
        groups = group.max() + 1
        stats = []
        draws = bootstrap_draws(n, samples, seed)
        block = max(1, 20_000_000 // n)  # resamples at a time: a few arrays of ~160 MB at most
        for first in range(0, samples, block):
            drawn = draws[first : first + block]
            key = (np.arange(len(drawn))[:, None] * groups + group[drawn]).ravel()
            positive_draw = y[drawn].ravel()
            # how many positive and negative rows each resample drew in each tie group
            positive, negative = (
                np.bincount(key[mask], minlength=len(drawn) * groups).reshape(len(drawn), groups).astype(float)
                for mask in (positive_draw, ~positive_draw)
            )
            below = np.cumsum(negative, axis=1) - negative  # negatives scored strictly lower
            pairs = positive.sum(axis=1) * negative.sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                stats.append(np.where(pairs > 0, (positive * (below + 0.5 * negative)).sum(axis=1) / pairs, np.nan))
        stats = np.concatenate(stats)
        return float(np.nanpercentile(stats, 2.5)), float(np.nanpercentile(stats, 97.5))


def bootstrap_intervals(
    columns: np.ndarray, samples: int = BOOTSTRAP_SAMPLES, seed: int = 7, draws: np.ndarray | None = None
) -> list[tuple]:
    """``bootstrap_interval`` of the mean of each column of ``columns`` (rows: users), the resamples drawn once for
    all of them (or given: ``bootstrap_draws`` of as many rows, for statistics measured apart): the same draws, and
    so the same intervals, as one column at a time."""
    columns = np.asarray(columns, dtype=float)
    if len(columns) < 2:
        return [(float("nan"), float("nan"))] * columns.shape[1]
    with profile.step("bootstrap"):
        draws = bootstrap_draws(len(columns), samples, seed) if draws is None else draws
        intervals = []
        for column in columns.T:
            stats = column[draws].mean(axis=1)
            intervals.append((float(np.nanpercentile(stats, 2.5)), float(np.nanpercentile(stats, 97.5))))
        return intervals


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
