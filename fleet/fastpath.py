"""The single-record path: the fitted model's answers without the per-call overhead.

A served model answers one record at a time. Through the scikit-learn pipeline that
costs a pandas frame of one row, our encoder, and HistGradientBoosting's own input
checks and categorical re-encoding (a ColumnTransformer inside ``predict_proba``),
about 4 ms on this machine for 100 trees that take 0.1 ms to walk. Three ways to answer:

- ``pipeline``: ``serving.to_frame`` + ``serving.predict`` (every model; the reference);
- ``numpy``: the record encoded straight into a float row (no frame), then the same
  fitted booster (its input checks and re-encoding remain);
- ``treelite``: the booster's trees imported into Treelite (``treelite.sklearn``) and
  walked by its GTIL interpreter, from the same encoded row (a category the booster
  never saw in training made missing first, as scikit-learn does).

:func:`predictor` builds the fastest that applies and **checks it** on rows given to it
(the model's input example when served, a real held-out week in the tests): a path
whose answers differ from the pipeline's by more than ``TOLERANCE`` is not used.
Pipelines other than encoder + booster (the text model) answer through the pipeline.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd

from fleet import serving, training
from fleet.catalog import ModelSpec

logger = logging.getLogger("fleet.fastpath")

Path = Literal["pipeline", "numpy", "treelite"]
PATHS: tuple[Path, ...] = ("pipeline", "numpy", "treelite")
# probability or value, absolute: the trees' leaf sums in another order differ by ~1e-14
TOLERANCE = 1e-9


class Predictor(Protocol):
    path: Path

    def predict_records(self, records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]: ...


class PipelinePredictor:
    """The reference: a typed frame through the whole pipeline."""

    path: Path = "pipeline"

    def __init__(self, spec: ModelSpec, model: Any) -> None:
        self.spec, self.model = spec, model

    def predict_records(self, records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        return serving.predict(self.spec, self.model, serving.to_frame(self.spec, records))


def _booster_parts(model: Any) -> tuple[Any, Any] | None:
    """(encoder, booster) of a tabular pipeline, or None for any other model."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    steps = getattr(model, "named_steps", {})
    encoder, booster = steps.get("columns"), steps.get("model")
    tabular = hasattr(encoder, "codes_") and hasattr(encoder, "numeric")
    boosted = isinstance(booster, HistGradientBoostingClassifier | HistGradientBoostingRegressor)
    return (encoder, booster) if tabular and boosted and len(steps) == 2 else None


def encode(encoder: Any, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """What the pipeline's encoder makes of these records, without a frame: category
    codes first (unknown or missing: NaN), then the numbers (None: NaN)."""
    codes = list(encoder.codes_.items())
    numeric = list(encoder.numeric)
    out = np.empty((len(records), len(codes) + len(numeric)), dtype=np.float64)
    nan = np.nan
    for i, record in enumerate(records):
        row = out[i]
        for j, (name, table) in enumerate(codes):
            row[j] = table.get(record.get(name), nan)
        for k, name in enumerate(numeric, start=len(codes)):
            value = record.get(name)
            row[k] = nan if value is None else value
    return out


class _Encoded:
    """Shared by the two encoded paths: answers from the positive class's probability."""

    path: Path

    def __init__(self, spec: ModelSpec, model: Any, encoder: Any, booster: Any) -> None:
        self.spec, self.encoder, self.booster = spec, encoder, booster
        self.classes = [str(c) for c in getattr(booster, "classes_", [])]
        self.positive = training.positive_index(spec, model) if self.classes else 0

    def scores(self, X: np.ndarray) -> np.ndarray:
        """P(classes_[1]) for a classifier, the value for a regressor; one per row."""
        raise NotImplementedError

    def predict_records(self, records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        if not records:
            return []
        scores = self.scores(encode(self.encoder, records))
        if self.spec.task == "regression":
            return [{"value": float(v)} for v in scores]
        low, high = self.classes
        answers = []
        for p1 in scores.tolist():
            # as predict_proba's argmax: a tie goes to the first class
            label = high if p1 > 1.0 - p1 else low
            answers.append({"label": label, "probability": p1 if self.positive else 1.0 - p1})
        return answers


class NumpyPredictor(_Encoded):
    """The encoded row through the same fitted booster (no pandas frame)."""

    path: Path = "numpy"

    def scores(self, X: np.ndarray) -> np.ndarray:
        import sklearn

        with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
            if self.spec.task == "regression":
                return np.asarray(self.booster.predict(X), dtype=float)
            return np.asarray(self.booster.predict_proba(X), dtype=float)[:, 1]


class TreelitePredictor(_Encoded):
    """The booster's trees in Treelite, walked by GTIL on one thread."""

    path: Path = "treelite"

    def __init__(self, spec: ModelSpec, model: Any, encoder: Any, booster: Any) -> None:
        super().__init__(spec, model, encoder, booster)
        import treelite.sklearn

        self.trees = treelite.sklearn.import_model(booster)
        # A category the booster never saw in training is "missing" to scikit-learn (its
        # internal OrdinalEncoder, fitted on the training codes, makes it NaN), while
        # Treelite routes it by the split's category set: such codes are made NaN first.
        self.known: list[tuple[int, np.ndarray]] = []
        internal = getattr(booster, "_preprocessor", None)
        if internal is not None:
            seen = internal.named_transformers_["encoder"].categories_
            columns = np.flatnonzero(booster.is_categorical_)
            self.known = [
                (int(j), np.asarray(cats, dtype=np.float64))
                for j, cats in zip(columns, seen, strict=True)
            ]

    def scores(self, X: np.ndarray) -> np.ndarray:
        import treelite.gtil

        for j, known in self.known:
            column = X[:, j]
            column[~np.isin(column, known)] = np.nan
        # GTIL answers P(classes_[1]) for a binary booster (the sigmoid applied)
        return np.asarray(treelite.gtil.predict(self.trees, X, nthread=1)).reshape(len(X))


def build(spec: ModelSpec, model: Any, path: Path) -> Predictor:
    """One path, unchecked; ValueError when it does not apply to this model."""
    if path == "pipeline":
        return PipelinePredictor(spec, model)
    parts = _booster_parts(model)
    if parts is None:
        raise ValueError(f"{spec.name}: the {path} path needs an encoder + booster pipeline")
    cls = NumpyPredictor if path == "numpy" else TreelitePredictor
    return cls(spec, model, *parts)


def difference(
    spec: ModelSpec, reference: Predictor, other: Predictor, records: Sequence[Mapping[str, Any]]
) -> float:
    """The largest gap between two paths' answers on ``records`` (inf: a label differs)."""
    key = "value" if spec.task == "regression" else "probability"
    gap = 0.0
    for want, got in zip(
        reference.predict_records(records), other.predict_records(records), strict=True
    ):
        if want.get("label") != got.get("label"):
            return float("inf")
        gap = max(gap, abs(want[key] - got[key]))
    return gap


def for_setting(spec: ModelSpec, model: Any, setting: str, check: pd.DataFrame | None) -> Predictor:
    """The predictor ``Settings.predict_path`` asks for: ``auto`` (the fastest that
    passes its check), or one path (the pipeline where it does not apply)."""
    if setting == "pipeline":
        return PipelinePredictor(spec, model)
    auto: tuple[Path, ...] = ("treelite", "numpy")
    prefer = auto if setting == "auto" else (setting,)
    return predictor(spec, model, check, prefer)


def predictor(
    spec: ModelSpec,
    model: Any,
    check: Sequence[Mapping[str, Any]] | pd.DataFrame | None = None,
    prefer: Sequence[Path] = ("treelite", "numpy"),
) -> Predictor:
    """The fastest path of ``prefer`` that applies and answers as the pipeline does on
    ``check`` (request records, or lake rows of the spec's features); else the pipeline."""
    reference = PipelinePredictor(spec, model)
    if isinstance(check, pd.DataFrame):
        check = serving.json_records(spec, check)
    for path in prefer:
        try:
            fast = build(spec, model, path)
            if check:
                gap = difference(spec, reference, fast, check)
                if not gap <= TOLERANCE:
                    why = "%s: the %s path differs from the pipeline by %s on %d records; not used"
                    logger.warning(why, spec.name, path, gap, len(check))
                    continue
            return fast
        except ValueError:
            continue
        except Exception as exc:  # a runtime that cannot take this model: the pipeline
            logger.warning("%s: the %s path failed (%s); not used", spec.name, path, exc)
    return reference
