"""Confidence-based performance estimation (CBPE): a classifier's quality without labels.

The method NannyML publishes: if the served probabilities are calibrated, each row's
label is a coin with that probability, so the expected confusion matrix at every
threshold, and from it accuracy or ROC AUC, follow from the probabilities alone. It holds
under covariate shift (the inputs move, the relation of label to inputs does not) and
fails under concept shift, which only labels can show; the fleet uses it where labels
lag, never instead of them.

Calibration is checked first, on the champion's own holdout (rows with labels it never
trained on): when the expected calibration error there is above ``CALIBRATION_LIMIT``,
the probabilities are recalibrated with isotonic regression fitted on that holdout, as
NannyML does on its reference period.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CALIBRATION_LIMIT = 0.02  # expected calibration error above which probabilities are remapped
BINS = 10


@dataclass(frozen=True)
class PerformanceEstimate:
    metric: str
    value: float
    se: float
    rows: int
    calibration_error: float  # on the reference holdout, before any recalibration
    recalibrated: bool

    def text(self) -> str:
        how = "recalibrated (isotonic)" if self.recalibrated else "calibrated as served"
        return (
            f"CBPE {self.metric} {self.value:.4f} ± {self.se:.4f} (SE) on {self.rows} rows; "
            f"probabilities {how}, calibration error {self.calibration_error:.3f} on the "
            "champion's holdout"
        )


def calibration_error(probability: np.ndarray, truth: np.ndarray, bins: int = BINS) -> float:
    """Expected calibration error: mean |observed rate - mean probability| over equal-width
    bins, weighted by their rows."""
    p = np.asarray(probability, dtype=float)
    t = np.asarray(truth, dtype=float)
    which = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.sum() * abs(t[mask].mean() - p[mask].mean())
    return float(total / len(p))


def expected_auc(served: np.ndarray, chance: np.ndarray) -> tuple[float, float]:
    """ROC AUC expected of the ranking by ``served`` scores when each row is positive with
    probability ``chance`` (the calibrated probability), and its Hanley-McNeil error.

    Down the ranking each row adds ``chance`` expected positives and ``1 - chance``
    expected negatives; the expected ROC curve joins their cumulative shares. Ties in
    the served scores are not split (their order is kept), a negligible difference on
    continuous probabilities.
    """
    ranked = np.asarray(chance, dtype=float)[np.argsort(-np.asarray(served), kind="stable")]
    tp = np.concatenate([[0.0], np.cumsum(ranked)])
    fp = np.concatenate([[0.0], np.cumsum(1.0 - ranked)])
    positives, negatives = tp[-1], fp[-1]
    if positives <= 1 or negatives <= 1:
        return math.nan, math.inf
    tpr, fpr = tp / positives, fp / negatives
    auc = float(np.sum((fpr[1:] - fpr[:-1]) * (tpr[1:] + tpr[:-1]) / 2))
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    var = (auc * (1 - auc) + (positives - 1) * (q1 - auc**2) + (negatives - 1) * (q2 - auc**2)) / (
        positives * negatives
    )
    return auc, float(math.sqrt(max(var, 0.0)))


def estimate(
    metric: str,
    reference_probability: np.ndarray,
    reference_truth: np.ndarray,
    current_probability: np.ndarray,
) -> PerformanceEstimate | None:
    """The metric expected on the current rows (``roc_auc`` or ``accuracy``), or None for
    a metric CBPE does not estimate here or too few reference rows."""
    ref_p = np.asarray(reference_probability, dtype=float)
    ref_t = np.asarray(reference_truth, dtype=bool)
    served = np.asarray(current_probability, dtype=float)
    if metric not in ("roc_auc", "accuracy") or len(ref_p) < 50 or len(served) == 0:
        return None
    error = calibration_error(ref_p, ref_t)
    recalibrate = error > CALIBRATION_LIMIT
    chance = served
    if recalibrate:
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
        chance = iso.fit(ref_p, ref_t.astype(float)).predict(served)
    if metric == "roc_auc":
        value, se = expected_auc(served, chance)
    else:
        # the served label is the class above 0.5: right with the chance of that class
        right = np.where(served >= 0.5, chance, 1.0 - chance)
        value = float(right.mean())
        se = float(math.sqrt(np.sum(right * (1 - right))) / len(served))
    return PerformanceEstimate(metric, value, se, len(served), round(error, 4), recalibrate)
