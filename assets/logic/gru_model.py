"""A recurrent (GRU4Rec-style) in-session next-item model: the challenger to the LightGBM session reranker.

Item embeddings, a GRU over a session prefix's items and a full softmax over the items of the training sessions,
each item scored by its input embedding (GRU4Rec's cross-entropy loss and constrained embedding; at a few thousand
items the full softmax is cheap enough on a CPU that no negative sampling is needed). It learns from the same
point-in-time data as ``session_model``: the prefixes of the sessions that start on the day after each training
cut-off, each session's events on items unknown at that cut-off removed (``session_sequences``, the protocol of
``session_model.session_targets``, whose ``prefix_id`` it shares), and a prefix's score reads its own session's
items up to its last one only.

Training is seeded and single-threaded on the CPU (the same data gives the same weights, see ``_jax``), fits the
days before the validation day (the last training day) for at most ``GRUParams.epochs`` epochs, keeps the number
of epochs with the best MRR@20 on the validation day (early stopping), then refits every training day, the
validation day included, for that many epochs (``training.boost`` keeps LightGBM's stopped model instead: the GRU
needs the validation day's items in its vocabulary).

JAX is an optional dependency (``pip install -e ".[deep]"``): it is imported inside the functions that need it,
so the rest of shopseq imports this module's neighbours without it.
"""

import datetime as dt
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from assets.logic import session_model

METRIC_K = 20
SEQUENCE_COLUMNS = ("session_key", "step", "item_id")
"""What the model reads of a session: its events' items in step order."""
DEEP_EXTRA_HINT = 'the recurrent session model needs JAX: pip install -e ".[deep]"'
_WEIGHT = "weight_"  # a weight's name in the saved arrays, beside the vocabulary's


@dataclass(frozen=True)
class GRUParams:
    """Fixed, seeded settings: the same data gives the same model."""

    embedding: int = 100
    hidden: int = 100
    max_steps: int = 10
    """A prefix's most recent items the GRU reads (older ones are left out, in training and in scoring alike)."""
    epochs: int = 10
    """The cap: early stopping on the validation day picks the epochs up to it."""
    patience: int = 2
    """Epochs without a better validation MRR@20 before fitting stops (0: no validation day, ``epochs`` epochs)."""
    batch_size: int = 256
    learning_rate: float = 0.003
    dropout: float = 0.25
    """Dropout on the GRU's final state while training."""
    tied: bool = True
    """Score items with their input embeddings (GRU4Rec's constrained embedding; needs ``hidden == embedding``)
    instead of a separate output embedding."""
    seed: int = 42

    def __post_init__(self):
        if self.tied and self.hidden != self.embedding:
            raise ValueError(
                f"GRUParams: tied embeddings need hidden == embedding, got hidden {self.hidden} and embedding "
                f"{self.embedding}"
            )


@dataclass
class GRUSessionModel:
    """The fitted weights (numpy arrays) and the item vocabulary: index ``i + 1`` is ``items[i]``, 0 pads."""

    params: GRUParams
    items: np.ndarray
    weights: dict[str, np.ndarray]
    epochs: int
    """The epochs the final fit ran (picked on the validation day)."""
    curve: list[dict] = field(default_factory=list)
    """Per epoch of each fit (``phase`` ``fit`` before the validation day, ``refit`` on every day): the mean
    training loss and, while fitting, the validation day's MRR@20 and HR@20."""
    name = "gru"  # the policy its versions and served rows name

    def describe(self) -> dict:
        return {**asdict(self.params), "vocabulary": len(self.items), "chosen_epochs": self.epochs}

    def save(self, folder: Path) -> None:
        """The model as files, nothing pickled: its settings, epochs and training curve (``model.json``), its
        vocabulary and weights (``arrays.npz``). ``load`` reads them back bit for bit."""
        folder.mkdir(parents=True, exist_ok=True)
        described = {"params": asdict(self.params), "epochs": self.epochs, "curve": self.curve}
        (folder / "model.json").write_text(json.dumps(described, sort_keys=True))
        weights = {f"{_WEIGHT}{name}": array for name, array in self.weights.items()}
        np.savez(folder / "arrays.npz", items=np.asarray(self.items, dtype=str), **weights)

    @classmethod
    def load(cls, folder: Path) -> "GRUSessionModel":
        described = json.loads((folder / "model.json").read_text())
        with np.load(folder / "arrays.npz", allow_pickle=False) as arrays:
            items = arrays["items"].astype(object)
            weights = {name.removeprefix(_WEIGHT): arrays[name] for name in arrays.files if name.startswith(_WEIGHT)}
        return cls(GRUParams(**described["params"]), items, weights, described["epochs"], described["curve"])

    def sha256(self) -> str:
        """Equal digests, equal models: the settings, the vocabulary and every weight's bytes."""
        digest = hashlib.sha256(json.dumps(self.describe(), sort_keys=True).encode())
        digest.update("\n".join(self.items).encode())
        for name in sorted(self.weights):
            digest.update(name.encode() + np.ascontiguousarray(self.weights[name]).tobytes())
        return digest.hexdigest()

    def prefix_scores(self, sequences: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(prefix ids, their scores over the vocabulary): one row of logits per prefix of ``sequences``
        (``session_sequences``' columns session_key, step, item_id), as of its last event."""
        prefix_ids, steps = _prefix_matrix(sequences, _index(self.items), self.params.max_steps)
        return prefix_ids, _logits(self.weights, steps, self.params)

    def score_candidates(self, sequences: pd.DataFrame, candidates: pd.DataFrame) -> np.ndarray:
        """The score of each (prefix_id, item_id) row of ``candidates``, NaN for an item outside the vocabulary
        or a prefix absent from ``sequences`` (no score: it follows every scored item, as a rule's
        non-proposals do)."""
        prefix_ids, logits = self.prefix_scores(sequences)
        row = pd.Series(np.arange(len(prefix_ids)), index=prefix_ids).reindex(candidates["prefix_id"]).to_numpy()
        column = _index(self.items).reindex(candidates["item_id"]).to_numpy()
        scored = ~(np.isnan(row) | np.isnan(column))
        scores = np.full(len(candidates), np.nan)
        scores[scored] = logits[row[scored].astype(int), column[scored].astype(int)]
        return scores

    def top_k(self, sequences: pd.DataFrame, k: int = METRIC_K) -> pd.DataFrame:
        """Each prefix's ``k`` best items over the whole vocabulary (ties by vocabulary order, which is item id
        order). Columns prefix_id, rank, item_id, score."""
        prefix_ids, logits = self.prefix_scores(sequences)
        k = min(k, len(self.items))
        best = top_columns(logits[:, 1:], k)
        return pd.DataFrame(
            {
                "prefix_id": np.repeat(prefix_ids, k),
                "rank": np.tile(np.arange(1, k + 1), len(prefix_ids)),
                "item_id": self.items[best.ravel()],
                "score": np.take_along_axis(logits[:, 1:], best, axis=1).ravel(),
            }
        )


def top_columns(scores: np.ndarray, k: int) -> np.ndarray:
    """The columns of each row's ``k`` highest scores, best first, ties by the lower column: what a stable argsort
    of ``-scores`` lists first, without sorting every row (``scores``: no NaN, ``k`` at most its columns). Each
    row's k-th highest score is found by a partition; only the scores at or above it are sorted."""
    if not scores.size:
        return np.zeros((len(scores), k), dtype=np.intp)
    threshold = -np.partition(-scores, k - 1, axis=1)[:, k - 1]
    rows, columns = np.nonzero(scores >= threshold[:, None])  # at least k a row: ties at the threshold too
    order = np.lexsort((columns, -scores[rows, columns], rows))
    rows, columns = rows[order], columns[order]
    rank = np.arange(len(rows)) - np.searchsorted(rows, rows)  # 0-based, within the row
    return columns[rank < k].reshape(len(scores), k)


def evaluate_gru(
    model: GRUSessionModel,
    sequences: pd.DataFrame,
    candidates: pd.DataFrame,
    targets: pd.DataFrame,
    popularity: pd.Series,
    ks: tuple[int, ...] = session_model.METRIC_KS,
) -> pd.DataFrame:
    """The GRU's served lists (its own top ``max(ks)`` over its vocabulary for each prefix of ``sequences``, as the
    pyfunc serves them) as method ``model``, beside every session rule ranked on the reranker's ``candidates``
    (``session_model.session_frame``) of the same positions ``targets``: all by ``session_model.evaluate_sessions``.
    ``popularity``: each item's events before the cut-off (for the popularity bias; unlisted items have none)."""
    # the rules' rows; this call's own ``model`` rows (SR's, a stand-in) are left out
    rules = session_model.evaluate_sessions(candidates, session_model.SESSION_RULES["sr"], targets, ks)
    top = model.top_k(sequences, max(ks))
    listed = top.assign(
        pop_all=popularity.reindex(top["item_id"]).fillna(0.0).to_numpy(),
        catalogue_items=candidates["catalogue_items"].iloc[0] if len(candidates) else len(popularity),
        **{column: 0.0 for column in session_model.SESSION_FEATURES if column != "pop_all"},
    )  # no rule proposes these rows (their in_* flags are 0): only the model's rows are kept
    served = session_model.evaluate_sessions(listed, FixedScores(listed["score"]), targets, ks)
    return pd.concat([served[served["method"] == "model"], rules[rules["method"] != "model"]], ignore_index=True)


class FixedScores:
    """The scores of a fixed frame's rows, answering ``predict`` like a booster: ``session_model.evaluate_sessions``
    passes that frame's features, every row in its order."""

    def __init__(self, scores):
        self.scores = np.asarray(scores, dtype=float)

    def predict(self, rows) -> np.ndarray:
        if len(rows) != len(self.scores):
            raise ValueError(f"scores of {len(self.scores)} rows asked for {len(rows)} rows")
        return self.scores


class GRUPrefixPolicy(FixedScores):
    """The GRU's scores of a frame of candidate rows (``session_model.session_frame``), so that
    ``session_model.evaluate_sessions`` ranks the GRU's candidates by the same code as the reranker's and the
    rules'."""

    def __init__(self, model: GRUSessionModel, sequences: pd.DataFrame, candidates: pd.DataFrame):
        super().__init__(model.score_candidates(sequences, candidates))


# The sessions that start in [$start, $end) with their events on items seen before $start (session_model's
# protocol: nothing could recommend the others), each session's events numbered in order; sessions of two events
# or more. A prefix is a session cut after a step: prefix_id is session_model's.
_SEQUENCES_SQL = """
WITH known AS (
    SELECT DISTINCT item_id FROM cleaned_events WHERE event_time < $start AND NOT is_bot AND item_id IS NOT NULL
),
target_sessions AS (
    SELECT user_id, session_id FROM cleaned_events
    WHERE NOT is_bot AND item_id IS NOT NULL
    GROUP BY ALL HAVING min(event_time) >= $start AND min(event_time) < $end
),
steps AS (
    SELECT e.user_id, e.session_id, e.item_id, e.event_time,
           row_number() OVER w AS step, count(*) OVER (PARTITION BY e.user_id, e.session_id) AS session_events
    FROM cleaned_events e JOIN target_sessions USING (user_id, session_id)
    WHERE NOT e.is_bot AND e.item_id IN (SELECT item_id FROM known)
    WINDOW w AS (PARTITION BY e.user_id, e.session_id ORDER BY e.event_time, e.event_id)
)
SELECT user_id || '/' || session_id AS session_key, step, user_id || '/' || session_id || '/' || step AS prefix_id,
       item_id, event_time
FROM steps WHERE session_events >= 2
ORDER BY session_key, step
"""


def session_sequences(conn: duckdb.DuckDBPyConnection, start: dt.datetime, end: dt.datetime) -> pd.DataFrame:
    """The events of the sessions that start in ``[start, end)`` (UTC, naive like ``event_time``), as
    ``session_model`` sees them: their events on items never seen before ``start`` removed, sessions of at least
    two events left, one row per step (session_key, step, prefix_id, item_id, event_time). The prefix ending at a
    step is every row of its session up to that step; its next item is the next row's."""
    return conn.execute(_SEQUENCES_SQL, {"start": start, "end": end}).df()


def _index(items: np.ndarray) -> pd.Series:
    """Item id -> vocabulary index (1-based: 0 pads)."""
    return pd.Series(np.arange(1, len(items) + 1), index=items)


def _prefix_matrix(sequences: pd.DataFrame, index: pd.Series, max_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(prefix ids, int32 [prefixes, max_steps]): each prefix's last ``max_steps`` known items as vocabulary
    indices, right-aligned and left-padded with 0; items outside the vocabulary are left out. ``sequences`` holds
    whole sessions in step order, or prefixes of them: only rows at or before a prefix's own step are read."""
    ordered = sequences.sort_values(["session_key", "step"], kind="stable")
    codes = index.reindex(ordered["item_id"]).fillna(0).to_numpy(dtype=np.int32)
    session = pd.factorize(ordered["session_key"])[0]
    starts = np.r_[0, np.flatnonzero(np.diff(session)) + 1] if len(ordered) else np.array([], dtype=int)
    bounds = np.r_[starts, len(ordered)]
    matrix = np.zeros((len(ordered), max_steps), dtype=np.int32)
    for first, last in zip(bounds[:-1], bounds[1:]):
        known = codes[first:last]
        for row in range(first, last):
            own = known[: row - first + 1]
            own = own[own > 0][-max_steps:]
            if len(own):
                matrix[row, max_steps - len(own) :] = own
    return ordered["prefix_id"].to_numpy(), matrix


def _examples(sequences: pd.DataFrame, index: pd.Series, max_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs [prefixes, max_steps], targets [prefixes]): every prefix of ``sequences`` with a next item in the
    vocabulary and at least one known item, with that next item as its target."""
    ordered = sequences.sort_values(["session_key", "step"], kind="stable")
    _, matrix = _prefix_matrix(ordered, index, max_steps)
    following = ordered["item_id"].shift(-1).where(ordered["session_key"].shift(-1) == ordered["session_key"])
    targets = index.reindex(following).fillna(0).to_numpy(dtype=np.int32)
    keep = (targets > 0) & (matrix[:, -1] > 0)
    return matrix[keep], targets[keep]


def _jax():
    """JAX on one CPU thread, imported on first use: XLA's multi-threaded kernels may split a sum differently
    from run to run, and the same data must give the same weights. The flags are read when JAX first starts in
    this process; a process that started JAX before keeps its own."""
    os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    try:
        import jax
        import optax
    except ImportError as exc:
        raise ImportError(DEEP_EXTRA_HINT) from exc
    return jax, optax


def _initial_weights(jax, key, vocabulary: int, params: GRUParams) -> dict:
    e, h = params.embedding, params.hidden
    keys = jax.random.split(key, 4)
    uniform = lambda k, shape, fan_in: jax.random.uniform(  # noqa: E731
        k, shape, minval=-1 / np.sqrt(fan_in), maxval=1 / np.sqrt(fan_in)
    )
    return {
        "embed": jax.random.normal(keys[0], (vocabulary + 1, e)) * 0.1,
        "w_x": uniform(keys[1], (e, 3 * h), e),
        "w_h": uniform(keys[2], (h, 3 * h), h),
        "b": jax.numpy.zeros(3 * h),
        "out_b": jax.numpy.zeros(vocabulary + 1),
    } | ({} if params.tied else {"out": uniform(keys[3], (vocabulary + 1, h), h)})


def _final_state(jax, weights: dict, steps, hidden: int):
    """The GRU's state after each row's items (0 pads: the state stays as it was)."""
    jnp = jax.numpy
    x = weights["embed"][steps]  # [rows, steps, embedding]

    def step(state, inputs):
        xt, present = inputs
        gx, gh = xt @ weights["w_x"] + weights["b"], state @ weights["w_h"]
        reset = jax.nn.sigmoid(gx[:, :hidden] + gh[:, :hidden])
        update = jax.nn.sigmoid(gx[:, hidden : 2 * hidden] + gh[:, hidden : 2 * hidden])
        candidate = jnp.tanh(gx[:, 2 * hidden :] + reset * gh[:, 2 * hidden :])
        new = (1 - update) * candidate + update * state
        return jnp.where(present[:, None], new, state), None

    state, _ = jax.lax.scan(step, jnp.zeros((steps.shape[0], hidden)), (x.swapaxes(0, 1), (steps > 0).swapaxes(0, 1)))
    return state


def _output(jax, weights: dict, state):
    logits = state @ weights.get("out", weights["embed"]).T + weights["out_b"]
    return logits.at[:, 0].set(-jax.numpy.inf)  # the padding index is never an item


def _batches(rows: int, size: int):
    return [(first, min(first + size, rows)) for first in range(0, rows, size)]


def _padded(array: np.ndarray, size: int) -> np.ndarray:
    """``array`` with zero rows appended up to ``size`` rows: every batch has one shape, compiled once."""
    return np.concatenate([array, np.zeros((size - len(array), *array.shape[1:]), dtype=array.dtype)])


def _logits(weights: dict, steps: np.ndarray, params: GRUParams) -> np.ndarray:
    """Scores over the vocabulary (column 0 the padding, -inf) for each row of ``steps``, in batches."""
    jax, _ = _jax()
    forward = jax.jit(lambda w, s: _output(jax, w, _final_state(jax, w, s, params.hidden)))
    size = params.batch_size * 4
    parts = [
        np.asarray(forward(weights, _padded(steps[first:last], size)))[: last - first]
        for first, last in _batches(len(steps), size)
    ]
    vocabulary = weights["out_b"].shape[0]
    return np.concatenate(parts) if parts else np.zeros((0, vocabulary))


def _mrr_hr(logits: np.ndarray, targets: np.ndarray, k: int = METRIC_K) -> tuple[float, float]:
    """MRR@k and HR@k of ``targets`` (vocabulary indices; 0: an item outside the vocabulary, a miss) under
    ``logits``; a tie counts the rank after every item scored at least as high (no luck from ties)."""
    if not len(targets):
        return float("nan"), float("nan")
    own = logits[np.arange(len(targets)), targets]
    rank = (logits >= own[:, None]).sum(axis=1)
    hit = (targets > 0) & (rank <= k)
    return float(np.where(hit, 1.0 / rank, 0.0).mean()), float(hit.mean())


def _fit(
    inputs: np.ndarray,
    targets: np.ndarray,
    vocabulary: int,
    params: GRUParams,
    epochs: int,
    valid: tuple[np.ndarray, np.ndarray] | None,
    phase: str,
) -> tuple[dict, list[dict], int]:
    """Adam on the softmax cross-entropy of the next item, in batches shuffled by a seeded generator; with
    ``valid`` (inputs, targets) fitting stops after ``params.patience`` epochs without a better MRR@20 on it and
    the best epoch's weights are kept. Returns (weights as numpy arrays, the per-epoch curve, the epochs kept)."""
    jax, optax = _jax()
    jnp = jax.numpy
    key = jax.random.PRNGKey(params.seed)
    weights = _initial_weights(jax, key, vocabulary, params)
    optimiser = optax.adam(params.learning_rate)
    state = optimiser.init(weights)

    def loss(w, x, y, present, dropout_key):
        hidden = _final_state(jax, w, x, params.hidden)
        if params.dropout:
            keep = jax.random.bernoulli(dropout_key, 1 - params.dropout, hidden.shape)
            hidden = jnp.where(keep, hidden / (1 - params.dropout), 0.0)
        per_row = optax.softmax_cross_entropy_with_integer_labels(_output(jax, w, hidden), y)
        return jnp.sum(jnp.where(present, per_row, 0.0)) / jnp.maximum(jnp.sum(present), 1)

    @jax.jit
    def update(w, s, x, y, present, dropout_key):
        value, grads = jax.value_and_grad(loss)(w, x, y, present, dropout_key)
        changes, s = optimiser.update(grads, s, w)
        return optax.apply_updates(w, changes), s, value

    rng = np.random.default_rng(params.seed)
    size = params.batch_size
    curve, best, best_weights, kept, waited = [], -1.0, weights, 0, 0
    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(targets))
        losses = []
        for number, (first, last) in enumerate(_batches(len(order), size)):
            rows = order[first:last]
            present = _padded(np.ones(len(rows), dtype=bool), size)
            weights, state, value = update(
                weights,
                state,
                _padded(inputs[rows], size),
                _padded(targets[rows], size),
                present,
                jax.random.fold_in(key, epoch * 1_000_003 + number),
            )
            losses.append(float(value) * len(rows))
        point = {"phase": phase, "epoch": epoch, "train_loss": sum(losses) / max(len(targets), 1)}
        if valid is not None:
            mrr, hr = _mrr_hr(_logits(weights, valid[0], params), valid[1])
            point |= {"valid_mrr@20": mrr, "valid_hr@20": hr}
            if mrr > best:
                best, best_weights, kept, waited = mrr, weights, epoch, 0
            else:
                waited += 1
        curve.append(point)
        if valid is not None and waited >= params.patience:
            break
    final = best_weights if valid is not None else weights
    return {name: np.asarray(value) for name, value in final.items()}, curve, kept if valid is not None else epochs


def _vocabulary(sequences: pd.DataFrame) -> np.ndarray:
    return np.sort(sequences["item_id"].unique()).astype(object)


def train_gru(days: list[pd.DataFrame], params: GRUParams = GRUParams()) -> GRUSessionModel:
    """The GRU fitted on ``days`` (``session_sequences`` of each training day, oldest first). With two days or
    more and ``params.patience``, the last is the validation day: the days before it are fitted until its MRR@20
    stops improving, then every day is refitted for the best number of epochs; otherwise every day is fitted for
    ``params.epochs``. The vocabulary is the items of the sequences fitted on."""
    days = [d for d in days if len(d)]
    if not days:
        raise ValueError("the GRU has no session of two or more known events to learn from")
    curve, epochs = [], params.epochs
    if len(days) >= 2 and params.patience:
        fit = pd.concat(days[:-1], ignore_index=True)
        items = _vocabulary(fit)
        x, y = _examples(fit, _index(items), params.max_steps)
        # the validation day's next items outside the fit's vocabulary are misses, as they are for the model
        valid_x, valid_y = _validation_rows(days[-1], _index(items), params.max_steps)
        _, curve, epochs = _fit(x, y, len(items), params, params.epochs, (valid_x, valid_y), "fit")
        epochs = max(epochs, 1)
    every = pd.concat(days, ignore_index=True)
    items = _vocabulary(every)
    x, y = _examples(every, _index(items), params.max_steps)
    weights, refit_curve, _ = _fit(x, y, len(items), params, epochs, None, "refit")
    return GRUSessionModel(params, items, weights, epochs, curve + refit_curve)


def _validation_rows(sequences: pd.DataFrame, index: pd.Series, max_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Every prefix of the validation day with a next item (0 when it is outside the vocabulary: a miss)."""
    ordered = sequences.sort_values(["session_key", "step"], kind="stable")
    _, matrix = _prefix_matrix(ordered, index, max_steps)
    following = ordered["item_id"].shift(-1).where(ordered["session_key"].shift(-1) == ordered["session_key"])
    has_next = following.notna().to_numpy()
    targets = index.reindex(following).fillna(0).to_numpy(dtype=np.int32)
    return matrix[has_next], targets[has_next]
