"""The Bento model store: champions imported from the MLflow registry.

Model tags pin the registry version (``flight_delay:v3``), never ``:latest``, so a
running service always names exactly what it serves. The store lives under
``$FLEET_HOME/bentoml`` (``BENTOML_HOME``). Bentos are built by ``bentos.build``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet import catalog, registry
from fleet.catalog import get_model
from fleet.secrets import mask_url
from fleet.settings import TELEMETRY_OFF, Settings

TAG_ENV = "FLEET_BENTO_MODEL_TAG"
MODEL_ENV = "FLEET_MODEL"  # which catalog model bentos/model/service.py serves
# "challenger": the service answers the gateway's mirrored calls, logged as shadow rows
ROLE_ENV = "FLEET_MODEL_ROLE"


class StoreError(RuntimeError):
    """The Bento store cannot give what was asked; the message says what to run."""


def bentoml_home(settings: Settings) -> Path:
    return settings.root / "bentoml"


def model_tag(model: str, version: int | str) -> str:
    """The pinned Bento model tag of a registry version."""
    return f"{get_model(model).name}:v{version}"


@contextmanager
def model_store(settings: Settings) -> Iterator[Any]:
    """BentoML's model store of ``settings`` for the duration of the block.

    BentoML memoises its store from ``BENTOML_HOME`` on first use; patching it lets one
    process (CLI, tests) work on the state root it was given rather than the first one.
    """
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.models import ModelStore

    base = bentoml_home(settings) / "models"
    base.mkdir(parents=True, exist_ok=True)
    store = ModelStore(str(base))
    with BentoMLContainer.model_store.patch(store):
        yield store


def import_champion(settings: Settings, model: str) -> str:
    """Copy the registry's ``@champion`` version into the Bento model store; its tag.

    Idempotent: an already imported version is left as it is.
    """
    info = registry.champion_info(settings, model)
    if info is None:
        raise StoreError(f"{model} has no @champion in the registry; run `fleet train {model}`")
    return import_version(settings, info)


def import_challenger(settings: Settings, model: str) -> str | None:
    """Like :func:`import_champion` for ``@challenger``; None when there is none."""
    info = registry.challenger_info(settings, model)
    return None if info is None else import_version(settings, info)


def import_version(settings: Settings, info: registry.ChampionInfo) -> str:
    """Copy one registry version into the Bento model store (idempotent); its tag."""
    model = info.model_name
    tag = model_tag(model, info.version)
    registry.client(settings)  # points MLflow at the fleet's registry
    import bentoml
    from bentoml.exceptions import NotFound

    with model_store(settings):
        try:
            bentoml.models.get(tag)
            return tag
        except NotFound:
            pass
        first, last = info.window.days
        labels = {
            "mlflow_model": model,
            "version": str(info.version),
            "run_id": info.run_id,
            "window": f"{first}..{last}",
            "window_split": info.window.split.isoformat(),
        }
        bentoml.mlflow.import_model(
            tag,
            model_uri=f"models:/{model}/{info.version}",
            labels=labels,
            metadata={
                "metric": info.metric,
                "score": info.score,
                "partitions_digest": info.partitions_digest,
                "registry": mask_url(settings.tracking_uri),
            },
        )
    return tag


def champion_tags(settings: Settings) -> dict[str, str]:
    """Import every catalog model that has a champion; {model: pinned tag}."""
    return {
        name: import_champion(settings, name)
        for name in catalog.models()
        if registry.champion_info(settings, name) is not None
    }


@dataclass(frozen=True)
class LoadedModel:
    """A pinned model loaded from the Bento store, with what responses must name."""

    tag: str
    model_name: str
    version: str
    run_id: str
    window: str
    model: Any  # the scikit-learn pipeline
    example: Any = None  # its logged input example (a frame of feature rows), if any


def _missing(tag: str) -> StoreError:
    home = os.environ.get("BENTOML_HOME", "~/bentoml")
    return StoreError(
        f"Bento model {tag} is not in the store at {home}; run `fleet serve` (it imports "
        "the champions) or import it with fleet.bento_store.import_champion(settings, model)"
    )


def require_model(tag: str) -> None:
    """Raise :class:`StoreError` saying what to run when ``tag`` is not in the store."""
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        bentoml.models.get(tag)
    except NotFound:
        raise _missing(tag) from None


def load_model(tag: str) -> LoadedModel:
    """Load ``tag`` from this process's Bento store (``BENTOML_HOME``)."""
    import bentoml
    import mlflow.sklearn
    from bentoml.exceptions import NotFound

    try:
        stored = bentoml.models.get(tag)
    except NotFound:
        raise _missing(tag) from None
    if stored.info.module not in ("bentoml.mlflow", "_bentoml_impl.frameworks.mlflow"):
        raise StoreError(f"Bento model {tag} was not imported from MLflow ({stored.info.module})")
    labels = stored.info.labels
    # the sklearn flavour, not pyfunc: predict_proba is needed for probabilities
    model = mlflow.sklearn.load_model(stored.path_of("mlflow_model"))
    return LoadedModel(
        example=_input_example(stored.path_of("mlflow_model")),
        tag=str(stored.tag),
        model_name=labels.get("mlflow_model", stored.tag.name),
        version=labels.get("version", str(stored.tag.version).removeprefix("v")),
        run_id=labels.get("run_id", ""),
        window=labels.get("window", ""),
        model=model,
    )


def _input_example(path: str) -> Any:
    """The MLflow model's input example (feature rows), None when it has none."""
    from mlflow.models import Model

    try:
        return Model.load(path).load_input_example(path)
    except Exception:  # an example is a check, never a reason not to serve
        return None


def service_env(settings: Settings, tag: str) -> dict[str, str]:
    """Environment of a model service process: state root, store, pinned model, 1 thread."""
    env = {**os.environ, **TELEMETRY_OFF}
    env.update(
        FLEET_HOME=str(settings.root),
        BENTOML_HOME=str(bentoml_home(settings)),
        MLFLOW_TRACKING_URI=settings.tracking_uri,
        OMP_NUM_THREADS="1",  # single rows: one thread beats fighting threads (training.py)
        **{TAG_ENV: tag, MODEL_ENV: tag.split(":")[0]},
    )
    return env


def bento_model_tags(info: dict[str, Any]) -> list[str]:
    """Model tags a Bento's ``bento.yaml`` (parsed) holds, its services' included."""
    entries = list(info.get("models") or [])
    for svc in info.get("services") or []:
        entries += svc.get("models") or []
    return sorted({str(e["tag"]) for e in entries})
