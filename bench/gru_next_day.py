"""``python -m bench.gru_next_day --home HOME``: the recurrent model as a feature and as a candidate source of the
next-day user ranker, on a home ``shopseq run`` has run (open a copy: the warehouse is opened read-only).

Each user's items in the 28 days before a cut-off (``HISTORY_DAYS``, like the features), in event order, are one
``gru_model`` sequence (session_key = user_id). A GRU fitted on these sequences learns within-history next items, so
every next item it learns is before the cut-off it was fitted at. Point in time, with two GRUs (``--epochs`` fixed
epochs each, no early stopping: a few minutes in all):

* ``gru_split``, fitted at the cut-off of the middle training day S, scores the training cut-offs from S on (their
  labels, days D + 1 > S, are never among its next items);
* ``gru_holdout``, fitted at the hold-out's cut-off, scores the hold-out.

Two features join the ranker frame (``training.ranker_frame``): the GRU's score of the candidate for the user's
sequence and its rank among the user's candidates (NaN where the item is outside the GRU's vocabulary). The ranker
is trained with and without them on the same training cut-offs (from S on), with ``LightGBMParams()``, and both
are evaluated by ``training.evaluate_ranker`` on the hold-out as ``catalogue._ranker_evaluation`` does. The GRU's
own top 20 over its vocabulary is measured as a candidate source: its recall of the hold-out targets and the
targets it finds that the candidates miss.
"""

import argparse
import dataclasses
import datetime as dt
import time

import duckdb
import numpy as np
import pandas as pd

from assets.logic import gru_model, training
from assets.logic.candidates import RANKER_FEATURES
from assets.logic.features import HISTORY_DAYS
from assets.logic.metrics import per_user_ranking
from assets.logic.training import LightGBMParams
from assets.logic.warehouse_sql import day_bounds
from resources.home import home_paths, read_settings

GRU_FEATURES = ["gru_score", "gru_rank"]
SHOWN = ("model", "model_raw", "repeat_recent", "repeat_recent_raw", "markov", "markov_raw")
USER_CHUNK = 50  # users scored at once: each holds up to max_steps rows of logits over the whole vocabulary

_HISTORY_SQL = f"""
SELECT user_id AS session_key, row_number() OVER w AS step, user_id || '/' || row_number() OVER w AS prefix_id,
       item_id, event_time
FROM cleaned_events
WHERE NOT is_bot AND item_id IS NOT NULL
  AND event_time < $cutoff AND event_time >= $cutoff - INTERVAL {HISTORY_DAYS} DAY
WINDOW w AS (PARTITION BY user_id ORDER BY event_time, event_id)
ORDER BY session_key, step
"""


def histories(conn: duckdb.DuckDBPyConnection, day: dt.date, tz: str) -> pd.DataFrame:
    """Each user's item sequence before the cut-off of ``day`` (one ``gru_model`` session per user)."""
    return conn.execute(_HISTORY_SQL, {"cutoff": day_bounds(day, tz)[1]}).df()


def user_logits(model: gru_model.GRUSessionModel, sequences: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(users, logits over the vocabulary as of each user's last event). Only a user's last ``max_steps`` items in
    the vocabulary are read by the GRU, so only those are passed; users with none have no row."""
    known = sequences[sequences["item_id"].isin(set(model.items))]
    tail = known.groupby("session_key", sort=True).tail(model.params.max_steps)
    last = tail.groupby("session_key")["prefix_id"].last()
    users, rows = [], []
    for first in range(0, len(last), USER_CHUNK):
        chunk = last.iloc[first : first + USER_CHUNK]
        prefix_ids, logits = model.prefix_scores(tail[tail["session_key"].isin(chunk.index)])
        position = pd.Series(np.arange(len(prefix_ids)), index=prefix_ids)
        rows.append(logits[position.loc[chunk.to_numpy()].to_numpy()])
        users.extend(chunk.index)
    return np.array(users, dtype=object), np.concatenate(rows) if rows else np.empty((0, len(model.items) + 1))


def with_gru_features(frame: pd.DataFrame, model, users: np.ndarray, logits: np.ndarray) -> pd.DataFrame:
    """The GRU's score of each candidate and its rank among the user's candidates (1 = best; NaN outside the
    vocabulary or for a user the GRU cannot read)."""
    row = pd.Series(np.arange(len(users)), index=users).reindex(frame["user_id"]).to_numpy()
    column = pd.Series(np.arange(1, len(model.items) + 1), index=model.items).reindex(frame["item_id"]).to_numpy()
    scored = ~(np.isnan(row) | np.isnan(column))
    scores = np.full(len(frame), np.nan)
    scores[scored] = logits[row[scored].astype(int), column[scored].astype(int)]
    frame = frame.assign(gru_score=scores)
    return frame.assign(
        gru_rank=frame.groupby(["as_of_date", "user_id"])["gru_score"].rank(ascending=False, method="first")
    )


def train_with_gru(frame: pd.DataFrame, params: LightGBMParams):
    """``training.train_lambdarank`` with the GRU features beside the ranker's: the same start (repeat-recent),
    the same LightGBM settings, the same early stopping on the last training day."""
    return training.train_lambdarank(frame, params, [*RANKER_FEATURES, *GRU_FEATURES])


class WithGRU:
    """The booster with the GRU features, answering ``predict`` on the ranker's feature matrix of ``frame``'s rows
    in ``frame``'s order (what ``evaluate_ranker`` passes for a frame already restricted to the target users)."""

    def __init__(self, booster, frame: pd.DataFrame):
        self.booster, self.frame = booster, frame

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        own = self.frame[RANKER_FEATURES].to_numpy(dtype=np.float64)
        if matrix.shape != own.shape or not np.array_equal(matrix, own, equal_nan=True):
            raise ValueError("the rows to score are not the hold-out frame's rows in its order")
        return self.booster.predict(self.frame[[*RANKER_FEATURES, *GRU_FEATURES]].astype(float))


def table(evaluation: pd.DataFrame, name: str) -> pd.DataFrame:
    rows = evaluation[(evaluation["segment"] == "all") & (evaluation["target"] == "any")]
    rows = rows[rows["metric"].isin(["ndcg@20", "recall@20"]) & rows["method"].isin(SHOWN)]
    shown = rows.pivot(index="method", columns="metric", values="value").loc[[m for m in SHOWN]]
    return shown.rename(index={"model": f"{name}", "model_raw": f"{name}_raw"}).round(4)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", required=True)
    parser.add_argument("--epochs", type=int, default=3, help="fixed epochs of each GRU fit (no early stopping)")
    args = parser.parse_args(argv)
    tz = read_settings(args.home).get("timezone", "UTC")
    conn = duckdb.connect(str(home_paths(args.home)["warehouse"]), read_only=True)
    params = dataclasses.replace(gru_model.GRUParams(), epochs=args.epochs, patience=0)
    train_days, holdout_day = training.split_cutoffs(training.labelled_cutoffs(conn, tz))
    split_day = train_days[len(train_days) // 2]
    ranker_days = [d for d in train_days if d >= split_day]
    seconds = {}

    mark = time.perf_counter()
    gru_split = gru_model.train_gru([histories(conn, split_day, tz)], params)
    holdout_history = histories(conn, holdout_day, tz)
    gru_holdout = gru_model.train_gru([holdout_history], params)
    seconds["GRU training"] = time.perf_counter() - mark

    mark = time.perf_counter()
    train = training.ranker_frame(conn, ranker_days, positives_only=True, tz=tz)
    parts = []
    for day in ranker_days:
        rows = train[pd.to_datetime(train["as_of_date"]).dt.date == day]
        parts.append(with_gru_features(rows, gru_split, *user_logits(gru_split, histories(conn, day, tz))))
    train = pd.concat(parts, ignore_index=True)
    targets = training.holdout_targets(conn, holdout_day, tz)
    holdout = training.ranker_frame(conn, [holdout_day], positives_only=False, tz=tz)
    holdout = holdout[holdout["user_id"].isin(targets["user_id"])].reset_index(drop=True)
    users, logits = user_logits(gru_holdout, holdout_history)
    holdout = with_gru_features(holdout, gru_holdout, users, logits)
    seconds["GRU scoring"] = time.perf_counter() - mark

    mark = time.perf_counter()
    markov = training.markov_recommendations(conn, holdout_day, targets["user_id"].unique().tolist(), 20)
    without = training.train_lambdarank(train, LightGBMParams())
    plus = train_with_gru(train, LightGBMParams())
    evaluations = {
        "lgbm": training.evaluate_ranker(holdout, without, targets, markov),
        "lgbm_plus_gru": training.evaluate_ranker(holdout, WithGRU(plus, holdout), targets, markov),
    }
    seconds["rankers"] = time.perf_counter() - mark

    # the GRU as a candidate source: its own top 20 over its vocabulary (the padding index left out)
    best = np.argsort(-logits[:, 1:], axis=1, kind="stable")[:, :20]
    top = pd.DataFrame(
        {
            "user_id": np.repeat(users, best.shape[1]),
            "item_id": gru_holdout.items[best.ravel()],
            "rank": np.tile(np.arange(1, best.shape[1] + 1), len(users)),
        }
    )
    wanted = targets[["user_id", "item_id"]].drop_duplicates()
    gru_recall = per_user_ranking(top, wanted, 20)["recall"].mean()
    found = top.merge(wanted, on=["user_id", "item_id"])
    candidates = holdout[["user_id", "item_id"]]
    new = found.merge(candidates, on=["user_id", "item_id"], how="left", indicator=True)
    new = new[new["_merge"] == "left_only"]
    readable = wanted["user_id"].drop_duplicates().isin(users).sum()
    reachable = wanted.merge(candidates, on=["user_id", "item_id"])

    print(
        f"GRU split day {split_day} (ranker trains on {', '.join(map(str, ranker_days))}), hold-out {holdout_day}; "
        f"GRU params {gru_split.describe()} / hold-out vocabulary {len(gru_holdout.items):,}"
    )
    for name, model in (("gru_split", gru_split), ("gru_holdout", gru_holdout)):
        print(name, "curve:", ", ".join(f"epoch {p['epoch']} loss {p['train_loss']:.3f}" for p in model.curve))
    for name, evaluation in evaluations.items():
        print(table(evaluation, name).to_string())
    gain = pd.Series(plus.feature_importance("gain"), index=plus.feature_name())
    shares = ", ".join(f"{f} {gain[f] / gain.sum():.3f}" for f in GRU_FEATURES)
    print(f"gain share of the GRU features: {shares}")
    print(
        f"hold-out targets (user, item): {len(wanted):,}; among the candidates: {len(reachable):,}; "
        f"GRU top-20 recall@20 {gru_recall:.4f} (target users the GRU can read: {readable:,} of "
        f"{wanted['user_id'].nunique():,}), "
        f"hits {len(found):,}, of which outside the candidates {len(new):,}"
    )
    print("seconds:", ", ".join(f"{name} {value:.1f}" for name, value in seconds.items()))


if __name__ == "__main__":
    main()
