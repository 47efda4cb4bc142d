"""The recurrent session model as an MLflow pyfunc, and its training run in the registry.

``mlflow.pyfunc.load_model(uri).predict(events)`` scores sessions: ``events`` (session_id, item_id, event_time), each
session as of its last event, gives each session's top ``k`` next items (session_id, rank, item_id, score) over the
items the model knows. The run logs the model's parameters, its training curve (the loss of every epoch, and the
validation day's MRR@20 and HR@20 while early stopping, as metrics with the epoch as step), the hold-out metrics, a
signature inferred from an example and explicit pip requirements (JAX, Optax, numpy, pandas). Nothing is pickled:
the model is logged from code (``gru_model_code.py``) with its weights and vocabulary as an artifact.
"""

import tempfile
from importlib.metadata import version
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd

from assets.logic.gru_model import GRUSessionModel
from assets.logic.policies import LEARNED
from resources.registry import CHALLENGER, ModelRegistry, ModelVersionRef

GRU_POLICY = GRUSessionModel.name
GRU_ARTIFACT = "gru"  # the version's artifact holding the model's files (``GRUSessionModel.save``)


def _as_sequences(events: pd.DataFrame) -> pd.DataFrame:
    """Events (session_id, item_id, event_time) as ``gru_model`` sequences: one prefix per session, at its end."""
    missing = sorted({"session_id", "item_id", "event_time"} - set(events.columns))
    if missing:
        raise ValueError(f"the events to score lack the column(s) {missing}: need session_id, item_id, event_time")
    ordered = events.assign(session_key=events["session_id"].astype(str), item_id=events["item_id"].astype(str))
    ordered = ordered.sort_values(["session_key", "event_time", "item_id"], kind="stable", ignore_index=True)
    ordered["step"] = ordered.groupby("session_key").cumcount() + 1
    return ordered.assign(prefix_id=ordered["session_key"] + "/" + ordered["step"].astype(str))


def score_sessions(model: GRUSessionModel, events: pd.DataFrame, k: int = 20) -> pd.DataFrame:
    """Each session's top ``k`` next items as of its last event (columns session_id, rank, item_id, score)."""
    sequences = _as_sequences(events)
    last = sequences.groupby("session_key")["step"].transform("max") == sequences["step"]
    top = model.top_k(sequences, k)
    ends = sequences.loc[last, ["prefix_id", "session_key"]]
    top = top.merge(ends, on="prefix_id").rename(columns={"session_key": "session_id"})
    return top[["session_id", "rank", "item_id", "score"]].sort_values(["session_id", "rank"], ignore_index=True)


class GRUSessionPyfunc(mlflow.pyfunc.PythonModel):
    """Logged from ``gru_model_code.py`` (MLflow's models from code), the model's files an artifact it loads; a
    version pickled by an earlier release holds its model already."""

    def __init__(self, model: GRUSessionModel | None = None, k: int = 20):
        self.model = model
        self.k = k

    def load_context(self, context):
        if GRU_ARTIFACT in (context.artifacts or {}):
            self.model = GRUSessionModel.load(Path(context.artifacts[GRU_ARTIFACT]))

    @property
    def policy(self) -> GRUSessionModel:
        """The model the registry loads for the pipeline (``ModelRegistry.load_policy``)."""
        return self.model

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return score_sessions(self.model, model_input, self.k)


def pip_requirements() -> list[str]:
    return [f"{name}=={version(name)}" for name in ("jax", "jaxlib", "optax", "numpy", "pandas")]


def log_gru(
    registry: ModelRegistry,
    model_name: str,
    model: GRUSessionModel,
    example: pd.DataFrame,
    metrics: dict[str, float],
    tags: dict[str, str],
    tables: dict[str, pd.DataFrame] | None = None,
) -> ModelVersionRef:
    """Log one training run of the GRU (``example``: events as ``predict`` takes them), register it as a new
    version of ``model_name`` and mark it ``challenger``, as ``ModelRegistry.log_lightgbm`` does for a booster."""
    import mlflow.pyfunc

    pyfunc = GRUSessionPyfunc(model)
    with tempfile.TemporaryDirectory() as folder:
        model.save(Path(folder))  # the weights as arrays, not a pickle: MLflow copies them into the version
        ref = registry._log_version(
            model_name,
            lambda path, mlflow_model, signature, example: mlflow.pyfunc.save_model(
                path,
                python_model=str(Path(__file__).with_name("gru_model_code.py")),  # models from code
                artifacts={GRU_ARTIFACT: folder},
                mlflow_model=mlflow_model,
                signature=signature,
                input_example=example,
                pip_requirements=pip_requirements(),
            ),
            example,
            lambda events: pyfunc.predict(None, events),
            model.describe(),
            metrics,
            {**tags, "policy": GRU_POLICY, "policy_kind": LEARNED, "model_sha256": model.sha256()},
            tables,
            None,
            None,
        )
    with registry._asking(f"mark {model_name} version {ref.version} {CHALLENGER}"):
        client = registry.client()
        for point in model.curve:  # the training curve: one metric per phase, the epoch as step
            for name in ("train_loss", "valid_mrr@20", "valid_hr@20"):
                if name in point and np.isfinite(point[name]):
                    key = f"{point['phase']}_{name}".replace("@", "_at_")
                    client.log_metric(ref.run_id, key, float(point[name]), step=int(point["epoch"]))
        client.set_registered_model_alias(model_name, CHALLENGER, str(ref.version))
    return ref
