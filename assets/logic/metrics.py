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
    return RankedLists({"": recommendations}, max(ks), targets).per_user(targets, ks)[""]


class PairCodes:
    """(first, second) id pairs as one integer each, from the codes of the ids of the pairs given: pairs are then
    matched by integer lookups instead of merges of ids. A pair with a null id, or with an id the given pairs do
    not hold (``encode``), has code -1 and matches nothing."""

    def __init__(self, first: pd.Series | np.ndarray, second: pd.Series | np.ndarray):
        a, firsts = pd.factorize(np.asarray(first, dtype=object))
        b, seconds = pd.factorize(np.asarray(second, dtype=object))
        self.firsts, self.seconds, self.width = pd.Index(firsts), pd.Index(seconds), max(len(seconds), 1)
        self.codes = self._pairs(a, b)

    def _pairs(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.where((a >= 0) & (b >= 0), a.astype(np.int64) * self.width + b, -1)

    def encode(self, first: pd.Series | np.ndarray, second: pd.Series | np.ndarray) -> np.ndarray:
        """The codes of other pairs in this encoding."""
        return self._pairs(self.firsts.get_indexer(first), self.seconds.get_indexer(second))


class RankedLists:
    """Several methods' top-K lists (``{method: frame}``, columns user_id, item_id, rank) measured against target
    sets drawn from ``targets`` (user_id, item_id; ``per_user``). Only the list rows whose (user, item) pair is
    among ``targets`` are kept, each pair as one integer (``PairCodes`` of the targets): a target set is then
    matched with every list by one lookup of integers instead of a merge of ids per list, and memory holds the
    potential hits, not the lists."""

    def __init__(self, lists: dict[str, pd.DataFrame], k: int, targets: pd.DataFrame):
        self.methods, self.k = list(lists), k
        self.pairs = PairCodes(targets["user_id"], targets["item_id"])
        targeted = pd.Index(np.unique(self.pairs.codes[self.pairs.codes >= 0]))
        codes, ranks, methods = [], [], []
        for method, frame in enumerate(lists.values()):
            code = self.pairs.encode(frame["user_id"], frame["item_id"])
            rank = frame["rank"].to_numpy(dtype=np.int64)
            kept = (targeted.get_indexer(code) >= 0) & (rank <= k)
            codes.append(code[kept])
            ranks.append(rank[kept])
            methods.append(np.full(kept.sum(), method, dtype=np.int16))
        self.code, self.rank, self.method = (np.concatenate(parts) for parts in (codes, ranks, methods))

    def per_user(self, targets: pd.DataFrame, ks) -> dict[str, dict[int, pd.DataFrame]]:
        """``per_user_ranking`` of each method's list at each K of ``ks`` (at most the lists' K) against
        ``targets`` (user_id, item_id; rows of the targets given when the lists were): one row per target user, in
        order of first appearance."""
        if max(ks) > self.k:
            raise ValueError(f"the lists were cut at K = {self.k}: they cannot be measured at K = {max(ks)}")
        wanted = self.pairs.encode(targets["user_id"], targets["item_id"])
        if (wanted[targets["user_id"].notna().to_numpy() & targets["item_id"].notna().to_numpy()] < 0).any():
            raise ValueError("targets outside those the lists were matched with: their hits would be missed")
        matched = np.flatnonzero(pd.Index(np.unique(wanted[wanted >= 0])).get_indexer(self.code) >= 0)
        users = targets["user_id"].drop_duplicates()
        # the position among ``users`` of each matched row's user
        position = np.full(len(self.pairs.firsts), -1)
        listed = self.pairs.firsts.get_indexer(users)
        position[listed[listed >= 0]] = np.flatnonzero(listed >= 0)
        matched_user = position[self.code[matched] // self.pairs.width]
        n_targets = targets.groupby("user_id")["item_id"].nunique().reindex(users.values).to_numpy()
        n = len(users)
        # the ideal DCG of m hits, for each m up to K (the same sums as summing each user's own)
        ideal = np.array([np.sum(1.0 / np.log2(np.arange(2, m + 2))) for m in range(max(ks) + 1)])
        result = {}
        for code, method in enumerate(self.methods):
            mine = self.method[matched] == code
            at, rank = matched_user[mine], self.rank[matched[mine]]
            result[method] = {}
            for k in ks:
                hit = rank <= k
                hits = np.bincount(at[hit], minlength=n).astype(float)
                dcg = np.bincount(at[hit], weights=1.0 / np.log2(rank[hit] + 1.0), minlength=n)
                first_hit = np.full(n, np.inf)
                np.minimum.at(first_hit, at[hit], rank[hit])
                ideal_n = np.minimum(n_targets, k)
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


def percentile_interval(stats: np.ndarray) -> tuple[float, float]:
    """The 95% percentile interval of resampled statistics; resamples without a value (NaN) are left out."""
    if np.isnan(stats).all():
        return float("nan"), float("nan")
    return float(np.nanpercentile(stats, 2.5)), float(np.nanpercentile(stats, 97.5))


def resampled_aucs(y_true: np.ndarray, p: np.ndarray, samples: int = BOOTSTRAP_SAMPLES, seed: int = 7) -> np.ndarray:
    """The AUC of each of ``samples`` resamples of the rows, drawn as ``bootstrap_draws`` draws them (so statistics
    of the same rows share their resamples), NaN where a resample has one class or draws an unscored row.
    ``p`` is one column of scores, or several (rows x columns: each column's AUC from the same resamples, against
    the matching column of ``y_true`` or against its one column); the result is (samples,) or (samples, columns).

    A resample weighs each row by how often it drew it (counted once for every column), and its AUC is the
    weighted share of (positive, negative) pairs ranked in order, ties counted half, from one sort of each column's
    scores. Those sums are whole or half numbers, exact, so each AUC is the one ``auc`` computes from the
    resampled rows' ranks, to the bit."""
    p = np.asarray(p, dtype=float)
    scores = p.reshape(len(p), -1)
    labels = np.broadcast_to(np.asarray(y_true).astype(bool).reshape(len(p), -1), scores.shape)
    n, m = scores.shape
    stats = np.full((samples, m), np.nan)
    if n >= 2:
        with profile.step("bootstrap"):
            columns = []
            for c in range(m):
                order = np.argsort(scores[:, c], kind="stable")
                ranked = scores[order, c]
                ties = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])  # where each tie group starts
                columns.append((order, labels[order, c], ties, np.isnan(scores[:, c])))
            generator = np.random.default_rng(seed)
            block = max(1, 250_000 // n)  # resamples at a time: arrays of about 2 MB, which stay in the caches
            for first in range(0, samples, block):
                # drawn a block at a time from one generator: the same draws as ``bootstrap_draws`` at once
                drawn = generator.integers(0, n, size=(min(block, samples - first), n))
                rows = len(drawn)
                weights = np.bincount((np.arange(rows)[:, None] * n + drawn).ravel(), minlength=rows * n)
                weights = weights.reshape(rows, n).astype(float)
                for c, (order, positive_row, ties, unscored) in enumerate(columns):
                    weighed = weights[:, order]
                    # each resample's positive and negative rows in each tie group, lowest scores first
                    positive = np.add.reduceat(weighed * positive_row, ties, axis=1)
                    negative = np.add.reduceat(weighed * ~positive_row, ties, axis=1)
                    below = np.cumsum(negative, axis=1) - negative  # negatives scored strictly lower
                    pairs = positive.sum(axis=1) * negative.sum(axis=1)
                    with np.errstate(invalid="ignore", divide="ignore"):
                        aucs = np.where(pairs > 0, (positive * (below + 0.5 * negative)).sum(axis=1) / pairs, np.nan)
                    if unscored.any():  # a resample that draws a NaN score has no AUC, as ``auc`` gives it none
                        aucs = np.where((weights[:, unscored] > 0).any(axis=1), np.nan, aucs)
                    stats[first : first + rows, c] = aucs
    return stats[:, 0] if p.ndim == 1 else stats


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
        if draws.shape[1] != len(columns):
            raise ValueError(f"draws of {draws.shape[1]} rows given for {len(columns)} rows")
        return [percentile_interval(column[draws].mean(axis=1)) for column in columns.T]


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
