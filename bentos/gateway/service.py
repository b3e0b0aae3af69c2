"""The gateway: one request, only the models it needs, called concurrently.

Thin shell over ``fleet.routing`` (which models), ``fleet.backends`` (how to call them)
and ``fleet.results`` (where combined results go). Where each model is comes from the
environment, as two routing tables that may both be in use (a hybrid placement):

- remote models: ``FLEET_GATEWAY_BACKENDS`` = JSON ``{"model": "http://127.0.0.1:3001"}``;
  with ``FLEET_GATEWAY_BACKENDS_FILE`` the same JSON is re-read whenever the file
  changes, so ``fleet serve --reload`` can move a model to a new process without a
  restart (calls in flight finish on the old URL);
- in-process models: ``FLEET_BENTO_MODEL_TAGS`` = JSON ``{"model": "flight_delay:v3"}``,
  loaded in this process from the Bento store; with ``FLEET_BENTO_MODEL_TAGS_FILE`` the
  same JSON is re-read whenever the file changes: a changed tag is loaded on a
  background thread and swapped in once loaded.

``FLEET_GATEWAY_MODE`` says which tables it starts with: ``micro`` (remote only, the
default), ``mono`` (in-process only) or ``hybrid`` (both). Whichever table last changed
a model's entry serves it, so ``fleet serve --placement`` moves a model between the two
with one file write each way; at start, the remote table wins a model named in both.
``/metadata`` reports the mode the tables make now.

Every prediction is logged (``fleet.predictions``) under the request's ``request_id``
and ``event_time``: in micro by the model services (the gateway forwards both as
headers), in mono by the gateway itself, before the answer is sent.

A model that is down or slow becomes a per-model error in a 200 answer, within
``FLEET_MODEL_TIMEOUT_S`` (plus a small margin): never a 5xx, never a hang.

Challengers: a routes key ``<model>@challenger`` (``fleet.routing.challenger_route``)
names a model's ``@challenger``. Every request that needs the model is mirrored to it on
a task of its own, started beside the champion's call and never awaited by the
request: its answer is logged as a shadow row (by its service, or here in mono) and
never returned; its failures and timeouts are only counted in ``/metadata``. At most
``MAX_SHADOW_IN_FLIGHT`` mirrored calls run at once; beyond that a mirror is dropped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import bentoml
from bentoml.exceptions import InvalidArgument
from fastapi import FastAPI
from fastapi.responses import RedirectResponse

from bentos import runtime
from fleet import backends, fastpath, predictions, routing, serving
from fleet.catalog import get_model
from fleet.guard import Guard
from fleet.results import ResultStore, ResultWriter
from fleet.settings import Settings

logger = logging.getLogger("fleet.gateway")

GatewayRequest = routing.gateway_request_model()
MODE_ENV, BACKENDS_ENV, TAGS_ENV, BACKENDS_FILE_ENV, TAGS_FILE_ENV = (
    "FLEET_GATEWAY_MODE",
    "FLEET_GATEWAY_BACKENDS",
    "FLEET_BENTO_MODEL_TAGS",
    "FLEET_GATEWAY_BACKENDS_FILE",
    "FLEET_BENTO_MODEL_TAGS_FILE",
)
MODES = ("micro", "mono", "hybrid")
# a stored result is part of the answer, but a stuck database must not hang requests
STORE_BUDGET_S = 5.0
# mirrored calls to challengers in flight at once: a dead or slow challenger must not
# pile up tasks (each waits for its timeout); beyond this, mirrors are dropped
MAX_SHADOW_IN_FLIGHT = 64

info_app = FastAPI(title="fleet gateway metadata")


@info_app.get("/docs", include_in_schema=False)
def docs() -> RedirectResponse:
    """The API page is BentoML's index; ``/docs`` is where FastAPI users look."""
    return RedirectResponse("/")


def _json_env(name: str, required: bool) -> dict[str, str]:
    """A routing table from the environment; ``required``: it must name a model."""
    raw = os.environ.get(name)
    if not raw:
        if required:
            raise RuntimeError(f"{name} is not set: the gateway does not know its models")
        return {}
    value = json.loads(raw)
    if not isinstance(value, dict) or (required and not value):
        raise RuntimeError(f"{name} must be a non-empty JSON object, got {raw!r}")
    return _routes(value)


def _routes(value: dict[str, Any]) -> dict[str, str]:
    """Routes keyed by catalog model, ``<model>@challenger`` for challengers (a KeyError
    names an unknown model)."""
    out = {}
    for key, target in value.items():
        model, challenger = routing.parse_route(key)
        out[routing.challenger_route(model) if challenger else model] = str(target)
    return out


@bentoml.asgi_app(info_app, path="/")
@bentoml.service(name="gateway", traffic={"timeout": 60})
class Service:
    def __init__(self) -> None:
        runtime.cancel_request_timers()
        self.settings = Settings()
        self.started_as = os.environ.get(MODE_ENV, "micro")
        if self.started_as not in MODES:
            raise RuntimeError(f"{MODE_ENV} must be one of {', '.join(MODES)}, not "
                               f"{self.started_as!r}")  # fmt: skip
        self.client = backends.make_http_client(self.settings.model_timeout_s)
        self.backends: dict[str, backends.ModelBackend] = {}
        self.challengers: dict[str, backends.ModelBackend] = {}  # mirrored, never answered
        self._shadow_tasks: set[asyncio.Task] = set()
        self._shadow_counts: dict[str, Counter[str]] = {}
        self.backends_file: Path | None = None
        self._backends_stamp: tuple[int, int] | None = None
        self.tags_file: Path | None = None
        self._tags_stamp: tuple[int, int] | None = None
        self._loading: threading.Thread | None = None
        self._tags_lock = threading.Lock()
        self.log: predictions.PredictionLog | None = None
        self.recorder: predictions.PredictionRecorder | None = None
        tags = _json_env(TAGS_ENV, required=self.started_as == "mono")
        urls = _json_env(BACKENDS_ENV, required=self.started_as == "micro")
        if self.started_as == "hybrid" and not (tags or urls):
            raise RuntimeError(f"hybrid: {TAGS_ENV} and {BACKENDS_ENV} are both empty")
        if tags or os.environ.get(TAGS_FILE_ENV):
            # models here log their predictions here
            self.log = predictions.PredictionLog(self.settings.predictions_db_url).create()
            self.recorder = predictions.PredictionRecorder(self.log)
        for key, tag in tags.items():
            self._load(key, tag)
        # what each file said last: only an entry that changed there moves a model
        self._tags_seen, self._urls_seen = dict(tags), dict(urls)
        if os.environ.get(TAGS_FILE_ENV):
            self.tags_file = Path(os.environ[TAGS_FILE_ENV])
            self._refresh_tags(wait=True)
        for key, url in urls.items():
            self._set_url(key, url)
        if os.environ.get(BACKENDS_FILE_ENV):
            self.backends_file = Path(os.environ[BACKENDS_FILE_ENV])
            self._refresh_backends()
        self.store = ResultStore(self.settings.results_db_url).create()
        self.writer = ResultWriter(self.store)
        self.served = 0
        self._champions: dict[str, tuple[float, bool | None]] = {}
        logger.info("gateway (%s) for %s; results in %s", self.mode, list(self.backends),
                    self.store.display_url)  # fmt: skip
        serving.settle_heap()

    @property
    def mode(self) -> str:
        """What the routing tables make now: micro, mono or hybrid."""
        kinds = {b.kind for b in self.backends.values()}
        if kinds == {backends.InProcessBackend.kind}:
            return "mono"
        return "hybrid" if len(kinds) > 1 else "micro"

    @bentoml.api(input_spec=GatewayRequest)
    async def predict(self, **request: Any) -> Annotated[dict[str, Any], runtime.JSON]:
        """Predictions of every model the request needs; per-model errors for the rest."""
        received = routing.utcnow()
        start = time.perf_counter()
        self._refresh_tags()
        self._refresh_backends()
        event_time = request.get("event_time")
        meta = routing.RequestMeta(
            request.get("request_id") or routing.new_request_id(),
            predictions.as_utc(event_time) if event_time is not None else None,
        )
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
                calls.append(self._missing(name))
                continue
            record = routing.model_record(get_model(name), inputs[kind])
            calls.append(backends.call(backend, record, budget, meta))
            challenger = self.challengers.get(name)
            if challenger is not None:
                self._mirror(challenger, record, budget, meta)
        outcomes = await asyncio.gather(*calls)
        result = routing.combine(
            inputs, outcomes, received, (time.perf_counter() - start) * 1000, meta.request_id
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
        self._refresh_tags()
        self._refresh_backends()
        return {
            "service": "gateway",
            "mode": self.mode,
            "backends": {name: b.describe() for name, b in self.backends.items()},
            "challengers": {
                name: {**b.describe(), **self._shadow_counts.get(name, {})}
                for name, b in self.challengers.items()
            },
            "results_db": self.store.display_url,
            # micro: each model service logs (its /metadata names where)
            "predictions_db": self.log.display_url if self.log is not None else None,
            "model_timeout_s": self.settings.model_timeout_s,
            "requests_served": self.served,
        }

    def _mirror(
        self,
        challenger: backends.ModelBackend,
        record: dict[str, Any],
        budget: float,
        meta: routing.RequestMeta,
    ) -> None:
        """The challenger's call for this request, on its own task: never awaited here."""
        counts = self._shadow_counts.setdefault(challenger.name, Counter())
        if len(self._shadow_tasks) >= MAX_SHADOW_IN_FLIGHT:
            counts["dropped"] += 1
            return
        task = asyncio.get_running_loop().create_task(
            backends.call(challenger, record, budget, meta)
        )
        counts["mirrored"] += 1
        self._shadow_tasks.add(task)  # a reference: the loop keeps only weak ones

        def done(finished: asyncio.Task) -> None:
            self._shadow_tasks.discard(finished)
            failed = finished.cancelled() or isinstance(finished.result(), routing.ModelFailure)
            counts["failed" if failed else "answered"] += 1

        task.add_done_callback(done)

    def _table(self, key: str) -> tuple[dict[str, backends.ModelBackend], str]:
        """The backend table a routes key belongs in, and the model it names."""
        model, challenger = routing.parse_route(key)
        return (self.challengers if challenger else self.backends), model

    def _set_url(self, key: str, url: str) -> None:
        table, name = self._table(key)
        current = table.get(name)
        if getattr(current, "url", None) != url.rstrip("/"):
            table[name] = backends.HttpBackend(
                get_model(name), url, self.client, self.settings.model_timeout_s,
                token=self.settings.token,
            )  # fmt: skip

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
        try:
            routes = _routes(urls)
        except (KeyError, AttributeError) as exc:
            logger.warning("backends file %s names an unknown model: %s", self.backends_file, exc)
            return
        for key, url in routes.items():
            if self._urls_seen.get(key) != url:  # a moved entry; the others stay put
                self._set_url(key, url)
        for key in [k for k in self._urls_seen if k not in routes]:
            model, challenger = routing.parse_route(key)
            if not challenger and isinstance(self.backends.get(model), backends.HttpBackend):
                # unrouted while its in-process copy may still be loading in this worker
                # (each gateway worker loads on its own): wait for it, as the service
                # it was routed to is about to stop
                self._refresh_tags(wait=True)
        self._drop_challengers(self._urls_seen, routes)
        self._urls_seen = routes
        self._backends_stamp = stamp
        logger.info("backends now %s; challengers %s",
                    {n: b.describe() for n, b in self.backends.items()},
                    {n: b.describe() for n, b in self.challengers.items()})  # fmt: skip

    def _drop_challengers(self, before: dict[str, str], now: dict[str, str]) -> None:
        """Challengers whose entry left a routing file stop being mirrored (calls in
        flight finish on their own); the other file's challengers are not touched."""
        for key in [k for k in before if k not in now]:
            model, challenger = routing.parse_route(key)
            if challenger and self.challengers.pop(model, None) is not None:
                logger.info("%s: challenger dropped", model)

    def _load(self, key: str, tag: str) -> None:
        from fleet.bento_store import load_model

        table, name = self._table(key)
        loaded = load_model(tag)
        # one dict assignment: a request sees the old backend or the new, never neither
        spec = get_model(name)
        table[name] = backends.InProcessBackend(
            spec, loaded.model, loaded.version, loaded.tag, self.recorder,
            shadow=table is self.challengers,
            predictor=fastpath.for_setting(spec, loaded.model, self.settings.predict_path,
                                           loaded.example),
        )  # fmt: skip

    def _refresh_tags(self, wait: bool = False) -> None:
        """Load the models whose tag changed in the tags file, off the request path
        (``wait``: on it, until loaded).

        Requests keep the loaded version until the new one is in; a tag that fails to
        load is logged and retried when the file changes again.
        """
        if self.tags_file is None:
            return
        if wait:  # until the file's current content is loaded, a load in progress first
            with self._tags_lock:
                if self._loading is not None:
                    self._loading.join()
                self._start_loading()
            if self._loading is not None:
                self._loading.join()
            return
        # /metadata (a thread) and /predict (the event loop) both call this
        if not self._tags_lock.acquire(blocking=False):
            return
        try:
            if self._loading is None or not self._loading.is_alive():
                self._start_loading()
        finally:
            self._tags_lock.release()

    def _start_loading(self) -> None:
        assert self.tags_file is not None
        try:
            stat = self.tags_file.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp == self._tags_stamp:
                return
            wanted = _routes(json.loads(self.tags_file.read_text()))
        except (OSError, ValueError, KeyError, AttributeError) as exc:  # keep what is loaded
            logger.warning("tags file %s unreadable: %s", self.tags_file, exc)
            return
        self._tags_stamp = stamp
        self._drop_challengers(self._tags_seen, wanted)
        changed = {key: tag for key, tag in wanted.items() if self._tags_seen.get(key) != tag}
        self._tags_seen = wanted
        if not changed:
            return

        def load() -> None:
            for key, tag in changed.items():
                table, name = self._table(key)
                try:
                    self._load(key, tag)
                    logger.info("%s now serves %s", key, tag)
                except Exception as exc:
                    self._tags_seen.pop(key, None)  # tried again at the file's next change
                    logger.error("cannot load %s for %s, keeping %s: %s", tag, key,
                                 getattr(table.get(name), "tag", None), exc)  # fmt: skip
            serving.settle_heap(collect=False)

        self._loading = threading.Thread(target=load, name="model-loader", daemon=True)
        self._loading.start()

    @bentoml.on_shutdown
    async def _missing(self, name: str) -> routing.ModelFailure:
        """Why a model the request needs is not here: no champion yet, or left out."""
        champion = await asyncio.to_thread(self._has_champion, name)
        if champion is False:
            why = (
                f"{name}: no @champion yet; train it (`fleet train {name}`), then serve it "
                "(`fleet stop`, then `fleet serve`)"
            )
        else:
            why = (
                f"{name}: not served by this gateway ({self.mode}, started without it); "
                "serve it (`fleet stop`, then `fleet serve`)"
            )
        return routing.ModelFailure(name, why)

    def _has_champion(self, name: str) -> bool | None:
        """Whether the registry holds a @champion (None: the registry cannot be asked);
        remembered for a minute, so unserved requests do not each ask MLflow."""
        now = time.monotonic()
        known = self._champions.get(name)
        if known is not None and now - known[0] < 60:
            return known[1]
        try:
            from fleet.registry import champion_info

            found: bool | None = champion_info(self.settings, name) is not None
        except Exception:  # a gateway without registry access still answers
            found = None
        self._champions[name] = (now, found)
        return found

    async def close(self) -> None:
        for task in list(self._shadow_tasks):  # mirrors are never worth a slow shutdown
            task.cancel()
        await self.writer.aclose()
        await self.client.aclose()
        self.store.dispose()
        if self.recorder is not None:
            await asyncio.to_thread(self.recorder.close)
        if self.log is not None:
            self.log.dispose()


# token, JSON only and the body cap, before BentoML reads a byte (fleet.guard)
_settings = Settings()
Service.add_asgi_middleware(Guard, token=_settings.token, max_body_bytes=_settings.max_body_bytes)
