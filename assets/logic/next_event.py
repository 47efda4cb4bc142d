"""In-session next event type: given a session so far, what does the shopper do next?

Every event gives a *state*: the session up to and including it (counts per type,
the last two types, time in the session, the gap before it, items seen, whether it
repeats an item) and the user's activity in the 7 days before the session started.
The label of a state is the type of the session's next event; the last event of a
session has none. A state describes only events at or before its own time, and the
next event comes after it in the session's order (time, then event id).

``shopseq predict`` scores the state after each sequence's last event.
"""

import duckdb
import lightgbm as lgb
import numpy as np
import pandas as pd

from assets.logic.metrics import auc, bootstrap_intervals, percentile_interval, resampled_aucs
from assets.logic.schema import EVENT_TYPES
from assets.logic.training import LightGBMParams, boost

EVENT_CLASSES = list(EVENT_TYPES)  # class i of the multiclass model is EVENT_CLASSES[i]
_SHORT = {
    "view": "views",
    "search": "searches",
    "add_to_cart": "carts",
    "remove_from_cart": "removes",
    "favorite": "favs",
    "purchase": "purchases",
}
NEXT_EVENT_FEATURES = [
    *(f"last_is_{t}" for t in EVENT_CLASSES),
    *(f"previous_is_{t}" for t in EVENT_CLASSES),
    "session_events",
    *(f"session_{s}" for s in _SHORT.values()),
    "session_seconds",
    "gap_seconds",
    "session_items",
    "last_item_repeats",
    "user_events_7d",
    "user_carts_7d",
    "user_purchases_7d",
    "user_sessions_7d",
]


def session_states_sql(events: str) -> str:
    """One row per event of ``events`` (a SELECT of cleaned events, bots left out by the caller): the state
    after it, ``next_type`` / ``next_time`` of the session's next event, ``state_time`` and ``session_start``."""
    one_hot = ", ".join(
        f"CAST(event_type = '{t}' AS INTEGER) AS last_is_{t}, CAST(coalesce(previous_type = '{t}', false) AS "
        f"INTEGER) AS previous_is_{t}"
        for t in EVENT_CLASSES
    )
    counts = ", ".join(
        f"count(*) FILTER (WHERE event_type = '{t}') OVER upto AS session_{s}" for t, s in _SHORT.items()
    )
    return f"""
WITH e AS (SELECT user_id, session_id, event_time, event_id, event_type, item_id FROM ({events}) x),
sessions AS (SELECT user_id, session_id, min(event_time) AS session_start FROM e GROUP BY ALL),
before_session AS (
    -- the user's events in the 7 days before the session started
    SELECT s.user_id, s.session_id, s.session_start, count(p.event_time) AS user_events_7d,
           count(*) FILTER (WHERE p.event_type = 'add_to_cart') AS user_carts_7d,
           count(*) FILTER (WHERE p.event_type = 'purchase') AS user_purchases_7d,
           count(DISTINCT p.session_id) AS user_sessions_7d
    FROM sessions s LEFT JOIN e p ON p.user_id = s.user_id AND p.event_time < s.session_start
                                 AND p.event_time >= s.session_start - INTERVAL 7 DAY
    GROUP BY ALL
),
states AS (
    SELECT e.*,
           lag(event_type) OVER ordered AS previous_type,
           lead(event_type) OVER ordered AS next_type,
           lead(event_time) OVER ordered AS next_time,
           row_number() OVER ordered AS session_events,
           {counts},
           date_diff('second', first_value(event_time) OVER ordered, event_time) AS session_seconds,
           date_diff('second', lag(event_time) OVER ordered, event_time) AS gap_seconds,
           count(item_id) OVER (PARTITION BY user_id, session_id, item_id ORDER BY event_time, event_id
                                ROWS UNBOUNDED PRECEDING) - 1 AS last_item_repeats
    FROM e
    WINDOW ordered AS (PARTITION BY user_id, session_id ORDER BY event_time, event_id),
           upto AS (PARTITION BY user_id, session_id ORDER BY event_time, event_id ROWS UNBOUNDED PRECEDING)
),
items_seen AS (
    -- distinct items of the session up to each event: an item counts from its first event on
    SELECT user_id, session_id, event_time, event_id,
           sum(CAST(first_touch AS INTEGER)) OVER (PARTITION BY user_id, session_id ORDER BY event_time, event_id
                                                   ROWS UNBOUNDED PRECEDING) AS session_items
    FROM (SELECT *, item_id IS NOT NULL AND row_number() OVER (
              PARTITION BY user_id, session_id, item_id ORDER BY event_time, event_id) = 1 AS first_touch FROM e)
)
SELECT s.user_id, s.session_id, s.event_id, s.event_time AS state_time, b.session_start, s.next_type, s.next_time,
       {one_hot}, s.session_events, {", ".join(f"s.session_{v}" for v in _SHORT.values())},
       s.session_seconds, s.gap_seconds, i.session_items, s.last_item_repeats,
       b.user_events_7d, b.user_carts_7d, b.user_purchases_7d, b.user_sessions_7d
FROM states s
JOIN items_seen i USING (user_id, session_id, event_time, event_id)  -- an event id is unique per day only
JOIN before_session b USING (user_id, session_id)
"""


def next_event_frame(conn: duckdb.DuckDBPyConnection, start, end) -> pd.DataFrame:
    """Labelled states whose next event happens in ``[start, end)`` (UTC), from ``cleaned_events``
    (sessions that started up to a day before, and 7 days of activity before them)."""
    events = """SELECT * FROM cleaned_events
                WHERE event_time >= $start - INTERVAL 8 DAY AND event_time < $end AND NOT is_bot"""
    return conn.execute(
        f"""SELECT * FROM ({session_states_sql(events)})
            WHERE next_time >= $start AND next_time < $end AND session_start >= $start - INTERVAL 1 DAY
            ORDER BY next_time, user_id, event_id""",
        {"start": start, "end": end},
    ).df()


def train_next_event(frame: pd.DataFrame, params: LightGBMParams) -> lgb.Booster:
    """The multiclass model, its rounds picked by early stopping on the validation day's states (multi log loss)."""
    labels = frame["next_type"].map(EVENT_CLASSES.index)
    if labels.nunique() < 2:
        raise ValueError(f"the next-event training set holds {labels.nunique()} event type(s): cannot train")
    lgb_params = params.to_lightgbm("multiclass") | {"num_class": len(EVENT_CLASSES), "metric": "multi_logloss"}

    def dataset(rows: pd.DataFrame, reference: lgb.Dataset | None) -> lgb.Dataset:
        return lgb.Dataset(
            rows[NEXT_EVENT_FEATURES].astype(float),
            label=rows["next_type"].map(EVENT_CLASSES.index),
            reference=reference,
        )

    return boost(lgb_params, dataset, frame, params)


def _class_prior(train: pd.DataFrame) -> np.ndarray:
    counts = train["next_type"].value_counts().reindex(EVENT_CLASSES, fill_value=0).to_numpy(dtype=float)
    return (counts + 1.0) / (counts.sum() + len(EVENT_CLASSES))


def _last_type_markov(train: pd.DataFrame, holdout: pd.DataFrame) -> np.ndarray:
    """P(next type | last type) from the training states, add-one smoothed."""
    last = lambda f: f[[f"last_is_{t}" for t in EVENT_CLASSES]].to_numpy().argmax(axis=1)  # noqa: E731
    table = np.ones((len(EVENT_CLASSES), len(EVENT_CLASSES)))
    np.add.at(table, (last(train), train["next_type"].map(EVENT_CLASSES.index).to_numpy()), 1.0)
    table /= table.sum(axis=1, keepdims=True)
    return table[last(holdout)]


def _normalised(p: np.ndarray) -> np.ndarray:
    """Probabilities of at least 1e-9 summing to 1 per row: what the metrics and their intervals measure."""
    p = np.clip(p, 1e-9, 1.0)
    return p / p.sum(axis=1, keepdims=True)


def _per_state_losses(y: np.ndarray, p: np.ndarray, onehot: np.ndarray) -> dict[str, np.ndarray]:
    """Each state's log loss and Brier score (squared error summed over classes) of the normalised ``p``."""
    return {"log_loss": -np.log(p[np.arange(len(y)), y]), "brier": ((p - onehot) ** 2).sum(axis=1)}


def multiclass_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """Macro one-vs-rest AUC over the classes the hold-out has (and each one's AUC), log loss, Brier
    (squared error summed over classes), accuracy."""
    p = _normalised(p)
    onehot = np.eye(len(EVENT_CLASSES))[y]
    aucs = [auc(onehot[:, c], p[:, c]) for c in range(len(EVENT_CLASSES))]
    return {
        "auc": float(np.nanmean(aucs)) if not np.all(np.isnan(aucs)) else float("nan"),
        **{metric: float(values.mean()) for metric, values in _per_state_losses(y, p, onehot).items()},
        "accuracy": float((p.argmax(axis=1) == y).mean()),
        **{f"auc_{t}": float(a) for t, a in zip(EVENT_CLASSES, aucs) if not np.isnan(a)},
    }


def multiclass_intervals(y: np.ndarray, p: np.ndarray) -> dict[str, tuple[float, float]]:
    """95% bootstrap intervals over states of ``multiclass_metrics`` of ``y`` and ``p``: the macro AUC, each type's
    AUC, the log loss and the Brier score, every one from the same resamples. A resample's macro AUC is the mean
    over the types it has both labels of, as ``multiclass_metrics`` measures it."""
    p = _normalised(p)
    onehot = np.eye(len(EVENT_CLASSES))[y]
    per_state = _per_state_losses(y, p, onehot)  # the interval of their mean
    intervals = dict(zip(per_state, bootstrap_intervals(np.column_stack(list(per_state.values())))))
    # each type's AUC per resample, for the types the hold-out has both labels of
    present = [c for c in range(len(EVENT_CLASSES)) if 0 < onehot[:, c].sum() < len(y)]
    if present:
        stacked = resampled_aucs(onehot[:, present], p[:, present])
        intervals |= {f"auc_{EVENT_CLASSES[c]}": percentile_interval(stacked[:, i]) for i, c in enumerate(present)}
        counted = (~np.isnan(stacked)).sum(axis=1)
        intervals["auc"] = percentile_interval(
            np.where(counted > 0, np.nansum(stacked, axis=1) / np.maximum(counted, 1), np.nan)
        )
    return intervals


def evaluate_next_event(holdout: pd.DataFrame, booster: lgb.Booster, train: pd.DataFrame) -> pd.DataFrame:
    """The model beside the class prior and a last-type Markov chain (both from the training states) on the
    hold-out states, with 95% bootstrap intervals over states for the macro AUC, each type's AUC, the log loss and
    the Brier score (``multiclass_intervals``)."""
    y = holdout["next_type"].map(EVENT_CLASSES.index).to_numpy()
    methods = {
        "model": booster.predict(holdout[NEXT_EVENT_FEATURES].astype(float)).reshape(len(holdout), -1),
        "class_prior": np.tile(_class_prior(train), (len(holdout), 1)),
        "last_type_markov": _last_type_markov(train, holdout),
    }
    rows = []
    for method, p in methods.items():
        intervals = multiclass_intervals(y, p)
        for metric, value in multiclass_metrics(y, p).items():
            low, high = intervals.get(metric, (float("nan"), float("nan")))
            rows.append(
                {
                    "segment": "all",
                    "method": method,
                    "target": "next_event_type",
                    "metric": metric,
                    "value": value,
                    "ci_low": low,
                    "ci_high": high,
                    "users": len(y),
                }
            )
    return pd.DataFrame(rows)
