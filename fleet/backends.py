"""Model backends behind one async interface, for the gateway.

- :class:`HttpBackend`: a model service over HTTP (micro topology). Every backend
  shares ONE :class:`HttpClient` (an aiohttp connection pool sized for the gateway's
  concurrency); each call has a bounded time budget; connection errors (nothing reached
  the model, or a pooled keep-alive connection the server had closed) are retried with
  backoff while the budget lasts. Timeouts and HTTP errors are not retried: the model
  may be busy, and a retry would only add load.
- :class:`InProcessBackend`: a loaded model predicting in this process (mono topology),
  through the same ``fleet.serving`` functions as the model services.

BentoML's ``bentoml.depends`` client is deliberately not used: it dropped requests at
concurrency 8 and 32 in our measurements (STACK-NOTES). The client is aiohttp (which
BentoML itself depends on), not httpx: on this hot path httpx spent about 0.6 ms of CPU
per call at concurrency 1 and twice that at 32, aiohttp about 0.1-0.2 ms at any
concurrency (measured against a bare ASGI app on loopback).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from typing import Any, Protocol

import aiohttp

from fleet import fastpath, predictions, serving
from fleet.catalog import ModelSpec
from fleet.routing import ModelAnswer, ModelFailure, RequestMeta

# connection errors worth a retry: the request never reached a live handler (a connect
# timeout is a TimeoutError too, so it is named before timeouts are handled)
RETRYABLE = (
    aiohttp.ClientConnectorError,
    aiohttp.ConnectionTimeoutError,
    aiohttp.ServerDisconnectedError,
)


class BackendError(RuntimeError):
    """A model did not answer; the message names the model and says why."""

    def __init__(self, model: str, message: str) -> None:
        super().__init__(f"{model}: {message}")
        self.model = model
        self.reason = message


class ModelBackend(Protocol):
    name: str
    kind: str

    async def predict(self, record: Mapping[str, Any], meta: RequestMeta) -> ModelAnswer: ...

    def describe(self) -> dict[str, Any]: ...

    async def aclose(self) -> None: ...


class HttpClient:
    """The gateway's one shared client: pooled keep-alive connections, bounded timeouts.

    The aiohttp session is made on first use, inside the event loop that serves the
    requests (an aiohttp session belongs to the loop it was made in). Proxies from the
    environment are ignored (aiohttp's ``trust_env=False``): model services are on known
    addresses, and a proxy must not capture loopback traffic.
    """

    def __init__(self, timeout_s: float, max_connections: int = 128) -> None:
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self.max_connections,
                # below uvicorn's 5 s keep-alive, so the client drops idle connections first
                keepalive_timeout=4.0,
            )
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=_timeout(self.timeout_s)
            )
        return self._session

    async def post_json(
        self, url: str, body: Any, headers: Mapping[str, str], timeout_s: float
    ) -> tuple[int, str]:
        """POST ``body`` as JSON; the status and the whole answer's text."""
        async with self._open().post(
            url, json=body, headers=dict(headers), timeout=_timeout(timeout_s)
        ) as response:
            return response.status, await response.text()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _timeout(seconds: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=seconds, sock_connect=min(seconds, 1.0))


def make_http_client(timeout_s: float, max_connections: int = 128) -> HttpClient:
    return HttpClient(timeout_s, max_connections)


def _detail(status: int, text: str) -> str:
    text = text.strip().replace("\n", " ")
    return text[:300] if text else f"HTTP {status} with an empty body"


def forward_headers(meta: RequestMeta) -> dict[str, str]:
    """The request id and event time as the model service's logging headers."""
    headers = {predictions.REQUEST_ID_HEADER: meta.request_id}
    if meta.event_time is not None:
        headers[predictions.EVENT_TIME_HEADER] = meta.event_time.isoformat()
    return headers


class HttpBackend:
    """POST /predict of one model service, which logs the prediction under the gateway's
    request id and event time; see the module docstring for the call policy."""

    kind = "http"

    def __init__(
        self,
        spec: ModelSpec,
        url: str,
        client: HttpClient,
        timeout_s: float,
        retries: int = 3,
        backoff_s: float = 0.05,
        token: str | None = None,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.url = url.rstrip("/")
        self.client = client
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.token = token  # the fleet's API token, forwarded to the model service

    async def predict(self, record: Mapping[str, Any], meta: RequestMeta) -> ModelAnswer:
        deadline = time.monotonic() + self.timeout_s
        headers = forward_headers(meta)
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BackendError(self.name, f"no answer from {self.url} in {self.timeout_s} s")
            try:
                status, text = await self.client.post_json(
                    f"{self.url}/predict", {"record": dict(record)}, headers, remaining
                )
            except RETRYABLE as exc:
                attempt += 1
                pause = self.backoff_s * 2 ** (attempt - 1)
                if attempt > self.retries or time.monotonic() + pause >= deadline:
                    raise BackendError(
                        self.name,
                        f"cannot reach {self.url} ({type(exc).__name__}: {exc or 'no detail'}"
                        f"; {attempt} attempt(s))",
                    ) from exc
                await asyncio.sleep(pause)
                continue
            except TimeoutError as exc:
                raise BackendError(
                    self.name, f"no answer from {self.url} in {self.timeout_s} s"
                ) from exc
            except aiohttp.ClientError as exc:
                raise BackendError(self.name, f"{type(exc).__name__}: {exc}") from exc
            if status != 200:
                raise BackendError(
                    self.name, f"HTTP {status} from {self.url}: {_detail(status, text)}"
                )
            try:
                body = json.loads(text)
                return ModelAnswer(self.name, str(body["version"]), body["prediction"])
            except (ValueError, KeyError, TypeError) as exc:
                raise BackendError(
                    self.name, f"malformed answer from {self.url}: {_detail(status, text)}"
                ) from exc

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "url": self.url, "timeout_s": self.timeout_s}

    async def aclose(self) -> None:
        """Nothing of its own: the shared client is closed by its owner."""


class InProcessBackend:
    """A model loaded in this process (mono topology). A fast predict runs on the event
    loop and a slow one on a thread, so a slow model cannot stall the loop and the
    gateway's time budget still holds (:class:`fleet.serving.Offload` decides).

    With a ``recorder`` every prediction is logged as a model service logs it, and
    only answered once committed: a prediction that cannot be logged is a failure.
    """

    kind = "in-process"

    def __init__(
        self,
        spec: ModelSpec,
        model: Any,
        version: str,
        tag: str = "",
        recorder: predictions.PredictionRecorder | None = None,
        shadow: bool = False,
        predictor: fastpath.Predictor | None = None,
    ) -> None:
        self.spec = spec
        self.predictor = predictor or fastpath.PipelinePredictor(spec, model)
        self.shadow = shadow  # a challenger: its rows are logged as shadow rows
        self.name = spec.name
        self.model = model
        self.version = str(version)
        self.tag = tag
        self.recorder = recorder
        self.offload = serving.Offload()

    def predict_sync(self, record: Mapping[str, Any]) -> ModelAnswer:
        (answer,) = self.predictor.predict_records([record])
        return ModelAnswer(self.name, self.version, answer)

    async def predict(self, record: Mapping[str, Any], meta: RequestMeta) -> ModelAnswer:
        try:
            answer = await self.offload.run(self.predict_sync, record)
        except Exception as exc:
            raise BackendError(
                self.name, f"prediction failed: {type(exc).__name__}: {exc}"
            ) from exc
        if self.recorder is not None:
            row = predictions.LoggedPrediction(
                model=self.name,
                version=self.version,
                request_id=meta.request_id,
                features=dict(record),
                prediction=answer.prediction,
                event_time=meta.event_time,
                shadow=self.shadow,
            )
            try:
                await self.recorder.arecord([row])
            except predictions.PredictionLogError as exc:
                raise BackendError(self.name, f"prediction not logged: {exc}") from exc
        return answer

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "tag": self.tag, "version": self.version,
                "predict_path": self.predictor.path}  # fmt: skip

    async def aclose(self) -> None:
        return None


async def call(
    backend: ModelBackend, record: Mapping[str, Any], budget_s: float, meta: RequestMeta
) -> ModelAnswer | ModelFailure:
    """One backend call that always returns within ``budget_s``: an answer or a failure."""
    try:
        async with asyncio.timeout(budget_s):
            return await backend.predict(record, meta)
    except BackendError as exc:
        return ModelFailure(backend.name, str(exc))
    except TimeoutError:
        return ModelFailure(backend.name, f"{backend.name}: no answer in {budget_s} s")
    except Exception as exc:  # a bug in one backend must not fail the others
        return ModelFailure(backend.name, f"{backend.name}: {type(exc).__name__}: {exc}")
