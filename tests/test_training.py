"""Pure training logic on small real slices (no MLflow)."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
from sklearn.dummy import DummyClassifier, DummyRegressor
from sklearn.metrics import roc_auc_score

from fleet import training
from fleet.catalog import get_model
from fleet.training import Window

FLIGHT_UNTIL = date(2013, 3, 1)


def small(name: str, weeks: int = 3):
    """The catalog spec with a shorter window: same features, estimator and metric."""
    return get_model(name).model_copy(update=dict(train_weeks=weeks, holdout_weeks=1))


def window_data(spec, table: pd.DataFrame, until: date):
    window = training.training_window(spec, until)
    train, hold = training.split_by_window(spec, table, window)
    X, y = training.training_frame(spec, train)
    X_hold, y_hold = training.training_frame(spec, hold)
    return window, X, y, X_hold, y_hold


def test_training_window_is_half_open_and_ends_at_until() -> None:
    spec = get_model("flight_delay")
    until = date(2013, 6, 3)  # late enough that the window is not cut at the first day
    w = training.training_window(spec, until)
    assert w.end == until
    assert w.end - w.start == timedelta(weeks=spec.train_weeks)
    assert w.end - w.split == timedelta(weeks=spec.holdout_weeks)
    assert w.train_days == (w.start, w.split - timedelta(days=1))
    assert w.holdout_days == (w.split, until - timedelta(days=1))
    assert Window.from_tags(w.to_tags()) == w

    reviews = get_model("review_sentiment")
    rw = training.training_window(reviews, date(2013, 7, 8))
    assert (rw.split - rw.start).days == 7 * (reviews.train_weeks - reviews.holdout_weeks)
    # the data begin on 2013-01-01: an earlier start is cut there, the holdout is kept
    early = training.training_window(reviews, date(2013, 2, 26))
    assert early.start == date(2013, 1, 1)
    assert early.end - early.split == timedelta(weeks=reviews.holdout_weeks)


def test_training_window_rejects_a_holdout_as_long_as_the_window() -> None:
    spec = get_model("flight_delay").model_copy(update=dict(train_weeks=1, holdout_weeks=1))
    with pytest.raises(ValueError, match="must exceed"):
        training.training_window(spec, FLIGHT_UNTIL)


def test_split_by_window_partitions_rows_by_timestamp(flights_q1: pd.DataFrame) -> None:
    spec = get_model("flight_delay")
    w = training.training_window(spec, FLIGHT_UNTIL)
    train, hold = training.split_by_window(spec, flights_q1, w)
    ts_train, ts_hold = train["scheduled_departure"], hold["scheduled_departure"]
    assert ts_train.min() >= pd.Timestamp(w.start)
    assert ts_train.max() < pd.Timestamp(w.split) <= ts_hold.min()
    assert ts_hold.max() < pd.Timestamp(w.end)
    stamp = flights_q1["scheduled_departure"]
    inside = (stamp >= pd.Timestamp(w.start)) & (stamp < pd.Timestamp(w.end))
    assert len(train) + len(hold) == int(inside.sum())
    assert not set(train["flight_id"]) & set(hold["flight_id"])


def test_training_frame_drops_unlabelled_flights_and_selects_features(
    flights_q1: pd.DataFrame,
) -> None:
    spec = get_model("flight_delay")
    X, y = training.training_frame(spec, flights_q1)
    # cancelled and diverted flights have no label: excluded, and nothing else is
    labelled = flights_q1["late"].notna()
    assert len(X) == len(y) == int(labelled.sum())
    assert set(flights_q1.loc[~labelled, "status"]) == {"cancelled", "diverted"}
    assert (flights_q1.loc[labelled, "status"] == "arrived").all()
    assert list(X.columns) == list(spec.features)
    assert {c: str(t) for c, t in X.dtypes.items()} == training.feature_dtypes(spec)
    assert y.dtype == np.int64 and set(y.unique()) == {0, 1}

    reg = get_model("arrival_delay")
    Xr, yr = training.training_frame(reg, flights_q1)
    assert len(Xr) == len(X) and yr.dtype == np.float64
    assert np.allclose(yr.to_numpy(), flights_q1.loc[labelled, "arr_delay"].to_numpy())


def test_training_frame_keeps_text_labels(reviews_table: pd.DataFrame) -> None:
    spec = get_model("review_sentiment")
    X, y = training.training_frame(spec, reviews_table)
    assert list(X.columns) == ["review"] and len(X) == len(reviews_table)
    assert set(y) == set(spec.labels)


def test_training_frame_names_a_missing_feature(flights_q1: pd.DataFrame) -> None:
    spec = get_model("flight_delay")
    with pytest.raises(KeyError, match="dest"):
        training.training_frame(spec, flights_q1.drop(columns="dest"))


@pytest.mark.parametrize(
    ("name", "task", "until"),
    [
        ("flight_delay", "classification", FLIGHT_UNTIL),
        ("arrival_delay", "regression", FLIGHT_UNTIL),
    ],
)
def test_tabular_model_beats_its_baseline_on_a_real_window(
    name: str, task: str, until: date, flights_q1: pd.DataFrame
) -> None:
    spec = small(name)
    _, X, y, X_hold, y_hold = window_data(spec, flights_q1, until)
    model = training.fit(spec, X, y)
    got = training.score(spec, model, X_hold, y_hold)
    base = training.baseline_score(spec, y, X_hold, y_hold)
    metric = spec.promotion.metric
    assert spec.task == task and got["rows"] == len(y_hold)
    assert training.is_better(spec, got[metric], base[metric]), (got, base)


def test_text_model_beats_majority_and_ranks_the_positive_class(
    reviews_table: pd.DataFrame,
) -> None:
    spec = get_model("review_sentiment")
    _, X, y, X_hold, y_hold = window_data(spec, reviews_table, date(2013, 7, 1))
    model = training.fit(spec, X, y)
    got = training.score(spec, model, X_hold, y_hold)
    base = training.baseline_score(spec, y, X_hold, y_hold)
    assert training.is_better(spec, got["accuracy"], base["accuracy"]), (got, base)
    # the positive class is labels[-1] ("great"), not sklearn's sorted last class: if the
    # wrong predict_proba column were used, the AUC would fall below 0.5
    assert got["roc_auc"] > 0.75
    positive = model.predict_proba(X_hold)[:, training.positive_index(spec, model)]
    assert got["roc_auc"] == pytest.approx(roc_auc_score(y_hold == "great", positive))


def test_tabular_model_serves_unseen_and_missing_categories(flights_q1: pd.DataFrame) -> None:
    spec = small("flight_delay", weeks=2)
    _, X, y, X_hold, _ = window_data(spec, flights_q1, FLIGHT_UNTIL)
    model = training.fit(spec, X, y)
    odd = X_hold.head(3).copy()
    odd.loc[0, "carrier"] = "ZZ"  # a carrier the catalog has never heard of
    odd.loc[1, "dest"] = "XXX"
    odd.loc[2, ["origin", "temp", "pressure"]] = [None, np.nan, np.nan]
    proba = model.predict_proba(odd)
    assert proba.shape == (3, 2)
    assert np.isfinite(proba).all() and np.allclose(proba.sum(axis=1), 1)


def test_score_matches_independent_computation(flights_q1: pd.DataFrame) -> None:
    cls, reg = small("flight_delay"), small("arrival_delay")
    X, y = training.training_frame(cls, flights_q1.head(5000))
    constant = DummyClassifier(strategy="most_frequent").fit(X, y)
    got = training.score(cls, constant, X, y)
    assert got["roc_auc"] == pytest.approx(0.5)
    assert got["accuracy"] == pytest.approx(max(y.mean(), 1 - y.mean()))

    Xr, yr = training.training_frame(reg, flights_q1.head(5000))
    shift = DummyRegressor(strategy="constant", constant=7.0).fit(Xr, yr)
    got = training.score(reg, shift, Xr, yr)
    assert got["mae"] == pytest.approx(np.abs(yr - 7.0).mean())
    assert got["rmse"] == pytest.approx(np.sqrt(((yr - 7.0) ** 2).mean()))


def test_baseline_is_the_training_prior_or_median(flights_q1: pd.DataFrame) -> None:
    spec = small("arrival_delay")
    _, _, y, X_hold, y_hold = window_data(spec, flights_q1, FLIGHT_UNTIL)
    base = training.baseline_score(spec, y, X_hold, y_hold)
    assert base["mae"] == pytest.approx(np.abs(y_hold - y.median()).mean())

    cls = small("flight_delay")
    _, _, y, X_hold, y_hold = window_data(cls, flights_q1, FLIGHT_UNTIL)
    base = training.baseline_score(cls, y, X_hold, y_hold)
    majority = int(y.mean() > 0.5)
    assert base["roc_auc"] == pytest.approx(0.5)
    assert base["accuracy"] == pytest.approx((y_hold == majority).mean())


def test_is_better_respects_direction_and_margin() -> None:
    auc, mae = get_model("flight_delay"), get_model("arrival_delay")
    m_auc, m_mae = auc.promotion.margin, mae.promotion.margin
    assert training.is_better(auc, 0.70 + m_auc, 0.70)
    assert not training.is_better(auc, 0.70 + m_auc / 2, 0.70)
    assert not training.is_better(auc, 0.69, 0.70)
    assert training.is_better(mae, 20.0 - m_mae, 20.0)
    assert not training.is_better(mae, 20.0 - m_mae / 2, 20.0)
    assert not training.is_better(mae, 21.0, 20.0)
    assert not training.is_better(auc, float("nan"), 0.5)


@pytest.mark.parametrize("name", ["flight_delay", "arrival_delay"])
def test_evaluation_plot_writes_a_png_without_touching_global_state(
    name: str, flights_q1: pd.DataFrame, tmp_path: Path
) -> None:
    spec = small(name, weeks=2)
    _, X, y, X_hold, y_hold = window_data(spec, flights_q1, FLIGHT_UNTIL)
    model = training.fit(spec, X, y)
    backend = matplotlib.get_backend()
    path = training.evaluation_plot(spec, model, X_hold, y_hold, tmp_path / "plots" / "eval.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000  # a drawn figure, not an empty canvas
    assert matplotlib.get_backend() == backend


def test_same_rows_in_another_order_give_the_same_model(flights_q1: pd.DataFrame) -> None:
    # the gate compares scores to a margin of 0.005: retraining on the same data must not
    # move them by chance
    spec = small("flight_delay", weeks=2)
    _, X, y, X_hold, y_hold = window_data(spec, flights_q1, FLIGHT_UNTIL)
    order = np.random.default_rng(3).permutation(len(X))
    a = training.fit(spec, X, y)
    b = training.fit(spec, X.iloc[order], y.iloc[order])
    assert training.score(spec, a, X_hold, y_hold)["roc_auc"] == pytest.approx(
        training.score(spec, b, X_hold, y_hold)["roc_auc"], abs=1e-9
    )


def test_fit_names_a_feature_without_any_value(flights_q1: pd.DataFrame) -> None:
    spec = small("flight_delay", weeks=2)
    X, y = training.training_frame(spec, flights_q1.head(500))
    with pytest.raises(ValueError, match="pressure"):
        training.fit(spec, X.assign(pressure=np.nan), y)
