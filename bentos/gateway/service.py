"""The gateway: one request, only the models it needs, called concurrently.

Thin shell over ``fleet.routing`` (which models), ``fleet.backends`` (how to call them)
and ``fleet.results`` (where combined results go). Topology from the environment:

- micro (default): ``FLEET_GATEWAY_BACKENDS`` = JSON ``{"model": "http://127.0.0.1:3001"}``;
  with ``FLEET_GATEWAY_BACKENDS_FILE`` the same JSON is re-read whenever the file
  changes, so ``fleet serve --reload`` can move a model to a new process without a
  restart (calls in flight finish on the old URL);
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
from pathlib import Path
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
MODE_ENV, BACKENDS_ENV, TAGS_ENV, BACKENDS_FILE_ENV = (
    "FLEET_GATEWAY_MODE",
    "FLEET_GATEWAY_BACKENDS",
    "FLEET_BENTO_MODEL_TAGS",
    "FLEET_GATEWAY_BACKENDS_FILE",
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
        self.backends_file: Path | None = None
        self._backends_stamp: tuple[int, int] | None = None
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
                self._set_url(name, url)
            if os.environ.get(BACKENDS_FILE_ENV):
                self.backends_file = Path(os.environ[BACKENDS_FILE_ENV])
                self._refresh_backends()
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
        self._refresh_backends()
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
        self._refresh_backends()
        return {
            "service": "gateway",
            "mode": self.mode,
            "backends": {name: b.describe() for name, b in self.backends.items()},
            "results_db": self.store.display_url,
            "model_timeout_s": self.settings.model_timeout_s,
            "requests_served": self.served,
        }

    def _set_url(self, name: str, url: str) -> None:
        current = self.backends.get(name)
        if getattr(current, "url", None) != url.rstrip("/"):
            self.backends[name] = backends.HttpBackend(
                get_model(name), url, self.client, self.settings.model_timeout_s
            )

    def _refresh_backends(self) -> None:
        """Swap model URLs when the backends file changed (one stat per request)."""
        if self.backends_file is None:
            return
        try:
            stat = self.backends_file.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp == self._backends_stamp:
                return
            urls = json.loads(self.backends_file.read_text())
        except (OSError, ValueError) as exc:  # keep serving on the URLs we have
            logger.warning("backends file %s unreadable: %s", self.backends_file, exc)
            return
        for name, url in urls.items():
            self._set_url(get_model(name).name, str(url))
        self._backends_stamp = stamp
        logger.info("backends now %s", {n: b.describe() for n, b in self.backends.items()})

    @bentoml.on_shutdown
    async def close(self) -> None:
        await self.writer.aclose()
        if self.client is not None:
            await self.client.aclose()
        self.store.dispose()


async def _missing(name: str, mode: str) -> routing.ModelFailure:
    return routing.ModelFailure(name, f"{name}: not served by this gateway ({mode} topology)")
