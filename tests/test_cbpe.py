"""CBPE, the label-free estimate, checked against the labels of real weeks."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, roc_auc_score

from fleet import training
from fleet.catalog import get_model
from monitoring import cbpe

SPEC = get_model("flight_delay")


def _rows(frame: pd.DataFrame, first: date, after: date) -> pd.DataFrame:
    day = training.timestamps(SPEC, frame)
    return frame[(day >= pd.Timestamp(first)) & (day < pd.Timestamp(after))]


def _probability_and_truth(model, rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    X, y = training.training_frame(SPEC, rows)
    return training.predict(SPEC, model, X).probability, np.asarray([str(v) for v in y]) == "1"


def test_cbpe_tracks_the_labelled_weeks(flights_q1) -> None:
    """A champion of January to mid-February, calibrated on its holdout week; each later
    fortnight of real flights (a 600-row sample, as the replay's monitors see) gets an
    estimate within three of its standard errors of the AUC and accuracy the labels give."""
    X, y = training.training_frame(SPEC, _rows(flights_q1, date(2013, 1, 1), date(2013, 2, 11)))
    model = training.fit(SPEC, X, y, threads=2)
    ref_p, ref_t = _probability_and_truth(
        model, _rows(flights_q1, date(2013, 2, 11), date(2013, 2, 18))
    )
    first = date(2013, 2, 18)
    errors = []
    while first + timedelta(days=14) <= date(2013, 4, 1):
        p, t = _probability_and_truth(model, _rows(flights_q1, first, first + timedelta(days=14)))
        pick = np.random.default_rng(0).choice(len(p), 600, replace=False)
        p, t = p[pick], t[pick]
        auc = cbpe.estimate("roc_auc", ref_p, ref_t, p)
        assert abs(auc.value - roc_auc_score(t, p)) <= 3 * auc.se, (first, auc, roc_auc_score(t, p))
        acc = cbpe.estimate("accuracy", ref_p, ref_t, p)
        real = accuracy_score(t, p >= 0.5)
        assert abs(acc.value - real) <= 3 * acc.se, (first, acc, real)
        errors.append(auc.value - roc_auc_score(t, p))
        first += timedelta(days=14)
    assert len(errors) == 3
    assert "CBPE roc_auc" in auc.text()


def test_miscalibrated_probabilities_are_recalibrated_first() -> None:
    rng = np.random.default_rng(1)
    chance = rng.uniform(0.05, 0.95, 20_000)
    truth = rng.random(20_000) < chance
    squashed = chance**3  # same ranking, far too low
    assert cbpe.calibration_error(chance, truth) < 0.02 < cbpe.calibration_error(squashed, truth)
    served = rng.uniform(0.05, 0.95, 5_000)
    real = rng.random(5_000) < served
    squashed_served = served**3
    fixed = cbpe.estimate("accuracy", squashed[:10_000], truth[:10_000], squashed_served)
    assert fixed.recalibrated
    real_accuracy = accuracy_score(real, squashed_served >= 0.5)
    assert abs(fixed.value - real_accuracy) <= 3 * fixed.se
    # taken at face value, the squashed probabilities would have been far off
    naive = np.where(squashed_served >= 0.5, squashed_served, 1 - squashed_served).mean()
    assert abs(naive - real_accuracy) > 0.05
    auc = cbpe.estimate("roc_auc", squashed[:10_000], truth[:10_000], squashed_served)
    # recalibrated, the expectation is the one the true chances give (isotonic steps
    # cost a little); the squashed chances themselves would expect another AUC
    truthful = cbpe.expected_auc(served, served)[0]
    assert abs(auc.value - truthful) < 0.01
    assert abs(cbpe.expected_auc(squashed_served, squashed_served)[0] - truthful) > 0.02
