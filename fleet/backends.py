"""Model backends behind one async interface, for the gateway.

- :class:`HttpBackend`: a model service over HTTP (micro topology). Every backend
  shares ONE ``httpx.AsyncClient`` (a connection pool sized for the gateway's
  concurrency); each call has a bounded time budget; connection errors (nothing reached
  the model, or a pooled keep-alive connection the server had closed) are retried with
  backoff while the budget lasts. Timeouts and HTTP errors are not retried: the model
  may be busy, and a retry would only add load.
- :class:`InProcessBackend`: a loaded model predicting in this process (mono topology),
  through the same ``fleet.serving`` functions as the model services.

BentoML's ``bentoml.depends`` client is deliberately not used: it dropped requests at
concurrency 8 and 32 in our measurements (STACK-NOTES).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any, Protocol

import httpx

from fleet import fastpath, predictions
from fleet.catalog import ModelSpec
from fleet.routing import ModelAnswer, ModelFailure, RequestMeta

# connection errors worth a retry: the request never reached a live handler
RETRYABLE = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError)


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


def make_http_client(timeout_s: float, max_connections: int = 128) -> httpx.AsyncClient:
    """The gateway's one shared client: pooled keep-alive connections, bounded timeouts.

    ``trust_env=False``: model services are on known addresses; a proxy from the
    environment must not capture loopback traffic.
    """
    return httpx.AsyncClient(
        limits=httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            # below uvicorn's 5 s keep-alive, so the client drops idle connections first
            keepalive_expiry=4.0,
        ),
        timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 1.0)),
        trust_env=False,
    )


def _detail(response: httpx.Response) -> str:
    text = response.text.strip().replace("\n", " ")
    return text[:300] if text else response.reason_phrase


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
        client: httpx.AsyncClient,
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
                response = await self.client.post(
                    f"{self.url}/predict",
                    json={"record": dict(record)},
                    headers=headers,
                    timeout=httpx.Timeout(remaining, connect=min(remaining, 1.0)),
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
            except httpx.TimeoutException as exc:
                raise BackendError(
                    self.name, f"no answer from {self.url} in {self.timeout_s} s"
                ) from exc
            except httpx.HTTPError as exc:
                raise BackendError(self.name, f"{type(exc).__name__}: {exc}") from exc
            if response.status_code != 200:
                raise BackendError(
                    self.name, f"HTTP {response.status_code} from {self.url}: {_detail(response)}"
                )
            try:
                body = response.json()
                return ModelAnswer(self.name, str(body["version"]), body["prediction"])
            except (ValueError, KeyError, TypeError) as exc:
                raise BackendError(
                    self.name, f"malformed answer from {self.url}: {_detail(response)}"
                ) from exc

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "url": self.url, "timeout_s": self.timeout_s}

    async def aclose(self) -> None:
        """Nothing of its own: the shared client is closed by its owner."""


class InProcessBackend:
    """A model loaded in this process (mono topology); predictions run on a thread so a
    slow model cannot stall the event loop and the gateway's time budget still holds.

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

    def predict_sync(self, record: Mapping[str, Any]) -> ModelAnswer:
        (answer,) = self.predictor.predict_records([record])
        return ModelAnswer(self.name, self.version, answer)

    async def predict(self, record: Mapping[str, Any], meta: RequestMeta) -> ModelAnswer:
        try:
            answer = await asyncio.to_thread(self.predict_sync, record)
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
