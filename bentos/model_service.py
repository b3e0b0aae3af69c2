"""One BentoML service class per catalog model, built from its spec.

``bentos/model/service.py`` is ``Service = make_service(served_model())``: one template
serves any model of the catalog. Requests are validated by the model generated from the
catalog (``fleet.serving.request_model``); the model is the Bento model pinned by
``FLEET_BENTO_MODEL_TAG`` (``flight_delay:v3``), declared as a class attribute so that
``bentoml build`` bundles exactly that model.

No ``from __future__ import annotations`` here: BentoML reads the API methods'
annotations, which are the per-model request classes of the enclosing factory.
"""

import contextlib
import os
import shutil
import struct
import threading
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import bentoml
from bentoml.exceptions import InvalidArgument, ServiceUnavailable
from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from pydantic import ConfigDict, Field, create_model

from bentos import runtime
from fleet import bento_store as store
from fleet import fastpath, predictions, serving, training
from fleet.catalog import get_model
from fleet.guard import Guard
from fleet.settings import Settings

# upper bound on one request inside the service (a full batch on a busy worker); the
# gateway's own per-model timeout (settings.model_timeout_s) is far shorter
REQUEST_TIMEOUT_S = 30
# prometheus_client must be imported in the worker after BentoML has set
# PROMETHEUS_MULTIPROC_DIR, so the counters are made on first use, once per process
_COUNTERS: dict[str, Any] = {}


def _counters() -> dict[str, Any]:
    if not _COUNTERS:
        from prometheus_client import Counter

        _COUNTERS["requests"] = Counter(
            "fleet_model_requests",
            "prediction requests answered by a model service",
            ["model", "version", "endpoint"],
        )
        _COUNTERS["records"] = Counter(
            "fleet_model_records",
            "records predicted by a model service",
            ["model", "version"],
        )
    return _COUNTERS


class ServedCounter:
    """Requests answered by one ``bentoml serve`` process, summed over its workers.

    Not read from Prometheus: BentoML's multiprocess directory is
    ``$BENTOML_HOME/prometheus_multiproc_dir``, shared by every service of a fleet, and
    each ``bentoml serve`` empties it when it starts. A service started later (the
    gateway, a model moved by ``fleet serve --reload``) deletes the running services'
    counter files, whose counts then read 0. Each worker writes its own count to
    ``<directory>/<pid>.count``; the directory is named after the server process.
    """

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self._fd = os.open(directory / f"{os.getpid()}.count", os.O_RDWR | os.O_CREAT, 0o644)
        os.pwrite(self._fd, struct.pack("<q", 0), 0)
        self._count = 0
        self._lock = threading.Lock()

    def increment(self) -> None:
        with self._lock:
            self._count += 1
            os.pwrite(self._fd, struct.pack("<q", self._count), 0)

    def total(self) -> int:
        total = 0
        for path in self.directory.glob("*.count"):
            with contextlib.suppress(OSError):
                data = path.read_bytes()
                if len(data) == 8:
                    total += struct.unpack("<q", data)[0]
        return total


def _server_key(pid: int) -> str | None:
    """``<pid>-<start time>`` of a live process (a reused pid gets another key)."""
    import psutil

    try:
        return f"{pid}-{int(psutil.Process(pid).create_time() * 1000)}"
    except psutil.Error:
        return None


def served_dir(settings: Settings, model: str) -> Path:
    """The counter directory of this worker's server (its parent process); directories
    of servers that are gone are removed."""
    base = settings.serving_dir / "served"
    mine = f"{model}-{_server_key(os.getppid())}"
    if base.is_dir():
        for old in base.glob(f"{model}-*"):
            pid = old.name.removeprefix(f"{model}-").split("-")[0]
            key = _server_key(int(pid)) if pid.isdigit() else None
            if old.name != mine and f"{model}-{key}" != old.name:
                shutil.rmtree(old, ignore_errors=True)
    return base / mine


def _bento_info() -> dict[str, Any] | None:
    """The ``bento.yaml`` of the Bento this code runs from, if it runs from one.

    ``bentoml serve <bento>`` imports ``src/bentos/model_service.py`` of the built Bento,
    whose ``bento.yaml`` names the model it was built for and the model it holds.
    """
    bento_yaml = Path(__file__).resolve().parents[2] / "bento.yaml"
    if not bento_yaml.is_file():
        return None
    import yaml

    return yaml.safe_load(bento_yaml.read_text())


def served_model() -> str:
    """The catalog model to serve: ``FLEET_MODEL``, else the Bento's ``model`` label."""
    name = os.environ.get(store.MODEL_ENV, "").strip()
    if not name:
        name = str(((_bento_info() or {}).get("labels") or {}).get("model", ""))
    if not name:
        raise store.StoreError(
            f"{store.MODEL_ENV} is not set: name the catalog model this service serves "
            "(e.g. FLEET_MODEL=flight_delay), or serve a Bento built by `fleet build`"
        )
    return name


def pinned_tag(model: str) -> str | None:
    """The Bento model tag to serve: the env variable, else the Bento being served."""
    tag = os.environ.get(store.TAG_ENV, "").strip()
    if tag:
        return tag
    for tag in store.bento_model_tags(_bento_info() or {}):
        if tag.split(":")[0] == model:
            return tag
    return None


def _record_dict(record: Any) -> dict[str, Any]:
    return record.model_dump() if hasattr(record, "model_dump") else dict(record)


def make_service(model_name: str) -> Any:
    """The BentoML service class of one catalog model."""
    spec = get_model(model_name)
    settings = Settings()
    record_type = serving.request_model(spec)
    limit = settings.max_batch_records
    tag = pinned_tag(spec.name)
    # a @challenger's answers go to the log as shadow rows, never into the monitors' windows
    shadow = os.environ.get(store.ROLE_ENV, "champion") == "challenger"
    if tag is not None:
        if tag.split(":")[0] != spec.name:
            raise ValueError(f"{store.TAG_ENV}={tag} does not name a {spec.name} model")
        # fail at import with what to do, before BentoML looks for the model in a cloud
        store.require_model(tag)
    metadata_app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    # the request bodies, closed: an unknown top-level field is a 400 here as at the gateway
    closed = ConfigDict(extra="forbid")
    predict_request = create_model(
        f"{spec.name}_predict_request", __config__=closed, record=(record_type, ...)
    )
    batch_request = create_model(
        f"{spec.name}_predict_batch_request",
        __config__=closed,
        records=(
            list[record_type],  # type: ignore[valid-type]
            Field(..., max_length=limit, description=f"at most {limit} records "
                  "(FLEET_MAX_BATCH_RECORDS)"),
        ),
    )  # fmt: skip

    @metadata_app.get("/docs", include_in_schema=False)
    def docs() -> RedirectResponse:
        """The API page is BentoML's index; ``/docs`` is where FastAPI users look."""
        return RedirectResponse("/")

    def _logged(
        version: str,
        request_id: str,
        record: dict[str, Any],
        answer: dict[str, Any],
        event_time: datetime | None,
    ) -> predictions.LoggedPrediction:
        return predictions.LoggedPrediction(
            model=spec.name,
            version=version,
            request_id=request_id,
            features=record,
            prediction=answer,
            event_time=event_time,
            shadow=shadow,
        )

    @bentoml.asgi_app(metadata_app, path="/")
    class ModelService:
        def __init__(self) -> None:
            runtime.cancel_request_timers()
            if tag is None:
                raise store.StoreError(
                    f"{store.TAG_ENV} is not set: the {spec.name} service serves one pinned "
                    f"Bento model (e.g. {spec.name}:v1); run `fleet serve`, or import the "
                    "champion with fleet.bento_store.import_champion and set the variable"
                )
            # single rows are fastest on one thread; training.limit_threads explains why
            self._threads = training.limit_threads(1)
            self.loaded = store.load_model(tag)
            # the fastest path that answers as the pipeline does on the model's own example
            self.predictor = fastpath.for_setting(
                spec, self.loaded.model, settings.predict_path, self.loaded.example
            )
            self.counters = _counters()
            self.served = ServedCounter(served_dir(settings, spec.name))
            self.log = predictions.PredictionLog(settings.predictions_db_url).create()
            self.recorder = predictions.PredictionRecorder(self.log)
            # one record on the event loop once known to be fast; a batch, whose size is
            # the caller's, always on a thread (fleet.serving.Offload says why)
            self.offload = {"predict": serving.Offload(), "predict_batch": serving.Offload(0.0)}
            serving.settle_heap()

        async def _answer(
            self, records: list[Any], endpoint: str, ctx: bentoml.Context
        ) -> tuple[str, list[dict[str, Any]]]:
            """Predict, log every record (committed before we answer), count; the id."""
            headers = ctx.request.headers
            try:
                request_id = predictions.request_id_of(headers.get(predictions.REQUEST_ID_HEADER))
                event_time = predictions.parse_event_time(
                    headers.get(predictions.EVENT_TIME_HEADER)
                )
            except ValueError as exc:
                raise InvalidArgument(str(exc)) from None
            plain = [_record_dict(record) for record in records]  # once: predict and log
            answers = await self.offload[endpoint].run(self.predictor.predict_records, plain)
            version = self.loaded.version
            ids = [request_id] if endpoint == "predict" else (
                predictions.batch_request_ids(request_id, len(records))
            )  # fmt: skip
            rows = [
                _logged(version, rid, record, answer, event_time)
                for rid, record, answer in zip(ids, plain, answers, strict=True)
            ]
            try:
                await self.recorder.arecord(rows)
            except predictions.PredictionLogError as exc:
                # never answer a prediction the log does not hold
                raise ServiceUnavailable(f"prediction not logged: {exc}") from exc
            ctx.response.headers[predictions.REQUEST_ID_HEADER] = request_id
            self.counters["requests"].labels(spec.name, version, endpoint).inc()
            self.counters["records"].labels(spec.name, version).inc(len(records))
            self.served.increment()
            return request_id, answers

        @bentoml.api(input_spec=predict_request)
        async def predict(
            self,
            record: record_type,  # type: ignore[valid-type]
            ctx: bentoml.Context,
        ) -> Annotated[dict[str, Any], runtime.JSON]:
            """Predict one record; the answer names the model version that served it.

            Logged with the request id of header ``X-Request-ID`` (made when absent, and
            returned in that header) and the event time of ``X-Fleet-Event-Time``.
            """
            _, (answer,) = await self._answer([record], "predict", ctx)
            return {"model": spec.name, "version": self.loaded.version, "prediction": answer}

        @bentoml.api(input_spec=batch_request)
        async def predict_batch(
            self,
            ctx: bentoml.Context,
            records: list[record_type],  # type: ignore[valid-type]
        ) -> Annotated[dict[str, Any], runtime.JSON]:
            """Predict a list of records, answers in request order.

            Each record is logged under ``<X-Request-ID>:<index>``, or under its own id when
            the header lists exactly one comma-separated id per record.
            """
            _, answers = await self._answer(records, "predict_batch", ctx)
            return {"model": spec.name, "version": self.loaded.version, "predictions": answers}

        @metadata_app.get("/metadata")
        def metadata(self) -> dict[str, Any]:
            """Which model version is served, its lineage, and how many requests so far."""
            return {
                "model": spec.name,
                "version": self.loaded.version,
                "run_id": self.loaded.run_id,
                "window": self.loaded.window,
                "bento_model_tag": self.loaded.tag,
                "role": "challenger" if shadow else "champion",
                "predict_path": self.predictor.path,
                "features": list(spec.features),
                "requests_served": self.served.total(),
                "predictions_db": self.log.display_url,
            }

        @bentoml.on_shutdown
        def close(self) -> None:
            self.recorder.close()
            self.log.dispose()

    if tag is not None:
        # a class attribute: `bentoml build` bundles exactly this model, never :latest
        ModelService.bento_model = bentoml.models.BentoModel(tag)
    ModelService.__name__ = ModelService.__qualname__ = record_type.__name__.replace(
        "Record", "Service"
    )
    ModelService.__doc__ = f"{spec.name}: {spec.description}."
    envs = [
        {"name": "OMP_NUM_THREADS", "value": "1"},
        {"name": store.MODEL_ENV, "value": spec.name},
    ]
    if tag is not None:
        envs.append({"name": store.TAG_ENV, "value": tag})
    service = bentoml.service(
        name=spec.name,
        workers=spec.serving.workers,
        traffic={"timeout": REQUEST_TIMEOUT_S},
        envs=envs,
    )(ModelService)
    # token, JSON only and the body cap, before BentoML reads a byte (fleet.guard)
    service.add_asgi_middleware(Guard, token=settings.token, max_body_bytes=settings.max_body_bytes)
    return titled(service, spec.name, tag.split(":", 1)[1] if tag else None)


def titled(service: Any, model: str, version: str | None) -> Any:
    """The API page named after the model and the version it serves, not after the Bento
    (BentoML titles it with the service name and a "None" version outside a built Bento)."""
    base = type(service)

    class Titled(base):  # type: ignore[misc,valid-type]
        __slots__ = ()

        @property
        def openapi_spec(self) -> Any:
            import attrs

            spec = base.openapi_spec.fget(self)  # type: ignore[attr-defined]
            title = f"{model} {version}" if version else f"{model} (no model pinned)"
            info = attrs.evolve(spec.info, title=title, version=version or "unpinned")
            return attrs.evolve(spec, info=info)

    service.__class__ = Titled
    return service
