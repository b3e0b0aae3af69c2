"""The gateway: one request, only the models it needs, called concurrently.

Thin shell over ``fleet.routing`` (which models), ``fleet.backends`` (how to call them)
and ``fleet.results`` (where combined results go). Topology from the environment:

- micro (default): ``FLEET_GATEWAY_BACKENDS`` = JSON ``{"model": "http://127.0.0.1:3001"}``;
- mono: ``FLEET_GATEWAY_MODE=mono`` and ``FLEET_BENTO_MODEL_TAGS`` = JSON
  ``{"model": "flight_delay:v3"}``, models loaded in this process from the Bento store.

A model that is down or slow becomes a per-model error in a 200 answer, within
``FLEET_MODEL_TIMEOUT_S`` (plus a small margin): never a 5xx, never a hang.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from typing import Any

import bentoml
from bentoml.exceptions import InvalidArgument
from fastapi import FastAPI

from fleet import backends, routing
from fleet.catalog import get_model
from fleet.results import ResultStore, ResultWriter
from fleet.settings import Settings

logger = logging.getLogger("fleet.gateway")

GatewayRequest = routing.gateway_request_model()
MODE_ENV, BACKENDS_ENV, TAGS_ENV = (
    "FLEET_GATEWAY_MODE",
    "FLEET_GATEWAY_BACKENDS",
    "FLEET_BENTO_MODEL_TAGS",
)
# a stored result is part of the answer, but a stuck database must not hang requests
STORE_BUDGET_S = 5.0

info_app = FastAPI(title="fleet gateway metadata")


def _json_env(name: str) -> dict[str, str]:
    raw = os.environ.get(name)
    if not raw:
        raise RuntimeError(f"{name} is not set: the gateway does not know its models")
    value = json.loads(raw)
    if not isinstance(value, dict) or not value:
        raise RuntimeError(f"{name} must be a non-empty JSON object, got {raw!r}")
    return {get_model(k).name: str(v) for k, v in value.items()}


@bentoml.asgi_app(info_app, path="/")
@bentoml.service(name="gateway", traffic={"timeout": 60})
class Service:
    def __init__(self) -> None:
        self.settings = Settings()
        self.mode = os.environ.get(MODE_ENV, "micro")
        self.client = None
        self.backends: dict[str, backends.ModelBackend] = {}
        if self.mode == "mono":
            from bentos.store import load_model

            for name, tag in _json_env(TAGS_ENV).items():
                loaded = load_model(tag)
                self.backends[name] = backends.InProcessBackend(
                    get_model(name), loaded.model, loaded.version, loaded.tag
                )
        elif self.mode == "micro":
            self.client = backends.make_http_client(self.settings.model_timeout_s)
            for name, url in _json_env(BACKENDS_ENV).items():
                self.backends[name] = backends.HttpBackend(
                    get_model(name), url, self.client, self.settings.model_timeout_s
                )
        else:
            raise RuntimeError(f"{MODE_ENV} must be micro or mono, not {self.mode!r}")
        self.store = ResultStore(self.settings.results_db_url).create()
        self.writer = ResultWriter(self.store)
        self.served = 0
        logger.info("gateway (%s) for %s; results in %s", self.mode, list(self.backends),
                    self.store.display_url)  # fmt: skip

    @bentoml.api(input_spec=GatewayRequest)
    async def predict(self, **request: Any) -> dict[str, Any]:
        """Predictions of every model the request needs; per-model errors for the rest."""
        received = routing.utcnow()
        start = time.perf_counter()
        inputs = {
            kind: request[kind].model_dump()
            for kind in routing.record_kinds()
            if request.get(kind) is not None
        }
        try:
            needed = routing.plan(inputs, request.get("models"))
        except routing.RoutingError as exc:
            raise InvalidArgument(str(exc)) from None
        budget = self.settings.model_timeout_s + 0.5
        calls = []
        for name, kind in needed.items():
            backend = self.backends.get(name)
            if backend is None:
                calls.append(_missing(name, self.mode))
                continue
            record = routing.model_record(get_model(name), inputs[kind])
            calls.append(backends.call(backend, record, budget))
        outcomes = await asyncio.gather(*calls)
        result = routing.combine(
            inputs, outcomes, received, (time.perf_counter() - start) * 1000,
            request.get("request_id"),
        )  # fmt: skip
        answer = result.response()
        try:
            async with asyncio.timeout(STORE_BUDGET_S):
                await self.writer.write(result)
            answer["stored"] = True
        except Exception as exc:  # the predictions are still worth answering
            logger.warning("result %s not stored: %s", result.request_id, exc)
            answer["stored"] = False
        self.served += 1
        return answer

    @info_app.get("/metadata")
    def metadata(self) -> dict[str, Any]:
        """Topology, backends and result store of this gateway."""
        return {
            "service": "gateway",
            "mode": self.mode,
            "backends": {name: b.describe() for name, b in self.backends.items()},
            "results_db": self.store.display_url,
            "model_timeout_s": self.settings.model_timeout_s,
            "requests_served": self.served,
        }

    @bentoml.on_shutdown
    async def close(self) -> None:
        await self.writer.aclose()
        if self.client is not None:
            await self.client.aclose()
        self.store.dispose()


async def _missing(name: str, mode: str) -> routing.ModelFailure:
    return routing.ModelFailure(name, f"{name}: not served by this gateway ({mode} topology)")
