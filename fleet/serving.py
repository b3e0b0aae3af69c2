"""Serving core: request models from the catalog, request -> frame, model -> answers.

No BentoML here: the model services (``bentos/``) and the gateway wrap these functions.
The request model is generated from the same catalog columns that drive the GX suites
and training, so a value the lake would quarantine is refused at the door too.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from functools import cache
from typing import TYPE_CHECKING, Any, Optional, TypeVar

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, create_model

from fleet import training

if TYPE_CHECKING:
    from fleet.catalog import Column, Dataset, ModelSpec

T = TypeVar("T")
# categories are open (new carriers and routes appear), but a code is never an essay
MAX_CATEGORY_LENGTH = 64


def _class_name(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_")) + "Record"


def _field(col: Column) -> tuple[Any, Any]:
    """(annotation, FieldInfo) of one feature column; every field is required."""
    # strict: JSON types must match (no "12" for 12, no true for 1); JSON ints are still
    # accepted for floats. Nullable columns must be sent, as null when unknown.
    extra = {"example": col.example}  # OpenAPI 3.0 "example": Swagger UI fills it in
    if col.kind in ("numeric", "integer"):
        base: Any = float if col.kind == "numeric" else int
        info = Field(
            ...,
            description=col.description,
            ge=col.minimum,
            le=col.maximum,
            strict=True,
            allow_inf_nan=False,
            json_schema_extra=extra,
        )
    elif col.kind == "categorical":
        base = str
        info = Field(
            ...,
            description=col.description,
            min_length=1,
            max_length=MAX_CATEGORY_LENGTH,
            strict=True,
            json_schema_extra=extra,
        )
    elif col.kind == "text":
        base = str
        info = Field(
            ...,
            description=col.description,
            min_length=int(col.minimum) if col.minimum is not None else 1,
            max_length=int(col.maximum) if col.maximum is not None else None,
            strict=True,
            json_schema_extra=extra,
        )
    else:
        raise ValueError(f"column {col.name!r} of kind {col.kind} cannot be a model input")
    annotation = Optional[base] if col.null_share > 0 else base  # noqa: UP045 (runtime type)
    return annotation, info


def example_of(columns: Iterable[Column]) -> dict[str, Any]:
    """A realistic request record built from the columns' catalog examples."""
    return {col.name: col.example for col in columns}


def example_record(spec: ModelSpec) -> dict[str, Any]:
    return example_of(spec.feature_columns)


def _record_model(title: str, doc: str, columns: list[Column]) -> type[BaseModel]:
    fields = {col.name: _field(col) for col in columns}
    config = ConfigDict(extra="forbid", json_schema_extra={"example": example_of(columns)})
    model = create_model(title, __config__=config, **fields)
    model.__doc__ = doc
    return model


@cache
def request_model(spec: ModelSpec) -> type[BaseModel]:
    """The pydantic model of one request record of ``spec`` (extra fields forbidden)."""
    return _record_model(
        _class_name(spec.name),
        f"One {spec.dataset.record} for {spec.name}: {spec.description}.",
        spec.feature_columns,
    )


@cache
def input_model(dataset: Dataset, features: tuple[str, ...]) -> type[BaseModel]:
    """The gateway's record of ``dataset``: every feature any of its models reads."""
    return _record_model(
        _class_name(dataset.record),
        f"One {dataset.record} ({dataset.description}).",
        [dataset.column(name) for name in features],
    )


def _as_dict(record: BaseModel | Mapping[str, Any]) -> Mapping[str, Any]:
    return record.model_dump() if isinstance(record, BaseModel) else record


def to_frame(spec: ModelSpec, records: Iterable[BaseModel | Mapping[str, Any]]) -> pd.DataFrame:
    """Records (validated models or dicts) -> the feature frame, dtypes as in training.

    The same frame as ``training.feature_frame`` of the records, built column by column
    from typed arrays: for a single record this is ~20x cheaper than a raw frame plus a
    per-column astype/where, which cost more than the model's own predict.
    """
    rows = [_as_dict(r) for r in records]
    try:
        return _typed_frame(spec, rows)
    except (TypeError, ValueError):
        # a value that does not fit its dtype (never after request validation): the
        # pandas path raises its usual error naming the problem
        raw = pd.DataFrame.from_records(rows, columns=list(spec.features))
        return training.feature_frame(spec, raw)


@cache
def _dtypes(spec: ModelSpec) -> tuple[tuple[str, str], ...]:
    return tuple(training.feature_dtypes(spec).items())


def _typed_frame(spec: ModelSpec, rows: list[Mapping[str, Any]]) -> pd.DataFrame:
    columns: dict[str, np.ndarray] = {}
    for name, dtype in _dtypes(spec):
        values = [row.get(name) for row in rows]
        if dtype == "object":
            # missing as None, never NaN (as feature_frame): encoders see one marker
            column = np.empty(len(values), dtype=object)
            column[:] = [None if v is None or v != v else v for v in values]
        else:
            column = np.array([np.nan if v is None else v for v in values], dtype=dtype)
        columns[name] = column
    return pd.DataFrame(columns, copy=False)


def predict(spec: ModelSpec, model: Any, frame: pd.DataFrame) -> list[dict[str, Any]]:
    """One answer per row.

    Classification: ``{"label", "probability"}`` with the probability of the positive
    class ``spec.labels[-1]``; regression: ``{"value"}``.
    """
    if len(frame) == 0:
        return []
    import sklearn

    # the request model already refused inf and NaN (nulls are the booster's "missing"):
    # sklearn's finiteness scan and parameter checks are a third of a single-row predict
    with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
        if spec.task == "regression":
            return [{"value": float(v)} for v in np.asarray(model.predict(frame), dtype=float)]
        proba = np.asarray(model.predict_proba(frame), dtype=float)
    pos = training.positive_index(spec, model)
    classes = [str(c) for c in model.classes_]
    best = np.argmax(proba, axis=1)
    return [
        {"label": classes[int(b)], "probability": float(p)}
        for b, p in zip(best, proba[:, pos], strict=True)
    ]


def _json_value(col: Column, value: Any) -> Any:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return None
    if col.kind == "integer":
        return int(value)
    if col.kind == "numeric":
        return float(value)
    return str(value)


def json_records(spec: ModelSpec, rows: pd.DataFrame) -> list[dict[str, Any]]:
    """Request records of ``spec`` from lake rows: plain JSON types, nulls as None."""
    return records_of(spec.feature_columns, rows)


def records_of(columns: list[Column], rows: pd.DataFrame) -> list[dict[str, Any]]:
    """Request records of these columns from lake rows: plain JSON types, nulls as None."""
    frame = rows[[c.name for c in columns]].astype(object)
    frame = frame.where(frame.notna(), None)
    return [
        {col.name: _json_value(col, row[col.name]) for col in columns}
        for row in frame.to_dict(orient="records")
    ]


def settle_heap(collect: bool = True) -> None:
    """Take everything alive now (imports, loaded models) out of the cyclic collector's way.

    A full collection walks every tracked object. In a worker that holds the fleet's
    models that is about 370,000 objects and 160 ms on one core (more on a busy machine),
    a pause every request in flight on that worker waits out: it was the long tail of
    the gateway's latencies. Frozen objects are still freed by reference counting; a
    replaced model leaves a few dozen objects in cycles, which stay. ``collect`` first
    drops the garbage of start-up (not on a live reload, where it would be that pause).
    """
    if collect:
        gc.collect()
    gc.freeze()


class Offload:
    """Runs a short predict on the event loop and a long one on a thread.

    A worker is one interpreter: a thread cannot predict while the event loop runs
    Python, only take turns with it. Each hand-off waits for the GIL, up to the
    interpreter's switch interval (5 ms) when the loop is busy, and under load those
    waits were the gateway's tail: at 8 clients, mono's p99 was 107 ms with every
    in-process predict on a thread and 44 ms with them on the loop. A thread earns its
    keep only for a call long enough to block the loop for more than a switch interval
    (a large batch, a slow model), where it keeps other requests and their time budgets
    moving. The first call of each kind goes to a thread; after that the decision
    follows the mean CPU time of the calls seen (``time.thread_time``: GIL waits are
    not counted, so a fast call that waited on a busy thread still counts as fast).
    """

    SMOOTHING = 0.2  # weight of the newest call in the running mean

    def __init__(self, inline_s: float | None = None) -> None:
        self.inline_s = sys.getswitchinterval() if inline_s is None else inline_s
        self.mean_s: float | None = None

    @property
    def inline(self) -> bool:
        return self.mean_s is not None and self.mean_s <= self.inline_s

    def _observe(self, seconds: float) -> None:
        mean = self.mean_s
        self.mean_s = seconds if mean is None else mean + self.SMOOTHING * (seconds - mean)

    def _timed(self, fn: Callable[..., T], *args: Any) -> T:
        start = time.thread_time()
        try:
            return fn(*args)
        finally:
            self._observe(time.thread_time() - start)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)``, inline or on a thread, as the calls so far say."""
        if self.inline:
            return self._timed(fn, *args)
        return await asyncio.to_thread(self._timed, fn, *args)
