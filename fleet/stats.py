"""Uncertainty of the fleet's metrics: one model's score, and two models on the same rows.

The champion gate and the quality trigger judge differences of a few thousandths on a
few hundred rows, where a score moves by a hundredth or more by chance. Each metric gets
a standard error from the method that suits it:

- ROC AUC: DeLong's variance (DeLong, DeLong & Clarke-Pearson 1988), in the fast
  midrank form of Sun & Xu (2014); paired, the two AUCs' covariance on the same rows;
- accuracy, MAE and log loss are means of a per-row loss: the standard error of that
  mean (paired: of the per-row differences; for accuracy this is the normal form of
  McNemar's test, only the discordant rows count);
- the rest (F1, RMSE, median AE, R²): a seeded bootstrap of the rows (paired: the same
  resampled rows for both models).

Intervals are normal: a gain's lower bound at ``confidence`` is ``gain - z * se`` with
``z`` the one-sided quantile. Signs follow the metric: a *gain* is positive when the
first model is better, whichever direction the metric runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from fleet import training
from fleet.training import Predictions

if TYPE_CHECKING:
    from fleet.catalog import ModelSpec

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 2013


@dataclass(frozen=True)
class Estimate:
    """A metric on some rows and its standard error."""

    metric: str
    value: float
    se: float
    rows: int
    method: str


@dataclass(frozen=True)
class Comparison:
    """Model A against model B on the same rows: A's gain (positive = A better)."""

    metric: str
    gain: float
    se: float
    rows: int
    method: str

    def lower(self, confidence: float) -> float:
        """The gain's one-sided lower confidence bound."""
        return self.gain - z_value(confidence) * self.se

    def upper(self, confidence: float) -> float:
        return self.gain + z_value(confidence) * self.se

    def interval(self, confidence: float) -> tuple[float, float]:
        """The two-sided interval whose lower end is :meth:`lower` at ``confidence``."""
        return self.lower(confidence), self.upper(confidence)


def z_value(confidence: float) -> float:
    """The one-sided standard normal quantile (0.95 -> 1.645)."""
    from scipy.stats import norm

    if not 0.5 <= confidence < 1:
        raise ValueError(f"confidence {confidence} must lie in [0.5, 1)")
    return float(norm.ppf(confidence))


def sign(spec: ModelSpec) -> float:
    return 1.0 if spec.promotion.greater_is_better else -1.0


# --- per-row losses -----------------------------------------------------------------------


def _truth(spec: ModelSpec, y: pd.Series) -> np.ndarray:
    """True where the row's label is the spec's positive class (``labels[-1]``)."""
    positive = spec.labels[-1] if spec.labels else None
    return np.asarray([str(v) for v in y]) == str(positive)


def per_row(spec: ModelSpec, y: pd.Series, pred: Predictions) -> np.ndarray | None:
    """The per-row quantity whose mean is the metric, or None if the metric is not one."""
    metric = spec.promotion.metric
    if metric == "accuracy":
        return (np.asarray([str(v) for v in y]) == pred.label_strings()).astype(float)
    if metric == "mae":
        return np.abs(np.asarray(y, dtype=float) - np.asarray(pred.value, dtype=float))
    if metric == "log_loss":
        p = np.clip(np.asarray(pred.probability, dtype=float), 1e-15, 1 - 1e-15)
        truth = _truth(spec, y)
        return -(truth * np.log(p) + (~truth) * np.log1p(-p))
    return None


def _mean_se(values: np.ndarray) -> float:
    n = len(values)
    return float(np.std(values, ddof=1) / math.sqrt(n)) if n > 1 else math.inf


# --- DeLong ----------------------------------------------------------------------------


def delong(truth: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs of ``scores`` (models x rows) and their covariance matrix (DeLong, fast form).

    Needs both classes among the rows; ties count one half, as in ``roc_auc_score``.
    """
    from scipy.stats import rankdata

    truth = np.asarray(truth, dtype=bool)
    scores = np.atleast_2d(np.asarray(scores, dtype=float))
    pos, neg = scores[:, truth], scores[:, ~truth]
    m, n = pos.shape[1], neg.shape[1]
    if m == 0 or n == 0:
        raise ValueError("DeLong needs rows of both classes")
    together = np.concatenate([pos, neg], axis=1)
    tx = rankdata(pos, axis=1)
    ty = rankdata(neg, axis=1)
    tz = rankdata(together, axis=1)
    aucs = (tz[:, :m].sum(axis=1) / m - (m + 1) / 2) / n
    v01 = (tz[:, :m] - tx) / n  # per positive row: share of negatives ranked below it
    v10 = 1.0 - (tz[:, m:] - ty) / m  # per negative row: share of positives above it
    sx = np.atleast_2d(np.cov(v01)) if m > 1 else np.zeros((len(scores), len(scores)))
    sy = np.atleast_2d(np.cov(v10)) if n > 1 else np.zeros((len(scores), len(scores)))
    return aucs, sx / m + sy / n


# --- bootstrap -------------------------------------------------------------------------


def _take(pred: Predictions, idx: np.ndarray) -> Predictions:
    def pick(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else np.asarray(a)[idx]

    return Predictions(value=pick(pred.value), probability=pick(pred.probability),
                       label=pick(pred.label))  # fmt: skip


def _metric(spec: ModelSpec, y: pd.Series, pred: Predictions) -> float:
    return training.prediction_scores(spec, y, **pred.as_kwargs())[spec.promotion.metric]


def _bootstrap(spec: ModelSpec, y: pd.Series, preds: list[Predictions], seed: int) -> np.ndarray:
    """Metric of each prediction set on the same resampled rows (resamples x models)."""
    rng = np.random.default_rng(seed)
    y = y.reset_index(drop=True)
    out = np.empty((BOOTSTRAP_RESAMPLES, len(preds)))
    for i in range(BOOTSTRAP_RESAMPLES):
        idx = rng.integers(0, len(y), len(y))
        for j, pred in enumerate(preds):
            out[i, j] = _metric(spec, y.iloc[idx], _take(pred, idx))
    return out


# --- the two questions -------------------------------------------------------------------


def estimate(
    spec: ModelSpec, y: pd.Series, pred: Predictions, seed: int = BOOTSTRAP_SEED
) -> Estimate:
    """One model's metric on ``y`` and its standard error."""
    metric = spec.promotion.metric
    value = _metric(spec, y, pred)
    rows = len(y)
    if metric == "roc_auc":
        truth = _truth(spec, y)
        if truth.all() or not truth.any():
            return Estimate(metric, value, math.inf, rows, "DeLong (one class only)")
        _, cov = delong(truth, pred.probability)
        return Estimate(metric, value, float(math.sqrt(max(cov[0, 0], 0.0))), rows, "DeLong")
    losses = per_row(spec, y, pred)
    if losses is not None:
        return Estimate(metric, value, _mean_se(losses), rows, "standard error of the mean")
    draws = _bootstrap(spec, y, [pred], seed)[:, 0]
    return Estimate(metric, value, float(np.nanstd(draws, ddof=1)), rows, "bootstrap")


def compare(
    spec: ModelSpec,
    y: pd.Series,
    a: Predictions,
    b: Predictions,
    seed: int = BOOTSTRAP_SEED,
) -> Comparison:
    """A's gain over B on the same rows ``y``, with its paired standard error."""
    metric = spec.promotion.metric
    s = sign(spec)
    gain = s * (_metric(spec, y, a) - _metric(spec, y, b))
    rows = len(y)
    if metric == "roc_auc":
        truth = _truth(spec, y)
        if truth.all() or not truth.any():
            return Comparison(metric, math.nan, math.inf, rows, "DeLong (one class only)")
        _, cov = delong(truth, np.vstack([a.probability, b.probability]))
        var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
        return Comparison(metric, gain, float(math.sqrt(max(var, 0.0))), rows, "paired DeLong")
    la, lb = per_row(spec, y, a), per_row(spec, y, b)
    if la is not None and lb is not None:
        method = "McNemar (normal form)" if metric == "accuracy" else "paired per-row losses"
        return Comparison(metric, gain, _mean_se(la - lb), rows, method)
    draws = _bootstrap(spec, y, [a, b], seed)
    diffs = s * (draws[:, 0] - draws[:, 1])
    return Comparison(metric, gain, float(np.nanstd(diffs, ddof=1)), rows, "paired bootstrap")
