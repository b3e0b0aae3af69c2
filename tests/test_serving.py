"""fleet.serving: request models from the catalog, frames with training dtypes, answers."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from fleet import serving, training
from fleet.catalog import get_model, models

MODELS = models()


def _error_fields(exc: ValidationError) -> set[str]:
    return {str(err["loc"][0]) for err in exc.errors()}


@pytest.mark.parametrize("name", list(MODELS))
def test_request_model_mirrors_the_catalog(name: str) -> None:
    spec = get_model(name)
    model = serving.request_model(spec)
    schema = model.model_json_schema()
    assert list(schema["properties"]) == list(spec.features)
    assert set(schema["required"]) == set(spec.features)
    assert schema["additionalProperties"] is False
    assert schema["example"] == serving.example_record(spec)
    for col in spec.feature_columns:
        prop = schema["properties"][col.name]
        assert prop["example"] == col.example  # what /docs "try it out" sends
        bounds = prop["anyOf"][0] if "anyOf" in prop else prop
        if col.kind in ("numeric", "integer"):
            assert (bounds["minimum"], bounds["maximum"]) == (col.minimum, col.maximum)
        assert ("anyOf" in prop) == (col.null_share > 0)
    # the example itself is a valid request
    assert model.model_validate(serving.example_record(spec)).model_dump() == (
        serving.example_record(spec)
    )
    assert serving.request_model(spec) is model  # generated once per spec


FLIGHT_BAD = [
    ("distance", float("nan"), "finite_number"),
    ("distance", float("inf"), "finite_number"),
    ("distance", 0.5, "greater_than_equal"),
    ("month", 13, "less_than_equal"),
    ("month", 8.0, "int_type"),
    ("month", True, "int_type"),
    ("month", "3", "int_type"),
    ("carrier", 9, "string_type"),
    ("carrier", "", "string_too_short"),
    ("carrier", None, "string_type"),
    ("temp", 200.0, "less_than_equal"),
]


@pytest.mark.parametrize(("field", "value", "error"), FLIGHT_BAD)
def test_bad_flight_values_are_refused_naming_the_field(field, value, error) -> None:
    spec = get_model("flight_delay")
    record = {**serving.example_record(spec), field: value}
    with pytest.raises(ValidationError) as exc:
        serving.request_model(spec).model_validate(record)
    assert _error_fields(exc.value) == {field}
    assert exc.value.errors()[0]["type"] == error


def test_missing_extra_and_null_fields() -> None:
    spec = get_model("flight_delay")
    model = serving.request_model(spec)
    example = serving.example_record(spec)
    with pytest.raises(ValidationError) as exc:
        model.model_validate({k: v for k, v in example.items() if k != "temp"})
    assert _error_fields(exc.value) == {"temp"}  # nullable, but must be sent
    with pytest.raises(ValidationError) as exc:
        model.model_validate({**example, "arr_delay": 3.0})  # the target is no input
    assert _error_fields(exc.value) == {"arr_delay"}
    # unknown weather is sent as null; integers are accepted for floats
    ok = model.model_validate({**example, "temp": None, "pressure": None, "distance": 1400})
    assert ok.temp is None and ok.distance == 1400.0
    # NaN written into the JSON text is refused as well
    with pytest.raises(ValidationError) as exc:
        model.model_validate_json(json.dumps(example).replace("1400.0", "NaN"))
    assert _error_fields(exc.value) == {"distance"}


def test_review_text_bounds() -> None:
    spec = get_model("review_sentiment")
    model = serving.request_model(spec)
    column = spec.dataset.column("review")
    for bad in ("", "x" * (int(column.maximum) + 1), 42):
        with pytest.raises(ValidationError) as exc:
            model.model_validate({"review": bad})
        assert _error_fields(exc.value) == {"review"}
    assert model.model_validate({"review": "Tasty."}).review == "Tasty."


def test_to_frame_has_the_training_dtypes(flights_q1: pd.DataFrame) -> None:
    spec = get_model("flight_delay")
    rows = flights_q1[list(spec.features)].head(50)
    rows = rows.astype(object).where(rows.notna(), None)
    frame = serving.to_frame(spec, rows.to_dict(orient="records"))
    expected = training.feature_frame(spec, flights_q1.head(50))
    assert {c: str(t) for c, t in frame.dtypes.items()} == training.feature_dtypes(spec)
    pd.testing.assert_frame_equal(frame, expected)
    # validated models and dicts give the same frame
    model = serving.request_model(spec)
    validated = [model.model_validate(r) for r in rows.to_dict(orient="records")]
    pd.testing.assert_frame_equal(serving.to_frame(spec, validated), frame)


def _small_fit(spec, table: pd.DataFrame):
    X, y = training.training_frame(spec, table)
    return training.fit(spec, X, y), X


def test_predict_classification_and_regression(flights_q1: pd.DataFrame) -> None:
    table = flights_q1[flights_q1["month"] == 1].head(3000)
    clf_spec = get_model("flight_delay")
    clf, X = _small_fit(clf_spec, table)
    answers = serving.predict(clf_spec, clf, X.head(40))
    proba = clf.predict_proba(X.head(40))[:, training.positive_index(clf_spec, clf)]
    assert [a["probability"] for a in answers] == pytest.approx(list(proba))
    assert {a["label"] for a in answers} <= set(clf_spec.labels)
    assert all(a["label"] == ("1" if a["probability"] > 0.5 else "0") for a in answers)

    reg_spec = get_model("arrival_delay")
    reg, X = _small_fit(reg_spec, table)
    answers = serving.predict(reg_spec, reg, X.head(40))
    assert [a["value"] for a in answers] == pytest.approx(list(reg.predict(X.head(40))))
    assert all(set(a) == {"value"} and math.isfinite(a["value"]) for a in answers)
    assert serving.predict(reg_spec, reg, X.head(0)) == []


def test_predict_positive_class_is_the_last_label(reviews_table: pd.DataFrame) -> None:
    spec = get_model("review_sentiment")
    model, X = _small_fit(spec, reviews_table.head(800))
    answers = serving.predict(spec, model, X.head(30))
    great = list(model.classes_).index("great")
    assert [a["probability"] for a in answers] == pytest.approx(
        list(model.predict_proba(X.head(30))[:, great])
    )
    assert np.mean([a["label"] == "great" for a in answers]) > 0  # both labels occur


def _busy(seconds: float) -> int:
    """CPU work on the calling thread for ``seconds`` of its CPU time; its thread id."""
    import threading
    import time

    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass
    return threading.get_ident()


def test_offload_keeps_fast_calls_on_the_loop_and_sends_slow_ones_to_a_thread() -> None:
    import asyncio
    import threading

    async def calls() -> list[bool]:
        offload = serving.Offload(inline_s=0.005)
        loop_thread = threading.get_ident()
        on_loop = []
        for seconds in [0.0005] * 3 + [0.05] * 8 + [0.0005] * 12:
            on_loop.append(await offload.run(_busy, seconds) == loop_thread)
        always_thread = serving.Offload(inline_s=0.0)
        on_loop.append(await always_thread.run(_busy, 0.0) == loop_thread)
        on_loop.append(await always_thread.run(_busy, 0.0) == loop_thread)
        return on_loop

    on_loop = asyncio.run(calls())
    assert on_loop[:3] == [False, True, True]  # unknown at first: a thread; then known fast
    # one slow call lifts the running mean over the bound; the next ones go to a thread
    assert on_loop[3] and not any(on_loop[4:11])
    # fast calls bring the mean back down, and the loop takes them again
    assert not on_loop[11] and on_loop[-3]
    assert on_loop[-2:] == [False, False]  # a bound of 0 never runs on the loop
