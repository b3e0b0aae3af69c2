"""A plain FastAPI + uvicorn app around the same model: the serving benchmark's second peer.

``uvicorn bench.peer_app:app --workers N`` with ``FLEET_MODEL`` and
``FLEET_BENTO_MODEL_TAG`` (and ``BENTOML_HOME``) set, as a model service gets them. It
loads the same pinned Bento model, validates the same request model and answers by the
same single-record path (``fleet.fastpath``), with none of BentoML's machinery and no
prediction log: what is left between it and the model service is the framework and
the fleet's own logging, counting and guard.
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI
from pydantic import ConfigDict, create_model

from fleet import bento_store as store
from fleet import fastpath, serving, training
from fleet.catalog import get_model
from fleet.settings import Settings

spec = get_model(os.environ[store.MODEL_ENV])
training.limit_threads(1)  # as in the model services
loaded = store.load_model(os.environ[store.TAG_ENV])
predictor = fastpath.for_setting(spec, loaded.model, Settings().predict_path, loaded.example)
Request = create_model(
    f"{spec.name}_peer_request",
    __config__=ConfigDict(extra="forbid"),
    record=(serving.request_model(spec), ...),
)
app = FastAPI(title=f"{spec.name} (plain FastAPI peer)")


@app.post("/predict")
def predict(body: Request) -> dict[str, Any]:  # type: ignore[valid-type]
    (answer,) = predictor.predict_records([body.record.model_dump()])  # type: ignore[attr-defined]
    return {"model": spec.name, "version": loaded.version, "prediction": answer}


@app.get("/readyz")
def ready() -> dict[str, str]:
    return {"status": "ok", "predict_path": predictor.path}
