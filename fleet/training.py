"""Training logic: windows, training frames, fitting, scoring, baselines, plots.

Pure functions over pandas frames and scikit-learn models; no MLflow here (see
``fleet.registry``). Rows whose target is null are dropped from training *and* from
evaluation: for flights that is every cancelled or diverted flight (they never arrive,
so "arrived late" and "arrival delay" are undefined). They stay in the lake and are
still validated; they are simply not labelled examples.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fleet import etl, lake

if TYPE_CHECKING:
    from fleet.catalog import ModelSpec


@dataclass(frozen=True)
class Window:
    """Half-open date ranges: train ``[start, split)``, holdout ``[split, end)``."""

    start: date
    split: date
    end: date

    @property
    def train_days(self) -> tuple[date, date]:
        """First and last day (inclusive) of the training part, for the lake."""
        return self.start, self.split - timedelta(days=1)

    @property
    def holdout_days(self) -> tuple[date, date]:
        return self.split, self.end - timedelta(days=1)

    @property
    def days(self) -> tuple[date, date]:
        return self.start, self.end - timedelta(days=1)

    def to_tags(self) -> dict[str, str]:
        return {
            "window_start": self.start.isoformat(),
            "window_split": self.split.isoformat(),
            "window_end": self.end.isoformat(),
        }

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> Window:
        return cls(
            start=date.fromisoformat(tags["window_start"]),
            split=date.fromisoformat(tags["window_split"]),
            end=date.fromisoformat(tags["window_end"]),
        )

    def __str__(self) -> str:
        first, last = self.days
        return f"{first}..{last} (holdout from {self.split})"


def training_window(spec: ModelSpec, until: date) -> Window:
    """The window ending (exclusive) at ``until``: the last ``holdout_weeks`` are held out.

    A window reaching before the dataset's ``first_day`` is cut there (the replay's
    bootstrap trains the review model on eight weeks, not its usual 26).
    """
    if spec.holdout_weeks < 1 or spec.train_weeks <= spec.holdout_weeks:
        raise ValueError(
            f"{spec.name}: train_weeks ({spec.train_weeks}) must exceed holdout_weeks "
            f"({spec.holdout_weeks}) >= 1"
        )
    return Window(
        start=etl.window_start(spec.dataset, until - timedelta(weeks=spec.train_weeks)),
        split=until - timedelta(weeks=spec.holdout_weeks),
        end=until,
    )


def window_partitions(lake_dir: Path, spec: ModelSpec, window: Window) -> list[Path]:
    """The existing lake partitions covering the whole window, in date order."""
    return lake.partitions_in(lake_dir, spec.dataset.name, *window.days)


def timestamps(spec: ModelSpec, frame: pd.DataFrame) -> pd.Series:
    """The dataset's timestamp column as naive datetimes, comparable with plain dates."""
    stamp = pd.to_datetime(frame[spec.dataset.timestamp])
    return stamp.dt.tz_localize(None) if stamp.dt.tz is not None else stamp


def split_by_window(
    spec: ModelSpec, frame: pd.DataFrame, window: Window
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a frame into (train, holdout) rows by the dataset's timestamp column."""
    day = timestamps(spec, frame)
    start, split, end = (pd.Timestamp(d) for d in (window.start, window.split, window.end))
    train = frame[(day >= start) & (day < split)]
    hold = frame[(day >= split) & (day < end)]
    return train.reset_index(drop=True), hold.reset_index(drop=True)


def feature_dtypes(spec: ModelSpec) -> dict[str, str]:
    """The pandas dtype of each feature as the model sees it (training and serving)."""
    dtypes = {}
    for col in spec.feature_columns:
        if col.kind == "numeric" or (col.kind == "integer" and col.null_share > 0):
            dtypes[col.name] = "float64"
        elif col.kind == "integer":
            dtypes[col.name] = "int64"
        elif col.kind in ("categorical", "text"):
            dtypes[col.name] = "object"
        else:
            raise ValueError(f"{spec.name}: feature {col.name!r} of kind {col.kind} is not usable")
    return dtypes


def feature_frame(spec: ModelSpec, frame: pd.DataFrame) -> pd.DataFrame:
    """Exactly ``spec.features``, in order, with the dtypes of :func:`feature_dtypes`."""
    missing = [f for f in spec.features if f not in frame.columns]
    if missing:
        raise KeyError(f"{spec.name}: frame lacks feature columns {missing}")
    out = {}
    for name, dtype in feature_dtypes(spec).items():
        col = frame[name]
        if dtype == "object":
            # strings stay strings; pandas NA becomes None so encoders see one missing marker
            col = col.astype(object).where(col.notna(), None)
        else:
            col = col.astype(dtype)
        out[name] = col
    return pd.DataFrame(out, index=frame.index).reset_index(drop=True)


def training_frame(spec: ModelSpec, frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """(X, y) for a spec: rows with a null target are dropped (see module docstring)."""
    if spec.target not in frame.columns:
        raise KeyError(f"{spec.name}: frame lacks target column {spec.target!r}")
    labelled = frame[frame[spec.target].notna()]
    X = feature_frame(spec, labelled)
    y = labelled[spec.target].reset_index(drop=True)
    if spec.task == "regression":
        y = y.astype("float64")
    elif pd.api.types.is_integer_dtype(y.dtype) or pd.api.types.is_bool_dtype(y.dtype):
        y = y.astype("int64")  # nullable Int64 -> plain ints once nulls are gone
    else:
        y = y.astype(object)
    y.name = spec.target
    return X, y


def limit_threads(threads: int) -> Any:
    """Cap OpenMP/BLAS threads in a block.

    Measured on the 2-core target: two processes fitting the booster at once took 3-9 s
    per fit (single-row predictions 20-240 ms) with OpenMP's default of one thread per
    core, as spinning threads fight for the cores; with one thread each, 1.1 s (11 ms).
    Alone, two threads gain only ~0.2 s. Training runs next to other models, servers and
    tests, so one thread is the default.
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=threads)


def fit(spec: ModelSpec, X: pd.DataFrame, y: pd.Series, threads: int = 1) -> Any:
    """A fresh pipeline from the spec's estimator factory, fitted on (X, y)."""
    if len(X) == 0:
        raise ValueError(f"{spec.name}: no labelled rows to train on")
    if spec.task == "classification" and y.nunique() < 2:
        raise ValueError(f"{spec.name}: training labels have a single class {y.unique()!r}")
    empty = [c for c in X.columns if X[c].isna().all()]
    if empty:
        # the booster's binning crashes on an all-null column; the GX gate's null shares
        # keep such a window out of the lake, so this only guards hand-made frames
        raise ValueError(f"{spec.name}: features {empty} have no values in the training rows")
    model = spec.make_estimator()
    with limit_threads(threads):
        model.fit(X, y)
    return model


def positive_index(spec: ModelSpec, model: Any) -> int:
    """Column of ``predict_proba`` holding the spec's positive class (``labels[-1]``)."""
    classes = [str(c) for c in model.classes_]
    positive = spec.labels[-1] if spec.labels else classes[-1]
    if positive not in classes:
        raise ValueError(f"{spec.name}: positive class {positive!r} not among {classes}")
    return classes.index(positive)


def score(
    spec: ModelSpec, model: Any, X: pd.DataFrame, y: pd.Series, threads: int = 1
) -> dict[str, float]:
    """Primary metric (``spec.promotion.metric``) plus a few secondary ones, on (X, y)."""
    if len(y) == 0:
        raise ValueError(f"{spec.name}: nothing to score on (no labelled rows)")
    with limit_threads(threads):
        return _score(spec, model, X, y)


def _score(spec: ModelSpec, model: Any, X: pd.DataFrame, y: pd.Series) -> dict[str, float]:
    return prediction_scores(spec, y, **_predict(spec, model, X).as_kwargs())


@dataclass(frozen=True)
class Predictions:
    """A model's answers on some rows: ``value`` (regression), or the positive class's
    ``probability`` and the predicted ``label`` (classification)."""

    value: np.ndarray | None = None
    probability: np.ndarray | None = None
    label: np.ndarray | None = None

    def as_kwargs(self) -> dict[str, np.ndarray]:
        return {k: v for k, v in vars(self).items() if v is not None}

    def label_strings(self) -> np.ndarray:
        return np.asarray([str(v) for v in np.asarray(self.label)])


def predict(spec: ModelSpec, model: Any, X: pd.DataFrame, threads: int = 1) -> Predictions:
    """The model's :class:`Predictions` on ``X`` (as served: probabilities for classes)."""
    with limit_threads(threads):
        return _predict(spec, model, X)


def _predict(spec: ModelSpec, model: Any, X: pd.DataFrame) -> Predictions:
    if spec.task == "regression":
        return Predictions(value=np.asarray(model.predict(X), dtype=float))
    proba = model.predict_proba(X)
    classes = np.asarray(model.classes_)
    return Predictions(
        probability=np.asarray(proba[:, positive_index(spec, model)], dtype=float),
        label=classes[np.argmax(proba, axis=1)],
    )


def prediction_scores(
    spec: ModelSpec,
    y: pd.Series,
    *,
    value: np.ndarray | None = None,
    probability: np.ndarray | None = None,
    label: np.ndarray | None = None,
) -> dict[str, float]:
    """The metrics of predictions already made: by a model here, or as served and logged.

    Regression takes ``value``; classification the positive class's ``probability``
    (``spec.labels[-1]``) and the predicted ``label``.
    """
    from sklearn import metrics

    if len(y) == 0:
        raise ValueError(f"{spec.name}: nothing to score on (no labelled rows)")
    out: dict[str, float] = {"rows": float(len(y))}
    if spec.task == "regression":
        pred = np.asarray(value, dtype=float)
        out["mae"] = metrics.mean_absolute_error(y, pred)
        out["rmse"] = float(np.sqrt(metrics.mean_squared_error(y, pred)))
        out["median_ae"] = metrics.median_absolute_error(y, pred)
        out["r2"] = metrics.r2_score(y, pred) if len(y) > 1 else float("nan")
    else:
        positive = spec.labels[-1] if spec.labels else None
        pos_proba = np.asarray(probability, dtype=float)
        pred = np.asarray([str(v) for v in np.asarray(label)])
        truth = np.asarray([str(v) for v in y]) == str(positive)
        out["accuracy"] = metrics.accuracy_score(np.asarray([str(v) for v in y]), pred)
        # one class only in the holdout: AUC is undefined, say so with NaN
        out["roc_auc"] = (
            metrics.roc_auc_score(truth, pos_proba)
            if truth.any() and not truth.all()
            else float("nan")
        )
        out["log_loss"] = metrics.log_loss(truth, pos_proba, labels=[False, True])
        out["f1"] = metrics.f1_score(truth, pred == str(positive))
        out["positive_rate"] = float(truth.mean())
    metric = spec.promotion.metric
    if metric not in out:
        raise KeyError(f"{spec.name}: unknown promotion metric {metric!r}")
    return {k: float(v) for k, v in out.items()}


def baseline_model(spec: ModelSpec, y_train: pd.Series) -> Any:
    """A trivial model: class prior (classification) or median (regression) of y_train."""
    from sklearn.dummy import DummyClassifier, DummyRegressor

    dummy = (
        DummyRegressor(strategy="median")
        if spec.task == "regression"
        else DummyClassifier(strategy="prior")  # predicts the majority class, prior probas
    )
    # dummies ignore the features; a one-column placeholder keeps the interface
    return dummy.fit(np.zeros((len(y_train), 1)), y_train)


def baseline_score(
    spec: ModelSpec, y_train: pd.Series, X_hold: pd.DataFrame, y_hold: pd.Series
) -> dict[str, float]:
    """Scores of the trivial baseline fitted on y_train, on the holdout."""
    dummy = baseline_model(spec, y_train)
    return score(spec, dummy, np.zeros((len(X_hold), 1)), y_hold)


def is_better(spec: ModelSpec, candidate: float, reference: float) -> bool:
    """True when ``candidate`` beats ``reference`` by at least the spec's margin."""
    if np.isnan(candidate):
        return False
    if np.isnan(reference):
        return True
    gain = candidate - reference if spec.promotion.greater_is_better else reference - candidate
    # a hair of tolerance so "exactly the margin" is not lost to float rounding
    return bool(gain >= spec.promotion.margin - 1e-12)


def evaluation_plot(spec: ModelSpec, model: Any, X: pd.DataFrame, y: pd.Series, path: Path) -> Path:
    """ROC curve (binary), confusion matrix (multi-class) or residual plot (regression)."""
    # the object-oriented API with an explicit Agg canvas: no pyplot, no global backend
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    with limit_threads(1):
        _draw(spec, model, X, y, ax)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _draw(spec: ModelSpec, model: Any, X: pd.DataFrame, y: pd.Series, ax: Any) -> None:
    from sklearn import metrics

    if spec.task == "regression":
        pred = np.asarray(model.predict(X), dtype=float)
        resid = np.asarray(y, dtype=float) - pred
        ax.scatter(pred, resid, s=4, alpha=0.3)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xlabel(f"predicted {spec.target}")
        ax.set_ylabel("residual (actual - predicted)")
        ax.set_title(f"{spec.name}: residuals, MAE {metrics.mean_absolute_error(y, pred):.2f}")
    elif len(model.classes_) == 2:
        pos = positive_index(spec, model)
        truth = np.asarray([str(v) for v in y]) == str(model.classes_[pos])
        metrics.RocCurveDisplay.from_predictions(
            truth, model.predict_proba(X)[:, pos], ax=ax, name=spec.name
        )
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
        ax.set_title(f"{spec.name}: ROC on holdout ({len(y)} rows)")
    else:
        metrics.ConfusionMatrixDisplay.from_predictions(
            y.astype(str), pd.Series(model.predict(X)).astype(str), ax=ax, colorbar=False
        )
        ax.set_title(f"{spec.name}: confusion matrix on holdout")
