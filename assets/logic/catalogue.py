"""The model catalogue: every model kind shopseq trains, declared once, without Dagster.

A ``ModelSpec`` says what a model learns from (its training set), how it trains, which rule policies it must beat
(and which may serve in its place), how it is evaluated on the hold-out and replayed on a past day, and what it is
promoted on. The training assets, promotion, replay, serving and ``shopseq`` commands are generated from
``CATALOGUE``; adding a model kind means a ``ModelSpec`` here and the model's own module.
"""

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from assets.logic import gru_model, next_event, session_model, training
from assets.logic.candidates import RANKER_FEATURES, stored_ranker_rows_sql
from assets.logic.features import USER_FEATURE_COLUMNS
from assets.logic.policies import RulePolicy
from assets.logic.warehouse_sql import day_bounds, fetch_frame, with_columns

# The fewest examples of a label's rarer class (or users, for the ranker) a split needs to train on and to measure
# on: below it a hold-out AUC rests on a handful of users (one returning session among 17,710 on YooChoose).
MIN_EXAMPLES = 5


@dataclass(frozen=True)
class TrainingSetSpec:
    """A point-in-time training set: rows of the training cut-offs (split ``train``) and of the hold-out cut-off
    (split ``holdout``), rebuilt whole by its asset."""

    table: str
    order: str
    """The key that orders its rows: LightGBM (its bins, bagging, query groups) and the bootstrap intervals see the
    same rows in the same order on every run."""
    deps: tuple[str, ...]
    """The warehouse tables (assets) it reads."""
    build: Callable[[duckdb.DuckDBPyConnection, list[dt.date], dt.date, str], pd.DataFrame]
    """(conn, training cut-offs, hold-out cut-off, time zone) -> the rows, with ``split`` and ``as_of_date``."""
    point_in_time: Callable[[duckdb.DuckDBPyConnection, pd.DataFrame], tuple[str, pd.DataFrame]]
    """(conn, rows) -> (suite, per-day frame) proving each row describes only what happened before its cut-off."""
    description: str
    cutoffs: Callable[[duckdb.DuckDBPyConnection, str], list[dt.date]] = lambda conn, tz: training.labelled_cutoffs(
        conn, tz
    )
    """(conn, tz) -> the cut-off days with labels, oldest first: the last is the hold-out, the others train."""
    max_train_days: int = 0
    """At most this many training cut-offs, the most recent (0: every one; the asset's ``train_days`` may ask fewer)."""

    def train_days(self, asked: int) -> int:
        """The training cut-offs to stack: ``asked`` (0: all) within ``max_train_days``."""
        return min(d for d in (asked, self.max_train_days) if d) if asked or self.max_train_days else 0


@dataclass(frozen=True)
class ModelSpec:
    name: str
    """The registered model in MLflow."""
    asset: str
    training_set: str
    target: str
    metric: str
    """The main metric promotion decides on (higher is better), measured for ``target``."""
    features: list[str]
    train: Callable[[pd.DataFrame, training.LightGBMParams], Any]
    rules: Callable[[duckdb.DuckDBPyConnection], dict[str, RulePolicy]]
    """The rule policies that may serve in the model's place, fitted on the training split (``{}``: none)."""
    evaluate: Callable[[duckdb.DuckDBPyConnection, Any, dict[str, RulePolicy], str], tuple[pd.DataFrame, dt.date]]
    """(conn, model or rule, rules, the shop's time zone) -> the hold-out evaluation (method ``model`` and every
    baseline) and its day."""
    replay: Callable[[duckdb.DuckDBPyConnection, Any, dt.date, str], pd.DataFrame | None]
    """(conn, model or rule, day, tz) -> the evaluation on ``day`` (features as of day - 1), None without data."""
    baselines: tuple[str, ...]
    """Every baseline method the evaluation reports; the rules among them can serve, the others only measure."""
    blocker: Callable[[duckdb.DuckDBPyConnection, str], str | None]
    """(conn, the shop's time zone) -> why this home's data cannot train the model, or None."""
    description: str
    reads: tuple[str, ...] = ()
    """The tables the hold-out evaluation reads beside the training set (the model asset's declared dependencies)."""
    log: Callable[[Any, str, Any, pd.DataFrame, dict, dict, dict], Any] | None = None
    """(registry, model name, model, training split, metrics, tags, tables) -> the registered challenger version, for
    a learned model that is not a LightGBM booster (None: ``ModelRegistry.log_lightgbm``)."""
    serves: str | None = None
    """The daily table the champion's scores are published in (None: scored by ``shopseq predict`` only)."""
    extras: Callable[[duckdb.DuckDBPyConnection, Any], tuple[dict, dict]] | None = None
    """(conn, model) -> (tables, figures) logged beside the evaluation."""
    publish: Callable[[duckdb.DuckDBPyConnection, Any, dt.date, str], pd.DataFrame] | None = None
    """(conn, champion, day, tz) -> the day's rows of the ``serves`` table (its columns are in the schema,
    ``assets/logic/schema.py``): a daily serving asset is generated for it; None when the table is written by a
    serving asset of its own (recommendations, next-action predictions)."""


def read_training_set(conn: duckdb.DuckDBPyConnection, table: str, split: str | None = None) -> pd.DataFrame:
    """The rows of a training set (of one split, or all), in the order its spec declares."""
    where = "WHERE split = $split" if split else ""
    return fetch_frame(
        conn,
        f"SELECT * FROM {table} {where} ORDER BY split DESC, {TRAINING_SETS[table].order}",
        {"split": split} if split else None,
    )


def holdout_day(conn: duckdb.DuckDBPyConnection, table: str) -> dt.date:
    return conn.execute(f"SELECT min(as_of_date) FROM {table} WHERE split = 'holdout'").fetchone()[0]


def _missing_splits(conn: duckdb.DuckDBPyConnection, table: str) -> str | None:
    splits = {r[0] for r in conn.execute(f"SELECT DISTINCT split FROM {table}").fetchall()}
    missing = {"train", "holdout"} - splits
    return f"the {table} has no {' or '.join(sorted(missing))} rows" if missing else None


# --- training sets ------------------------------------------------------------------------------------------------


def _split_frame(train: pd.DataFrame, holdout: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([with_columns(train, split="train"), with_columns(holdout, split="holdout")], ignore_index=True)


def _latest_event_per_day(hours_since_last_event: str, measured_from: str = "cutoff"):
    """Per as-of day: the cut-off and the latest event any row's features describe (the ``point_in_time`` suite):
    ``hours_since_last_event`` hours before ``measured_from``."""

    def per_day(conn, frame: pd.DataFrame) -> tuple[str, pd.DataFrame]:
        latest = frame[measured_from] - pd.to_timedelta(frame[hours_since_last_event], unit="h")
        return "point_in_time", (
            frame[["as_of_date", "cutoff"]]  # the columns read, not a copy of the whole set
            .assign(latest_event_time=latest)
            .groupby("as_of_date", as_index=False)
            .agg(cutoff=("cutoff", "min"), latest_event_time=("latest_event_time", "max"), rows=("cutoff", "size"))
        )

    return per_day


def _next_event_rows(conn, train_days: list[dt.date], holdout: dt.date, tz: str) -> pd.DataFrame:
    frames = []
    for split, days in (("train", train_days), ("holdout", [holdout])):
        for day in days:  # states whose next event is on day + 1, as of the cut-off day
            start, end = day_bounds(day + dt.timedelta(days=1), tz)
            states = next_event.next_event_frame(conn, start, end)
            frames.append(with_columns(states, split=split, as_of_date=pd.Timestamp(day).as_unit("ns")))
    return pd.concat(frames, ignore_index=True)


def _states_in_order(conn, frame: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    """Per as-of day: every state lies in its session and before the labelled next event (a reconciliation of the
    stored table)."""
    return "stage_reconciliation", conn.execute(
        """SELECT as_of_date AS day, count(*) AS expected,
                  count(*) FILTER (WHERE state_time <= next_time AND session_start <= state_time) AS actual
           FROM next_event_training_set GROUP BY ALL ORDER BY 1"""
    ).df()


TRAINING_SETS = {
    spec.table: spec
    for spec in (
        TrainingSetSpec(
            "next_action_training_set",
            "as_of_date, user_id",
            ("user_features", "ranking_candidates", "cleaned_events"),
            lambda conn, days, holdout, tz: _split_frame(
                training.next_action_frame(conn, days, tz), training.next_action_frame(conn, [holdout], tz)
            ),
            _latest_event_per_day("hours_since_last_event"),
            "User features as of the end of each cut-off day D with 0/1 labels from day D + 1 (purchase, add to cart, "
            "return); the last labelled cut-off is the temporal hold-out.",
        ),
        TrainingSetSpec(
            "ranker_training_set",
            "as_of_date, user_id, item_id",
            ("ranking_candidates", "user_features", "item_features", "cleaned_events"),
            lambda conn, days, holdout, tz: _split_frame(
                training.ranker_frame(conn, days, positives_only=True, tz=tz),
                training.ranker_frame(conn, [holdout], positives_only=False, tz=tz),
            ),
            _latest_event_per_day("user_hours_since_last_event"),
            "Candidates as of each cut-off day D with graded relevance from day D + 1 (training keeps users with a "
            "relevant candidate; the hold-out keeps every candidate).",
        ),
        TrainingSetSpec(
            "next_event_training_set",
            "as_of_date, next_time, user_id, event_id",
            # the states come from sessions; the labelled cut-offs need features and candidates
            ("cleaned_events", "sessions", "user_features", "ranking_candidates"),
            _next_event_rows,
            _states_in_order,
            "In-session states labelled with the type of the session's next event: training states have their next "
            "event on the days after the training cut-offs, hold-out states on the day after the hold-out cut-off.",
        ),
    )
}


# --- next-action models -------------------------------------------------------------------------------------------

# What each next-action label says of a user on the day after a cut-off, for the reasons a model cannot train.
_LABEL_MEANS = {
    "label_purchase": "purchased",
    "label_add_to_cart": "added an item to the cart",
    "label_return": "came back",
}


def _label_blocker(table: str, label: str):
    """A binary label holding one class in a split, or fewer than ``MIN_EXAMPLES`` of its rarer class."""

    def blocker(conn, tz: str) -> str | None:
        counts = conn.execute(
            f"SELECT split, count(*), sum({label}) FROM {table} GROUP BY split ORDER BY split DESC"
        ).fetchall()
        for split, rows, positives in counts:  # one class anywhere says most
            if positives in (0, rows):
                value = 0 if positives == 0 else 1
                return (
                    f"{label} is {value} in all {rows:,} rows of the {split} split: "
                    f"{'no' if value == 0 else 'every'} user {_LABEL_MEANS[label]} on the day after its cut-off"
                )
        for split, rows, positives in counts:
            minority, value = min((positives, 1), (rows - positives, 0))
            if minority < MIN_EXAMPLES:
                return (
                    f"only {minority} of the {rows:,} rows of the {split} split have {label} = {value}, fewer than "
                    f"{MIN_EXAMPLES}: too few to learn from, or to measure an AUC on"
                )
        return _missing_splits(conn, table)

    return blocker


def _history_rule(label: str):
    """The label's history rule, calibrated on the training split (a logistic fit: its scores are probabilities)."""

    def rules(conn) -> dict[str, RulePolicy]:
        rule = training.HISTORY_RULES[label]
        train = read_training_set(conn, "next_action_training_set", "train")
        return {rule.name: rule.calibrated(train, train[label].to_numpy())}

    return rules


def _next_action_evaluation(label: str):
    def evaluate(conn, model, rules, tz: str) -> tuple[pd.DataFrame, dt.date]:
        frame = read_training_set(conn, "next_action_training_set")
        train_rate = float(frame.loc[frame["split"] == "train", label].mean())
        holdout = frame[frame["split"] == "holdout"]
        day = pd.Timestamp(holdout["as_of_date"].iloc[0]).date()
        return training.evaluate_next_action(holdout, model, label, train_rate, rules), day

    return evaluate


def _next_action_replay(label: str):
    def replay(conn, model, day: dt.date, tz: str) -> pd.DataFrame | None:
        cutoff_day = day - dt.timedelta(days=1)
        frame = training.next_action_frame(conn, [cutoff_day], tz)
        earlier = training.next_action_frame(conn, [cutoff_day - dt.timedelta(days=1)], tz)  # its labels are on day - 1
        if frame.empty or earlier.empty or earlier[label].nunique() < 2:
            return None
        rule = training.HISTORY_RULES[label]
        rules = {rule.name: rule.calibrated(earlier, earlier[label].to_numpy())}
        return training.evaluate_next_action(frame, model, label, float(earlier[label].mean()), rules)

    return replay


def _reliability(label: str):
    def extras(conn, model) -> tuple[dict, dict]:
        from assets.logic import plots
        from assets.logic.metrics import reliability_table

        holdout = read_training_set(conn, "next_action_training_set", "holdout")
        reliability = reliability_table(holdout[label], model.predict(holdout[USER_FEATURE_COLUMNS].astype(float)))
        return {"reliability": reliability}, {"calibration": plots.calibration_figure(reliability)}

    return extras


def _next_action_spec(name: str, asset: str, label: str, what: str) -> ModelSpec:
    rule = training.HISTORY_RULES[label].name
    return ModelSpec(
        name=name,
        asset=asset,
        training_set="next_action_training_set",
        target=label,
        metric="auc",
        features=USER_FEATURE_COLUMNS,
        train=lambda frame, params: training.train_binary(frame, label, params),
        rules=_history_rule(label),
        evaluate=_next_action_evaluation(label),
        replay=_next_action_replay(label),
        baselines=(rule, "base_rate"),
        blocker=_label_blocker("next_action_training_set", label),
        description=f"LightGBM probability that a user {what} tomorrow, started from {rule} and evaluated on the "
        f"temporal hold-out beside it and the base rate (with a reliability table); {rule} is a policy too, and "
        f"serves when it measures better.",
        serves="next_action_predictions",
        extras=_reliability(label),
    )


# --- the next-item ranker -----------------------------------------------------------------------------------------


def _ranker_blocker(conn, tz: str) -> str | None:
    users = dict(
        conn.execute("SELECT split, count(DISTINCT user_id) FROM ranker_training_set GROUP BY split").fetchall()
    )
    if users.get("train", 0) < MIN_EXAMPLES:
        return (
            f"{users.get('train', 0)} user(s) touched one of their candidates on the day after a training "
            f"cut-off, fewer than {MIN_EXAMPLES} (users who do not come back the next day leave the next-day "
            "ranker nothing to learn)"
        )
    day = holdout_day(conn, "ranker_training_set")
    measured = 0 if day is None else training.holdout_targets(conn, pd.Timestamp(day).date(), tz)["user_id"].nunique()
    if measured < MIN_EXAMPLES:
        return (
            f"{measured} user(s) with history came back on the day after the hold-out cut-off, fewer than "
            f"{MIN_EXAMPLES}: NDCG@20 cannot be measured"
        )
    return None


def _ranker_evaluation(conn, model, rules, tz: str) -> tuple[pd.DataFrame, dt.date]:
    holdout = read_training_set(conn, "ranker_training_set", "holdout")
    day = pd.Timestamp(holdout["as_of_date"].iloc[0]).date()
    targets = training.holdout_targets(conn, day, tz)
    markov = training.markov_recommendations(conn, day, targets["user_id"].unique().tolist(), 20)
    return training.evaluate_ranker(holdout, model, targets, markov, policies=rules), day


def _ranker_replay(conn, model, day: dt.date, tz: str) -> pd.DataFrame | None:
    cutoff_day = day - dt.timedelta(days=1)
    candidates = conn.execute(stored_ranker_rows_sql("as_of_date = $day"), {"day": cutoff_day}).df()
    targets = training.holdout_targets(conn, cutoff_day, tz) if len(candidates) else pd.DataFrame()
    if targets.empty:
        return None
    markov = training.markov_recommendations(conn, cutoff_day, targets["user_id"].unique().tolist(), 20)
    return training.evaluate_ranker(candidates, model, targets, markov)


# --- the next-event model -----------------------------------------------------------------------------------------


def _next_event_blocker(conn, tz: str) -> str | None:
    for split, rows, values in conn.execute(
        "SELECT split, count(*), list(DISTINCT next_type ORDER BY next_type) FROM next_event_training_set "
        "GROUP BY split ORDER BY split DESC"
    ).fetchall():
        if len(values) < 2:
            return (
                f"every session's next event in the {split} split ({rows:,} states) is a {values[0]}: "
                "there is no other event type to tell apart"
            )
    return _missing_splits(conn, "next_event_training_set")


def _next_event_evaluation(conn, model, rules, tz: str) -> tuple[pd.DataFrame, dt.date]:
    frame = read_training_set(conn, "next_event_training_set")
    holdout = frame[frame["split"] == "holdout"]
    day = pd.Timestamp(holdout["as_of_date"].iloc[0]).date()
    return next_event.evaluate_next_event(holdout, model, frame[frame["split"] == "train"]), day


def _next_event_replay(conn, model, day: dt.date, tz: str) -> pd.DataFrame | None:
    states = next_event.next_event_frame(conn, *day_bounds(day, tz))
    before = next_event.next_event_frame(conn, *day_bounds(day - dt.timedelta(days=1), tz))
    if states.empty or before.empty:
        return None
    return next_event.evaluate_next_event(states, model, before)


# --- the in-session next-item model -------------------------------------------------------------------------------


# Training prefixes per session and training days: every prefix costs its candidates (the rules, session-kNN's
# neighbours), and a long session's prefixes share most of them. On the synthetic shop (sessions of 17 events, 12
# training days) every prefix of every day made a training set 6 times as large, built in minutes. The hold-out
# measures every position.
TRAIN_POSITIONS_PER_SESSION = 5
SESSION_TRAIN_DAYS = 4


def _session_rows(conn, train_days: list[dt.date], holdout: dt.date, tz: str) -> pd.DataFrame:
    """The prefixes of the sessions that start on the day after each cut-off, with their candidates: the item side
    from the events before that day, the prefix from its own session (``session_model.session_frame``; at most
    ``TRAIN_POSITIONS_PER_SESSION`` of a training session's prefixes)."""
    frames = []
    for split, days in (("train", train_days), ("holdout", [holdout])):
        for day in days:
            start, end = day_bounds(day + dt.timedelta(days=1), tz)
            rows = session_model.session_frame(
                conn,
                start,
                end,
                positives_only=split == "train",
                positions_per_session=TRAIN_POSITIONS_PER_SESSION if split == "train" else 0,
            )
            frames.append(with_columns(rows, split=split, as_of_date=pd.Timestamp(day).as_unit("ns")))
    return pd.concat(frames, ignore_index=True)


def _session_cutoffs(conn, tz: str) -> list[dt.date]:
    """The labelled cut-offs D on whose next day at least ``MIN_EXAMPLES`` sessions of two or more events start
    (sessions belong to the day they start: a log's last day may hold only the tails of the day before's)."""
    starts = (
        conn.execute(
            """SELECT min(event_time) FROM cleaned_events WHERE NOT is_bot AND item_id IS NOT NULL
           GROUP BY user_id, session_id HAVING count(*) >= 2"""
        )
        .df()
        .iloc[:, 0]
    )
    kept = []
    for day in training.labelled_cutoffs(conn, tz):
        start, end = day_bounds(day + dt.timedelta(days=1), tz)
        if ((starts >= pd.Timestamp(start)) & (starts < pd.Timestamp(end))).sum() >= MIN_EXAMPLES:
            kept.append(day)
    return kept


def _session_blocker(conn, tz: str) -> str | None:
    return _too_few_prefixes(
        conn.execute("SELECT split, count(DISTINCT prefix_id) FROM session_training_set GROUP BY split").fetchall()
    )


def _too_few_prefixes(per_split: list[tuple[str, int]]) -> str | None:
    """Why a split of session prefixes (``[(split, prefixes)]``) is too small to train or measure on, or None."""
    prefixes = dict(per_split)
    for split in ("train", "holdout"):
        if prefixes.get(split, 0) < MIN_EXAMPLES:
            return (
                f"{prefixes.get(split, 0)} session prefix(es) of the {split} split have a next item seen before "
                f"their cut-off, fewer than {MIN_EXAMPLES}: sessions of one event, or of items never seen before"
            )
    return None


def _session_evaluation(conn, model, rules, tz: str) -> tuple[pd.DataFrame, dt.date]:
    holdout = read_training_set(conn, "session_training_set", "holdout")
    day = pd.Timestamp(holdout["as_of_date"].iloc[0]).date()
    start, end = (pd.Timestamp(holdout[column].iloc[0]).to_pydatetime() for column in ("cutoff", "window_end"))
    targets = session_model.session_targets(conn, start, end)  # the same sessions as the hold-out's prefixes
    return session_model.evaluate_sessions(holdout, model, targets), day


def _session_replay(conn, model, day: dt.date, tz: str) -> pd.DataFrame | None:
    start, end = day_bounds(day, tz)
    holdout = session_model.session_frame(conn, start, end, positives_only=False)
    if holdout.empty:
        return None
    return session_model.evaluate_sessions(holdout, model, session_model.session_targets(conn, start, end))


def _next_items(conn, model, day: dt.date, tz: str) -> pd.DataFrame:
    """Each item's next items, the item itself left out (a repeat click is no suggestion on its own page)."""
    rows = session_model.item_next_items(conn, model, day_bounds(day, tz)[1], ITEM_NEXT_ITEMS + 1)
    rows = rows[rows["next_item_id"] != rows["item_id"]]
    rows = rows.assign(rank=rows.groupby("item_id").cumcount() + 1, as_of_date=day)
    return rows[rows["rank"] <= ITEM_NEXT_ITEMS]


ITEM_NEXT_ITEMS = 50  # next items per item in the served lookup table
TRAINING_SETS["session_training_set"] = TrainingSetSpec(
    "session_training_set",
    "as_of_date, prefix_id, item_id",
    ("cleaned_events", "user_features", "ranking_candidates"),
    # the item side's latest event (a candidate's recency is measured from its prefix's last event)
    _session_rows,
    _latest_event_per_day("item_hours_since_last", "prefix_time"),
    "Prefixes of the sessions that start on the day after each cut-off, one row per candidate next item (the "
    "session's own items, sequential rules, session-kNN, Markov, popular) with relevance 1 on the true next item; "
    "the item side reads only events before that day.",
    _session_cutoffs,
    max_train_days=SESSION_TRAIN_DAYS,
)


# --- the recurrent in-session model (the optional "deep" extra) ---------------------------------------------------
# A GRU over each session prefix's items (``gru_model``), its own top 20 measured by the session protocol on the
# LightGBM session model's positions beside the same rules, recorded as an MLflow pyfunc (``resources.gru_pyfunc``)
# and promoted through the same gate. Without JAX (the default install) its blocker skips it with the install command.

GRU_TRAINING_SET = "session_sequence_training_set"
GRU_SESSION_MODEL = "shopseq_session_gru"


def _gru_rows(conn, train_days: list[dt.date], holdout: dt.date, tz: str) -> pd.DataFrame:
    """The events of the sessions that start on the day after each cut-off (``gru_model.session_sequences``: the
    session protocol's prefixes, items unknown at the cut-off removed), with the window they were read for."""
    frames = []
    for split, days in (("train", train_days), ("holdout", [holdout])):
        for day in days:
            start, end = day_bounds(day + dt.timedelta(days=1), tz)
            rows = gru_model.session_sequences(conn, start, end)
            frames.append(
                with_columns(
                    rows,
                    split=split,
                    as_of_date=pd.Timestamp(day).as_unit("ns"),
                    cutoff=pd.Timestamp(start),
                    window_end=pd.Timestamp(end),
                )
            )
    return pd.concat(frames, ignore_index=True)


def _sequences_in_window(conn, frame: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    """Per as-of day: every row belongs to a session that starts in its window, on an item seen before its cut-off
    (a reconciliation of the stored table)."""
    return "stage_reconciliation", conn.execute(
        f"""WITH starts AS (
                SELECT as_of_date, session_key, min(event_time) AS first_time FROM {GRU_TRAINING_SET} GROUP BY ALL
            )
            SELECT t.as_of_date AS day, count(*) AS expected,
                   count(*) FILTER (WHERE s.first_time >= t.cutoff AND s.first_time < t.window_end AND EXISTS (
                       SELECT 1 FROM cleaned_events e
                       WHERE e.item_id = t.item_id AND e.event_time < t.cutoff AND NOT e.is_bot)) AS actual
            FROM {GRU_TRAINING_SET} t JOIN starts s USING (as_of_date, session_key)
            GROUP BY ALL ORDER BY 1"""
    ).df()


def _gru_train(frame: pd.DataFrame, params: training.LightGBMParams) -> gru_model.GRUSessionModel:
    """The GRU on the training split's days (oldest first, the last the validation day), seeded by ``params``."""
    days = [rows for _, rows in frame.groupby("as_of_date", sort=True)]
    return gru_model.train_gru(days, gru_model.GRUParams(seed=params.seed))


def _session_candidates(conn, start: dt.datetime, end: dt.datetime) -> pd.DataFrame:
    """The session reranker's candidates of the positions of the sessions that start in ``[start, end)``: its
    training set's hold-out rows when they are of that window (the rows ``session_model.session_frame`` makes, made
    once), else made."""
    built = conn.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'session_training_set'"
    ).fetchall()[0][0]
    if (
        built
        and conn.execute(
            "SELECT count(*) FROM session_training_set "
            "WHERE split = 'holdout' AND cutoff = $start AND window_end = $end",
            {"start": start, "end": end},
        ).fetchall()[0][0]
    ):
        return read_training_set(conn, "session_training_set", "holdout").drop(columns=["split", "as_of_date"])
    return session_model.session_frame(conn, start, end, positives_only=False)


def _gru_measure(conn, model, sequences: pd.DataFrame, start: dt.datetime, end: dt.datetime) -> pd.DataFrame:
    """The GRU's served lists (``gru_model.evaluate_gru``), or a rule's, on the positions of the sessions that start
    in ``[start, end)``, beside every session rule ranked on the session reranker's candidates of those positions."""
    candidates = _session_candidates(conn, start, end)
    targets = session_model.session_targets(conn, start, end)
    if not isinstance(model, gru_model.GRUSessionModel):
        return session_model.evaluate_sessions(candidates, model, targets)
    popularity = conn.execute(
        "SELECT item_id, count(*) AS events FROM cleaned_events WHERE event_time < $start AND NOT is_bot "
        "AND item_id IS NOT NULL GROUP BY item_id",
        {"start": start},
    ).df()
    return gru_model.evaluate_gru(
        model, sequences, candidates, targets, popularity.set_index("item_id")["events"].astype(float)
    )


def _gru_evaluation(conn, model, rules, tz: str) -> tuple[pd.DataFrame, dt.date]:
    sequences = read_training_set(conn, GRU_TRAINING_SET, "holdout")
    day = pd.Timestamp(sequences["as_of_date"].iloc[0]).date()
    start, end = (pd.Timestamp(sequences[column].iloc[0]).to_pydatetime() for column in ("cutoff", "window_end"))
    return _gru_measure(conn, model, sequences, start, end), day


def _gru_replay(conn, model, day: dt.date, tz: str) -> pd.DataFrame | None:
    start, end = day_bounds(day, tz)
    sequences = gru_model.session_sequences(conn, start, end)
    return None if sequences.empty else _gru_measure(conn, model, sequences, start, end)


def _gru_blocker(conn, tz: str) -> str | None:
    import importlib.util

    if importlib.util.find_spec("jax") is None or importlib.util.find_spec("optax") is None:
        return gru_model.DEEP_EXTRA_HINT
    return _too_few_prefixes(
        conn.execute(
            f"SELECT split, count(*) - count(DISTINCT session_key) FROM {GRU_TRAINING_SET} GROUP BY split"
        ).fetchall()
    )


TRAINING_SETS[GRU_TRAINING_SET] = TrainingSetSpec(
    GRU_TRAINING_SET,
    "as_of_date, session_key, step",
    ("cleaned_events", "user_features", "ranking_candidates"),
    _gru_rows,
    _sequences_in_window,
    "The events of the sessions that start on the day after each cut-off, in order, their events on items never "
    "seen before the cut-off removed: the prefixes of the session training set, as sequences.",
    _session_cutoffs,
    max_train_days=SESSION_TRAIN_DAYS,  # the session training set's days
)


def _log_gru(registry, name: str, model, train: pd.DataFrame, metrics: dict, tags: dict, tables: dict):
    from resources.gru_pyfunc import log_gru  # imports MLflow's pyfunc flavour

    events = train.rename(columns={"session_key": "session_id"})[["session_id", "item_id", "event_time"]]
    return log_gru(registry, name, model, events.head(10), metrics, tags, tables)


CATALOGUE: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        _next_action_spec("shopseq_next_purchase", "next_purchase_model", "label_purchase", "purchases"),
        _next_action_spec("shopseq_next_cart", "next_cart_model", "label_add_to_cart", "adds an item to the cart"),
        _next_action_spec("shopseq_next_return", "next_return_model", "label_return", "comes back (any event)"),
        ModelSpec(
            name="shopseq_next_item_ranker",
            asset="next_item_ranker",
            training_set="ranker_training_set",
            target="any",
            metric="ndcg@20",
            features=RANKER_FEATURES,
            train=training.train_lambdarank,
            rules=lambda conn: dict(training.RANKER_RULES),
            evaluate=_ranker_evaluation,
            replay=_ranker_replay,
            baselines=(*training.RANKER_RULES, "markov"),
            blocker=_ranker_blocker,
            description="LightGBM LambdaRank reranker of the candidates, started from repeat-recent, evaluated on the "
            "temporal hold-out (next-day protocol, served lists) beside popularity, repeat-recent, co-visitation, "
            "recent + co-visitation + popularity and first-order Markov; the rules among them are policies too, and "
            "the best measured one serves when the ranker does not beat it.",
            reads=("cleaned_events", "ranking_candidates"),  # the hold-out's targets, Markov, the served lists
            serves="recommendations",
        ),
        ModelSpec(
            name="shopseq_next_event",
            asset="next_event_model",
            training_set="next_event_training_set",
            target="next_event_type",
            metric="auc",
            features=next_event.NEXT_EVENT_FEATURES,
            train=next_event.train_next_event,
            rules=lambda conn: {},
            evaluate=_next_event_evaluation,
            replay=_next_event_replay,
            baselines=("class_prior", "last_type_markov"),
            blocker=_next_event_blocker,
            description="LightGBM multiclass model of the type of a session's next event (view, search, cart, remove, "
            "favourite, purchase) from the session so far, evaluated on the hold-out day's states beside the class "
            "prior and a last-type Markov chain.",
        ),
        ModelSpec(
            name="shopseq_session_next_item",
            asset="session_next_item_model",
            training_set="session_training_set",
            target="next_item",
            metric="ndcg@20",
            features=session_model.SESSION_FEATURES,
            train=session_model.train_session_ranker,
            rules=lambda conn: dict(session_model.SESSION_RULES),
            evaluate=_session_evaluation,
            replay=_session_replay,
            baselines=tuple(session_model.SESSION_RULES),
            blocker=_session_blocker,
            description="LightGBM LambdaRank reranker of each session prefix's candidate next items (the session's own "
            "items, sequential rules, session-kNN, Markov, popular), started from sequential rules (SR), evaluated by "
            "the session protocol (every position of the hold-out day's sessions) beside SR, SR over the last three "
            "items, session-kNN, Markov and popularity; the rules are policies too.",
            reads=("cleaned_events",),  # the session protocol's targets
            serves="item_next_items",
            publish=_next_items,
        ),
        ModelSpec(
            name=GRU_SESSION_MODEL,
            asset="session_gru_model",
            training_set=GRU_TRAINING_SET,
            target="next_item",
            metric="ndcg@20",
            features=list(gru_model.SEQUENCE_COLUMNS),
            train=_gru_train,
            # the session rules serve through the in-session LightGBM model: here they are measure-only baselines
            rules=lambda conn: {},
            evaluate=_gru_evaluation,
            replay=_gru_replay,
            baselines=tuple(session_model.SESSION_RULES),
            blocker=_gru_blocker,
            description="A GRU (GRU4Rec-style: item embeddings, a GRU over the session prefix, a full softmax over "
            "the items) listing each session prefix's top next items over every item it learned, evaluated by the "
            "session protocol on the in-session reranker's positions beside SR, SR over the last three items, "
            "session-kNN, Markov and popularity.",
            # the positions of the session protocol, and their candidates (made once, by the session training set)
            reads=("cleaned_events", "session_training_set"),
            log=_log_gru,
        ),
    )
}

RANKER_MODEL = "shopseq_next_item_ranker"
NEXT_EVENT_MODEL = "shopseq_next_event"
SESSION_MODEL = "shopseq_session_next_item"
# The next-action models by the action their probability is published as.
NEXT_ACTION_MODELS = {
    spec.target.removeprefix("label_"): spec.name
    for spec in CATALOGUE.values()
    if spec.serves == "next_action_predictions"
}


def training_blocker(conn: duckdb.DuckDBPyConnection, model_name: str, tz: str) -> str | None:
    """Why this home's data (days of the time zone ``tz``) cannot train ``model_name`` or measure it on the hold-out,
    or None when it can.

    A click log has no purchases, anonymous sessions never come back the next day, a log of views has one event
    type: a model whose labels hold one class (or no row), or whose training set could not be made (too few days
    with its labels), is skipped with this reason, by its training asset and by promotion alike, instead of
    failing the run."""
    spec = CATALOGUE[model_name]
    exists = conn.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [spec.training_set]
    ).fetchall()[0][0]
    if not exists:
        return f"its training set {spec.training_set} could not be made: too few days with its labels"
    return spec.blocker(conn, tz)


def main_metric(evaluation: pd.DataFrame, spec: ModelSpec, method: str = "model") -> float:
    return training.metric_value(evaluation, method, spec.target, spec.metric)


def best_baseline(evaluation: pd.DataFrame, spec: ModelSpec) -> tuple[str, float]:
    """The baseline with the highest main metric on this evaluation (ties: the first in ``spec.baselines``)."""
    values = {b: main_metric(evaluation, spec, b) for b in spec.baselines}
    name = max(values, key=lambda b: (np.nan_to_num(values[b], nan=-np.inf), -spec.baselines.index(b)))
    return name, values[name]
