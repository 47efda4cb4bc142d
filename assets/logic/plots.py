"""Figures for the MLflow run of a model: what a person would rather look at than read.

Each figure is a ``matplotlib.figure.Figure`` drawn by its own Agg canvas (files only, no display), not through
pyplot: no process-wide backend is chosen, and no figure is registered anywhere to be closed later."""

import lightgbm as lgb
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def importance_figure(booster: lgb.Booster, top: int = 20):
    """The features with the largest total gain."""
    gains = pd.Series(booster.feature_importance("gain"), index=booster.feature_name()).nlargest(top)[::-1]
    fig = _figure(7, 0.3 * len(gains) + 1.2)
    ax = fig.subplots()
    ax.barh(gains.index, gains.to_numpy())
    ax.set_xlabel("total gain")
    ax.set_title(f"Feature importance (top {len(gains)})")
    fig.tight_layout()
    return fig


def calibration_figure(reliability: pd.DataFrame):
    """Mean predicted probability against the observed rate per bin (``metrics.reliability_table``)."""
    fig = _figure(5, 5)
    ax = fig.subplots()
    top = float(max(reliability["mean_predicted"].max(), reliability["observed_rate"].max(), 0.01))
    ax.plot([0, top], [0, top], linestyle="--", color="grey", label="calibrated")
    ax.plot(reliability["mean_predicted"], reliability["observed_rate"], marker="o", label="model")
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("observed rate")
    ax.set_title("Calibration on the hold-out")
    ax.legend()
    fig.tight_layout()
    return fig


def metric_by_day_figure(per_day: pd.DataFrame, metric: str):
    """The main metric per day (columns day, method, value): the model beside its baselines."""
    fig = _figure(7, 4)
    ax = fig.subplots()
    for method, rows in per_day.sort_values("day").groupby("method"):
        ax.plot(rows["day"], rows["value"], marker="o", label=method, linewidth=2.5 if method == "model" else 1)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} by day (replay and hold-out)")
    ax.legend(fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig
