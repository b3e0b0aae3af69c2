"""Routing: which models a request needs, the gateway's request model, combining answers."""

from __future__ import annotations

from datetime import UTC, datetime

import pydantic
import pytest

from fleet import routing, serving
from fleet.catalog import get_model, models
from fleet.routing import ModelAnswer, ModelFailure, RoutingError

MODELS = models()

FLIGHT = serving.example_record(get_model("flight_delay"))
REVIEW = serving.example_record(get_model("review_sentiment"))


def test_models_follow_the_dataset_record_of_the_catalog() -> None:
    for kind in routing.record_kinds():
        expected = [n for n, s in MODELS.items() if s.dataset.record == kind]
        assert routing.models_for_record(kind) == expected
    assert set(routing.models_for_record("flight")) == {"flight_delay", "arrival_delay"}
    assert routing.models_for_record("review") == ["review_sentiment"]


def test_plan_calls_only_the_models_an_input_needs() -> None:
    assert routing.plan({"flight": FLIGHT}) == {
        "arrival_delay": "flight",
        "flight_delay": "flight",
    }
    assert routing.plan({"review": REVIEW, "flight": None}) == {"review_sentiment": "review"}
    both = routing.plan({"flight": FLIGHT, "review": REVIEW})
    assert list(both) == [m for m in MODELS if m != "visibility"]  # catalog order


def test_plan_with_named_models() -> None:
    plan = routing.plan({"flight": FLIGHT, "review": REVIEW}, ["arrival_delay", "arrival_delay"])
    assert plan == {"arrival_delay": "flight"}
    with pytest.raises(RoutingError, match=r"unknown model\(s\) 'nope'.*flight_delay"):
        routing.plan({"flight": FLIGHT}, ["nope", "flight_delay"])
    with pytest.raises(RoutingError, match="'review_sentiment' needs a 'review' input"):
        routing.plan({"flight": FLIGHT}, ["review_sentiment"])
    with pytest.raises(RoutingError, match="empty"):
        routing.plan({"flight": FLIGHT}, [])
    with pytest.raises(RoutingError, match="no input"):
        routing.plan({"flight": None})


def test_gateway_input_covers_every_model_of_the_record() -> None:
    for kind in routing.record_kinds():
        dataset, features = routing.input_features(kind)
        assert features == tuple(c for c in dataset.column_names if c in features)
        for name in routing.models_for_record(kind):
            assert set(get_model(name).features) <= set(features)
            assert get_model(name).dataset is dataset
    record = {**FLIGHT, "extra": 1}
    assert routing.model_record(get_model("flight_delay"), record) == FLIGHT


def test_gateway_request_model_uses_the_catalog_schema() -> None:
    model = routing.gateway_request_model()
    ok = model.model_validate({"flight": FLIGHT, "models": ["flight_delay"]})
    assert ok.flight.model_dump() == FLIGHT and ok.review is None
    # same field types as the model services' request models
    assert type(ok.flight) is serving.input_model(*routing.input_features("flight"))
    service_fields = serving.request_model(get_model("flight_delay")).model_fields
    for name, field in type(ok.flight).model_fields.items():
        assert field.annotation == service_fields[name].annotation, name
        assert field.metadata == service_fields[name].metadata, name
    bad_cases = [
        ({"flight": {**FLIGHT, "distance": 99999.0}}, "flight.distance"),
        ({"flight": {**FLIGHT, "temp": float("nan")}}, "flight.temp"),
        ({"flight": {k: v for k, v in FLIGHT.items() if k != "carrier"}}, "flight.carrier"),
        ({"review": {"review": ""}}, "review.review"),
        ({"review": REVIEW, "models": []}, "models"),
        ({"review": REVIEW, "models": [3]}, "models.0"),
        ({"review": REVIEW, "colour": "red"}, "colour"),
    ]
    for body, field in bad_cases:
        with pytest.raises(pydantic.ValidationError) as info:
            model.model_validate(body)
        locs = {".".join(map(str, e["loc"])) for e in info.value.errors()}
        assert field in locs, (body, locs)
    example = model.model_json_schema()["example"]
    assert model.model_validate(example).flight is not None


def test_combine_keeps_answers_and_names_failures() -> None:
    at = datetime(2013, 3, 4, 12, tzinfo=UTC)
    outcomes = [
        ModelAnswer("flight_delay", "3", {"label": "0", "probability": 0.2}),
        ModelFailure("arrival_delay", "arrival_delay: cannot reach http://127.0.0.1:9"),
    ]
    result = routing.combine({"flight": FLIGHT, "review": None}, outcomes, at, 12.3456, "r1")
    assert result.request_id == "r1" and result.inputs == {"flight": FLIGHT}
    assert result.versions == {"flight_delay": "3"}
    assert result.requested == ("flight_delay", "arrival_delay")
    body = result.response()
    assert body == {
        "request_id": "r1",
        "results": {"flight_delay": {"version": "3", "prediction": outcomes[0].prediction}},
        "errors": {"arrival_delay": "arrival_delay: cannot reach http://127.0.0.1:9"},
        "latency_ms": 12.346,
    }
    fresh = routing.combine({"flight": FLIGHT}, outcomes[:1], at, 1.0)
    assert (
        fresh.request_id
        and fresh.request_id
        != routing.combine({"flight": FLIGHT}, outcomes[:1], at, 1.0).request_id
    )
