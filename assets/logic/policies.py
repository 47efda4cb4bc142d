"""Rule policies: the baselines a learned model must beat, written as models a shop can be served by.

A rule scores rows from the same feature columns as the learned model it competes with: a weighted sum of some of
them, optionally only where a 0/1 feature is set (the other rows get no score and follow every scored row, in
popularity order, as the business rules fill a list), optionally calibrated to a probability by a logistic fit.
It answers ``predict`` and ``feature_name`` like a LightGBM booster, so evaluation, serving, replay and ``predict``
score a rule and a learned model through the same code; it is registered in MLflow as a pyfunc model.
"""

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

RULE = "rule"
LEARNED = "learned"


@dataclass(frozen=True)
class RulePolicy:
    name: str
    features: tuple[str, ...]
    """The feature columns of the model the rule competes with, in its order: its inputs and its signature."""
    weights: tuple[tuple[str, float], ...]
    """(feature, weight) pairs: the score is their weighted sum."""
    only_where: str | None = None
    """A 0/1 feature: rows where it is 0 get no score (NaN), as a rule that only proposes its own items."""
    intercept: float = 0.0
    slope: float = 1.0
    logistic: bool = False
    """Return sigmoid(intercept + slope * score), a probability, instead of intercept + slope * score."""

    def __post_init__(self):
        unknown = sorted(
            {c for c, _ in self.weights} - set(self.features)
            | ({self.only_where} - set(self.features) if self.only_where else set())
        )
        if unknown:
            raise ValueError(f"rule {self.name!r} reads columns that are not among its features: {unknown}")

    def feature_name(self) -> list[str]:
        return list(self.features)

    def _matrix(self, rows: pd.DataFrame | np.ndarray) -> np.ndarray:
        if isinstance(rows, pd.DataFrame):
            return rows[list(self.features)].to_numpy(dtype=np.float64)
        matrix = np.asarray(rows, dtype=np.float64)
        if matrix.ndim == 2 and matrix.shape[1] != len(self.features):
            raise ValueError(
                f"rule {self.name!r} reads {len(self.features)} features, got rows of {matrix.shape[1]} columns"
            )
        return matrix.reshape(-1, len(self.features))

    def terms(self, rows: pd.DataFrame | np.ndarray) -> np.ndarray:
        """Each feature's term of the score, per row (rows by ``features``): the rule's exact attribution."""
        matrix = self._matrix(rows)
        terms = np.zeros_like(matrix)
        for column, weight in self.weights:
            i = self.features.index(column)
            terms[:, i] = weight * np.nan_to_num(matrix[:, i])
        return terms

    def predict(self, rows: pd.DataFrame | np.ndarray) -> np.ndarray:
        matrix = self._matrix(rows)
        if len(self.weights) == 1:  # a row's sum of terms is its one term: no matrix of every feature's term
            ((column, weight),) = self.weights
            total = weight * np.nan_to_num(matrix[:, self.features.index(column)])
        else:
            total = self.terms(matrix).sum(axis=1)
        score = self.intercept + self.slope * total
        if self.only_where is not None:
            score = np.where(matrix[:, self.features.index(self.only_where)] > 0, score, np.nan)
        return 1.0 / (1.0 + np.exp(-score)) if self.logistic else score

    def calibrated(self, rows: pd.DataFrame, y: np.ndarray) -> "RulePolicy":
        """This rule with its intercept and slope fitted to the log-odds of ``y`` on ``rows`` (a logistic fit),
        so that its scores are probabilities; the order of the rows, and so the AUC, is unchanged. The order is the
        rule's definition: where the training rows do not bear it out (a fitted slope at or below 0), the
        probabilities are the base rate, still in the rule's order (a vanishing positive slope), not reversed."""
        raw = RulePolicy(self.name, self.features, self.weights, self.only_where)
        score = np.nan_to_num(raw.predict(rows))
        y = np.asarray(y, dtype=float)
        intercept, slope = logistic_fit(score, y)
        if slope <= 0:
            rate = min(max(y.mean(), 1e-6), 1 - 1e-6)
            slope = float(1e-9 / (score.std() or 1.0))
            intercept = float(np.log(rate / (1 - rate)) - slope * score.mean())
        return RulePolicy(self.name, self.features, self.weights, self.only_where, intercept, slope, logistic=True)

    def config(self) -> dict:
        """The rule's whole definition as plain values (the ``model_config`` of its MLflow model): ``from_config``
        gives the same rule back."""
        return {
            "name": self.name,
            "features": list(self.features),
            "weights": [[column, float(weight)] for column, weight in self.weights],
            "only_where": self.only_where,
            "intercept": float(self.intercept),  # plain floats: numpy's cannot be written to the model's YAML
            "slope": float(self.slope),
            "logistic": bool(self.logistic),
        }

    @classmethod
    def from_config(cls, config: dict) -> "RulePolicy":
        return cls(
            config["name"],
            tuple(config["features"]),
            tuple((column, float(weight)) for column, weight in config["weights"]),
            config["only_where"],
            float(config["intercept"]),
            float(config["slope"]),
            bool(config["logistic"]),
        )

    def params(self) -> dict:
        """The rule's definition, as MLflow parameters and for its digest."""
        return {
            "policy": self.name,
            "weights": json.dumps(dict(self.weights), sort_keys=True),
            "only_where": self.only_where or "",
            "intercept": repr(self.intercept),
            "slope": repr(self.slope),
            "logistic": self.logistic,
            "features": len(self.features),
        }

    def sha256(self) -> str:
        """Equal digests, equal rules (the counterpart of a learned model's ``model_sha256``)."""
        definition = {**self.params(), "features": list(self.features)}
        return hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()

    def describe(self) -> str:
        terms = " + ".join(f"{weight:g} * {column}" for column, weight in self.weights) or "0"
        where = f" where {self.only_where}" if self.only_where else ""
        link = "sigmoid" if self.logistic else ""
        return f"{self.name}: {link}({self.intercept:.4g} + {self.slope:.4g} * ({terms})){where}"


def logistic_fit(score: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Intercept and slope of P(y) = sigmoid(a + b * score), by Newton's method on the standardised score."""
    mean, std = score.mean(), score.std() or 1.0
    x = np.column_stack([np.ones_like(score), (score - mean) / std])
    w = np.zeros(2)
    for _ in range(25):
        p = 1.0 / (1.0 + np.exp(-x @ w))
        hessian = (x * (p * (1.0 - p))[:, None]).T @ x + 1e-6 * np.eye(2)  # the ridge keeps one-valued scores solvable
        w = w + np.linalg.solve(hessian, x.T @ (y - p))
    return float(w[0] - w[1] * mean / std), float(w[1] / std)


def policy_kind(model) -> str:
    return RULE if isinstance(model, RulePolicy) else LEARNED


def policy_name(model) -> str:
    """The name served rows carry: the rule's, a learned model's own (the GRU's ``gru``), or ``lightgbm`` for a
    booster."""
    return getattr(model, "name", "lightgbm")
