"""Traffic of the topology study: the request kinds and the three profiles."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from fleet import simulation as sim
from fleet.catalog import get_model
from fleet.catalog import models as catalog_models

# --- traffic: request kinds and the three profiles --------------------------------------


def request_classes() -> dict[str, sim.RequestClass]:
    """A full flight request (both flight models, called together), each model alone."""
    flight_models = tuple(n for n, s in catalog_models().items() if s.dataset.record == "flight")
    classes = {"flight": sim.RequestClass("flight", flight_models)}
    for name in catalog_models():
        classes[name] = sim.RequestClass(name, (name,))
    return classes


def profiles(slowest: str) -> dict[str, dict[str, float]]:
    """Traffic mixes over request kinds.

    - uniform: half full flight requests, half reviews: every model gets as many calls;
    - skewed: 90 % of requests for flight_delay alone, the model the catalog scales;
    - heavy: 80 % for the model slowest to predict, the rest split over the others.
    """
    others = [m for m in catalog_models() if m != slowest]
    return {
        "uniform": {"flight": 0.5, "review_sentiment": 0.5},
        "skewed": {
            "flight_delay": 0.9,
            **{
                m: 0.1 / (len(catalog_models()) - 1)
                for m in catalog_models()
                if m != "flight_delay"
            },
        },
        "heavy": {slowest: 0.8, **{m: 0.2 / len(others) for m in others}},
    }


def body(kind: str, records: Mapping[str, list[dict[str, Any]]], i: int) -> dict[str, Any]:
    """The gateway request of one kind, with the i-th real record of its dataset."""
    cls = request_classes()[kind]
    record_kind = get_model(cls.models[0]).dataset.record
    rows = records[record_kind]
    out: dict[str, Any] = {record_kind: rows[i % len(rows)]}
    if kind != "flight" and record_kind == "flight":
        out["models"] = [kind]  # a flight request names the one model it wants
    return out


def mixed_bodies(
    mix: Mapping[str, float], records: Mapping[str, list[dict[str, Any]]], n: int = 200
) -> list[dict[str, Any]]:
    """``n`` bodies whose kinds have exactly the mix's shares (rounded), in a fixed shuffle."""
    mix = sim.normalise(mix)
    counts = {k: round(w * n) for k, w in mix.items()}
    kinds = [k for k, c in counts.items() for _ in range(c)]
    random.Random(11).shuffle(kinds)
    return [body(kind, records, i) for i, kind in enumerate(kinds)]
