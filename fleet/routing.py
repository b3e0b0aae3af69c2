"""Which models a gateway request needs, and how their answers combine.

Pure functions over the catalog: a request carries at most one record per dataset, keyed
by the dataset's ``record`` name ("flight", "review"); every model on that dataset is
needed unless the request names the models it wants. No I/O here: the gateway service
calls the backends and the result store.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fleet import catalog
from fleet.catalog import Dataset, ModelSpec


class RoutingError(ValueError):
    """The request cannot be routed (unknown model, missing input, nothing to do): a 4xx."""


@dataclass(frozen=True)
class ModelAnswer:
    """One model's prediction for one record, with the version that served it."""

    model: str
    version: str
    prediction: dict[str, Any]


@dataclass(frozen=True)
class RequestMeta:
    """What every model call of one gateway request carries: the id the predictions are
    logged under (the label join key) and when the event happened (None: now)."""

    request_id: str
    event_time: datetime | None = None


@dataclass(frozen=True)
class ModelFailure:
    """One model that did not answer; ``message`` names the model and says why."""

    model: str
    message: str


@dataclass(frozen=True)
class CombinedResult:
    """What the gateway answers and stores for one request."""

    request_id: str
    received_at: datetime
    inputs: dict[str, dict[str, Any]]
    results: dict[str, dict[str, Any]]  # model -> {"version", "prediction"}
    errors: dict[str, str]  # model -> message
    latency_ms: float
    requested: tuple[str, ...] = field(default=())

    @property
    def versions(self) -> dict[str, str]:
        return {model: answer["version"] for model, answer in self.results.items()}

    def response(self) -> dict[str, Any]:
        """The gateway's JSON answer (the serving contract)."""
        return {
            "request_id": self.request_id,
            "results": self.results,
            "errors": self.errors,
            "latency_ms": round(self.latency_ms, 3),
        }


CHALLENGER_ROUTE = "@challenger"  # suffix of a challenger's key in the gateway's routes


def challenger_route(model: str) -> str:
    """The routes key of ``model``'s challenger (``flight_delay@challenger``)."""
    return model + CHALLENGER_ROUTE


def parse_route(key: str) -> tuple[str, bool]:
    """(catalog model, is a challenger) of a routes key; KeyError for an unknown model."""
    name = key.removesuffix(CHALLENGER_ROUTE)
    return catalog.get_model(name).name, name != key


def record_kinds() -> list[str]:
    """The input keys a gateway request may carry: each dataset's ``record``, that has models."""
    used = {spec.dataset.name for spec in catalog.models().values()}
    return [d.record for d in catalog.datasets().values() if d.name in used]


def models_for_record(record: str) -> list[str]:
    """Every catalog model whose dataset's record is ``record``, in catalog order."""
    return [name for name, spec in catalog.models().items() if spec.dataset.record == record]


def input_features(record: str) -> tuple[Dataset, tuple[str, ...]]:
    """The dataset behind ``record`` and every feature its models read, in column order.

    The gateway validates its input of that kind with the catalog-generated model of
    these columns, so it holds no second copy of the schema.
    """
    specs = [catalog.get_model(name) for name in models_for_record(record)]
    if not specs:
        raise RoutingError(f"no model in the catalog takes a {record!r}")
    dataset = specs[0].dataset
    needed = set().union(*(s.features for s in specs))
    return dataset, tuple(c for c in dataset.column_names if c in needed)


def plan(inputs: Mapping[str, Any], models: Sequence[str] | None = None) -> dict[str, str]:
    """Map each needed model to the input key it reads.

    ``inputs`` holds the request's records by kind (None or missing means absent).
    Without ``models`` every model on a present record is needed; with it, exactly the
    named ones, each of which must have its record in the request.
    """
    present = {kind for kind in record_kinds() if inputs.get(kind) is not None}
    if models is None:
        chosen = {name: kind for kind in present for name in models_for_record(kind)}
        if not chosen:
            kinds = " and/or ".join(f"'{k}'" for k in record_kinds())
            raise RoutingError(f"the request holds no input: give {kinds}")
        order = catalog.model_names()
        return dict(sorted(chosen.items(), key=lambda kv: order.index(kv[0])))

    if not models:
        raise RoutingError("'models' is empty: name at least one model or leave it out")
    known = catalog.models()
    unknown = [name for name in models if name not in known]
    if unknown:
        raise RoutingError(
            f"unknown model(s) {', '.join(map(repr, unknown))} in 'models'; "
            f"the catalog has: {', '.join(known)}"
        )
    chosen = {}
    for name in dict.fromkeys(models):  # de-duplicated, order kept
        kind = known[name].dataset.record
        if kind not in present:
            raise RoutingError(f"model {name!r} needs a '{kind}' input, and the request has none")
        chosen[name] = kind
    return chosen


def model_record(spec: ModelSpec, record: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a validated record that ``spec`` reads (its features only)."""
    return {name: record[name] for name in spec.features if name in record}


def combine(
    inputs: Mapping[str, Any],
    outcomes: Sequence[ModelAnswer | ModelFailure],
    received_at: datetime,
    latency_ms: float,
    request_id: str | None = None,
) -> CombinedResult:
    """Fold the per-model outcomes of one request into the combined result."""
    results: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    for outcome in outcomes:
        if isinstance(outcome, ModelAnswer):
            results[outcome.model] = {"version": outcome.version, "prediction": outcome.prediction}
        else:
            errors[outcome.model] = outcome.message
    return CombinedResult(
        request_id=request_id or new_request_id(),
        received_at=received_at,
        inputs={k: dict(v) for k, v in inputs.items() if v is not None},
        results=results,
        errors=errors,
        latency_ms=latency_ms,
        requested=tuple(o.model for o in outcomes),
    )


def new_request_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


def gateway_request_model() -> type[Any]:
    """The gateway's request body: optional ``request_id``, one optional record per kind
    (validated by the catalog-generated model of :func:`input_features`), optional
    ``models``.

    Built from the same catalog columns as the model services' request models.
    """
    from typing import Optional

    from pydantic import ConfigDict, Field, create_model

    from fleet import serving

    # the record's business key as request id: ground truth arriving later joins on it
    examples: dict[str, Any] = {
        "request_id": "2013-03-04-UA1545-EWR",
        "event_time": "2013-03-04T12:00:00+00:00",
    }
    fields: dict[str, Any] = {
        "request_id": (
            Optional[str],  # noqa: UP045 (runtime type)
            Field(
                None,
                min_length=1,
                max_length=128,
                description=(
                    "your id, e.g. the record's business key (flight_id); the prediction log "
                    "keeps it and labels join on it; made if absent"
                ),
            ),
        ),
        "event_time": (
            Optional[datetime],  # noqa: UP045 (pydantic parses ISO 8601)
            Field(
                None,
                description=(
                    "when the event happened in the caller's clock, ISO 8601 (no offset: "
                    "UTC); the prediction log's windows use it; default now"
                ),
            ),
        ),
    }
    for kind in record_kinds():
        dataset, features = input_features(kind)
        users = ", ".join(models_for_record(kind))
        fields[kind] = (
            Optional[serving.input_model(dataset, features)],  # noqa: UP045
            Field(None, description=f"one {kind}: sent to {users}"),
        )
        examples[kind] = serving.example_of([dataset.column(f) for f in features])
    # plain strings: routing.plan rejects unknown names with the catalog's list (a 4xx)
    fields["models"] = (
        Optional[list[str]],  # noqa: UP045
        Field(
            None,
            min_length=1,
            max_length=len(catalog.model_names()),  # each model once at most
            description="only these models (default: all that apply); one of "
            + ", ".join(catalog.model_names()),
        ),
    )
    config = ConfigDict(extra="forbid", json_schema_extra={"example": examples})
    return create_model("GatewayRequest", __config__=config, **fields)
