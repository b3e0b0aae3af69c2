"""The Bento model store: champions imported from the MLflow registry, Bentos built per model.

Model tags pin the registry version (``flight_delay:v3``), never ``:latest``, so a
running service always names exactly what it serves. The store lives under
``$FLEET_HOME/bentoml`` (``BENTOML_HOME``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet import registry
from fleet.catalog import MODELS, get_model
from fleet.settings import REPO_ROOT, TELEMETRY_OFF, Settings

TAG_ENV = "FLEET_BENTO_MODEL_TAG"
BENTOS_DIR = REPO_ROOT / "bentos"


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
                "registry": settings.tracking_uri,
            },
        )
    return tag


def champion_tags(settings: Settings) -> dict[str, str]:
    """Import every catalog model that has a champion; {model: pinned tag}."""
    return {
        name: import_champion(settings, name)
        for name in MODELS
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


def _missing(tag: str) -> StoreError:
    home = os.environ.get("BENTOML_HOME", "~/bentoml")
    return StoreError(
        f"Bento model {tag} is not in the store at {home}; run `fleet serve` (it imports "
        "the champions) or import it with bentos.store.import_champion(settings, model)"
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
        tag=str(stored.tag),
        model_name=labels.get("mlflow_model", stored.tag.name),
        version=labels.get("version", str(stored.tag.version).removeprefix("v")),
        run_id=labels.get("run_id", ""),
        window=labels.get("window", ""),
        model=model,
    )


def service_env(settings: Settings, tag: str) -> dict[str, str]:
    """Environment of a model service process: state root, store, pinned model, 1 thread."""
    env = {**os.environ, **TELEMETRY_OFF}
    env.update(
        FLEET_HOME=str(settings.root),
        BENTOML_HOME=str(bentoml_home(settings)),
        MLFLOW_TRACKING_URI=settings.tracking_uri,
        OMP_NUM_THREADS="1",  # single rows: one thread beats fighting threads (training.py)
        **{TAG_ENV: tag},
    )
    return env


def bento_model_tags(info: dict[str, Any]) -> list[str]:
    """Model tags a Bento's ``bento.yaml`` (parsed) holds, its services' included."""
    entries = list(info.get("models") or [])
    for svc in info.get("services") or []:
        entries += svc.get("models") or []
    return sorted({str(e["tag"]) for e in entries})


UV_GUARD = """#!/bin/sh
echo "modelfleet: bentoml tried to run uv ($*); Bento builds must stay offline" >&2
exit 1
"""


def _uv_dir(settings: Settings) -> Path:
    """A directory holding a ``uv`` for ``bentoml build``.

    BentoML 1.4 looks uv up on every build and, when absent, runs ``pip install uv``
    (a download). With ``lock_packages: false`` and no uv.lock in the Bento it never
    runs it, so the Makefile's private uv is used when present, else a guard that fails
    loudly should a build ever try to resolve packages.
    """
    private = REPO_ROOT / ".uv" / "bin"
    if (private / "uv").exists():
        return private
    guard = bentoml_home(settings) / "uv-guard"
    guard.mkdir(parents=True, exist_ok=True)
    script = guard / "uv"
    if not script.exists():
        script.write_text(UV_GUARD)
        script.chmod(0o755)
    return guard


def build_bento(settings: Settings, model: str, tag: str | None = None) -> str:
    """``bentoml build`` of one model's Bento with its pinned model; the Bento tag.

    ``tag`` defaults to the champion (imported first if needed). Runs the real CLI in a
    subprocess from the repository root; nothing is downloaded (no containerize).
    """
    spec = get_model(model)
    tag = tag or import_champion(settings, model)
    bentofile = BENTOS_DIR / spec.name / "bentofile.yaml"
    bentoml = Path(sys.executable).with_name("bentoml")
    env = service_env(settings, tag)
    env["PATH"] = os.pathsep.join([str(_uv_dir(settings)), env.get("PATH", "")])
    proc = subprocess.run(
        [str(bentoml), "build", "-f", str(bentofile), "-o", "tag", str(REPO_ROOT)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0:
        raise StoreError(f"bentoml build of {model} failed:\n{proc.stderr[-3000:]}")
    # "-o tag" prints "__tag__:<name>:<version>" as the last line
    last = proc.stdout.strip().splitlines()[-1]
    return last.removeprefix("__tag__:")
