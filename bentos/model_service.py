"""One BentoML service class per catalog model, built from its spec.

``bentos/<model>/service.py`` is ``Service = make_service("<model>")``. Requests are
validated by the model generated from the catalog (``fleet.serving.request_model``);
the model is the Bento model pinned by ``FLEET_BENTO_MODEL_TAG`` (``flight_delay:v3``),
declared as a class attribute so that ``bentoml build`` bundles exactly that model.

No ``from __future__ import annotations`` here: BentoML reads the API methods'
annotations, which are the per-model request classes of the enclosing factory.
"""

import os
from pathlib import Path
from typing import Any

import bentoml
from fastapi import FastAPI
from pydantic import Field

from bentos import store
from fleet import serving, training
from fleet.catalog import get_model
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


def served_requests(model: str) -> int:
    """Requests answered by this service: all its workers when BentoML runs several."""
    counters = _counters()
    mp_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if mp_dir and Path(mp_dir).is_dir():
        from prometheus_client import CollectorRegistry
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=mp_dir)
        families = registry.collect()
    else:
        families = counters["requests"].collect()
    return int(
        sum(
            sample.value
            for family in families
            if family.name == "fleet_model_requests"
            for sample in family.samples
            if sample.name == "fleet_model_requests_total" and sample.labels["model"] == model
        )
    )


def pinned_tag(model: str) -> str | None:
    """The Bento model tag to serve: the env variable, else the Bento being served."""
    tag = os.environ.get(store.TAG_ENV, "").strip()
    if tag:
        return tag
    # `bentoml serve <bento>` imports src/bentos/model_service.py of the built Bento,
    # whose bento.yaml lists the one model it was built with
    bento_yaml = Path(__file__).resolve().parents[2] / "bento.yaml"
    if bento_yaml.is_file():
        import yaml

        info = yaml.safe_load(bento_yaml.read_text())
        for tag in store.bento_model_tags(info):
            if tag.split(":")[0] == model:
                return tag
    return None


def make_service(model_name: str) -> Any:
    """The BentoML service class of one catalog model."""
    spec = get_model(model_name)
    settings = Settings()
    record_type = serving.request_model(spec)
    limit = settings.max_batch_records
    tag = pinned_tag(spec.name)
    if tag is not None:
        if tag.split(":")[0] != spec.name:
            raise ValueError(f"{store.TAG_ENV}={tag} does not name a {spec.name} model")
        # fail at import with what to do, before BentoML looks for the model in a cloud
        store.require_model(tag)
    metadata_app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @bentoml.asgi_app(metadata_app, path="/")
    class ModelService:
        def __init__(self) -> None:
            if tag is None:
                raise store.StoreError(
                    f"{store.TAG_ENV} is not set: the {spec.name} service serves one pinned "
                    f"Bento model (e.g. {spec.name}:v1); run `fleet serve`, or import the "
                    "champion with bentos.store.import_champion and set the variable"
                )
            # single rows are fastest on one thread; training.limit_threads explains why
            self._threads = training.limit_threads(1)
            self.loaded = store.load_model(tag)
            self.counters = _counters()

        def _answer(self, records: list[Any], endpoint: str) -> list[dict[str, Any]]:
            answers = serving.predict(spec, self.loaded.model, serving.to_frame(spec, records))
            version = self.loaded.version
            self.counters["requests"].labels(spec.name, version, endpoint).inc()
            self.counters["records"].labels(spec.name, version).inc(len(records))
            return answers

        @bentoml.api
        def predict(self, record: record_type) -> dict[str, Any]:  # type: ignore[valid-type]
            """Predict one record; the answer names the model version that served it."""
            (answer,) = self._answer([record], "predict")
            return {"model": spec.name, "version": self.loaded.version, "prediction": answer}

        @bentoml.api
        def predict_batch(
            self,
            records: list[record_type] = Field(  # type: ignore[valid-type]  # noqa: B008 (BentoML reads it)
                ...,
                max_length=limit,
                description=f"at most {limit} records (FLEET_MAX_BATCH_RECORDS)",
            ),
        ) -> dict[str, Any]:
            """Predict a list of records, answers in request order."""
            answers = self._answer(records, "predict_batch")
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
                "features": list(spec.features),
                "requests_served": served_requests(spec.name),
            }

    if tag is not None:
        # a class attribute: `bentoml build` bundles exactly this model, never :latest
        ModelService.bento_model = bentoml.models.BentoModel(tag)
    ModelService.__name__ = ModelService.__qualname__ = record_type.__name__.replace(
        "Record", "Service"
    )
    ModelService.__doc__ = f"{spec.name}: {spec.description}."
    envs = [{"name": "OMP_NUM_THREADS", "value": "1"}]
    if tag is not None:
        envs.append({"name": store.TAG_ENV, "value": tag})
    return bentoml.service(
        name=spec.name,
        workers=spec.serving.workers,
        traffic={"timeout": REQUEST_TIMEOUT_S},
        envs=envs,
    )(ModelService)
