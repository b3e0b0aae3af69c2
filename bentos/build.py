"""``fleet build``: a self-contained Bento per model, and one for the gateway.

Each build assembles a folder holding the whole ``fleet`` and ``bentos`` packages (from
wherever they are installed), the catalog in use (``FLEET_CATALOG``) as ``catalog/``,
and the service's ``bentofile.yaml`` from its template with the derived parts filled
in: name, labels (registry version, run id, training window) and the Python packages,
the service runtime pinned from ``uv.lock`` (:func:`requirements`). ``bentoml build``
then runs on that folder, offline. The Bento serves from an empty folder in a fresh
environment made from its own ``env/python/requirements.txt``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

import bentos
import fleet
from fleet import bento_store as store
from fleet import catalog, registry
from fleet.lockfile import pinned_closure
from fleet.settings import Settings

TEMPLATES = Path(bentos.__file__).resolve().parent
GATEWAY = "gateway"
# What the services import at run time: serving, the Bento model store, MLflow's model
# loading (skinny: no tracking server), the pickled pipelines, the stores. Versions and
# everything these need come from uv.lock.
SERVICE_PACKAGES = (
    "bentoml",
    "mlflow-skinny",
    "scikit-learn",
    "pandas",
    "numpy",
    "scipy",
    "treelite",
    "cloudpickle",
    "pydantic",
    "pydantic-settings",
    "pyyaml",
    "sqlalchemy",
    "psycopg[binary]",
    "aiohttp",
    "psutil",
)
UV_GUARD = """#!/bin/sh
echo "modelfleet: bentoml tried to run uv ($*); Bento builds must stay offline" >&2
exit 1
"""


class BuildError(store.StoreError):
    """``bentoml build`` failed; the message carries its output."""


@dataclass(frozen=True)
class Built:
    """One built Bento: its tag, where it lives in the store, how long the build took."""

    name: str
    tag: str
    path: Path
    seconds: float
    labels: dict[str, str]


def requirements() -> list[str]:
    """The services' runtime, every package pinned to its locked version."""
    return pinned_closure(list(SERVICE_PACKAGES))


def _copy_package(package: Any, dest: Path) -> None:
    src = Path(package.__file__).resolve().parent
    shutil.copytree(src, dest / src.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def build_context(kind: str, dest: Path, name: str, labels: dict[str, str], doc: str) -> Path:
    """The build folder of one Bento: packages, catalog and the filled-in bentofile."""
    dest.mkdir(parents=True, exist_ok=True)
    _copy_package(fleet, dest)
    _copy_package(bentos, dest)
    shutil.copytree(
        catalog.catalog_dir(), dest / "catalog", ignore=shutil.ignore_patterns("__pycache__")
    )
    config = yaml.safe_load((TEMPLATES / kind / "bentofile.yaml").read_text())
    config["name"] = name
    config["description"] = doc
    config["labels"] = {"project": "modelfleet", **labels}
    config.setdefault("python", {})["packages"] = requirements()
    (dest / "bentofile.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return dest


def _uv_dir(settings: Settings) -> Path:
    """A directory holding a ``uv`` for ``bentoml build``.

    BentoML 1.4 looks uv up on every build and, when absent, runs ``pip install uv``
    (a download). With ``lock_packages: false`` it never runs it, so the Makefile's
    private uv is used when present, else a guard that fails loudly should a build ever
    try to resolve packages.
    """
    private = Path(fleet.__file__).resolve().parent.parent / ".uv" / "bin"
    if (private / "uv").exists():
        return private
    guard = store.bentoml_home(settings) / "uv-guard"
    guard.mkdir(parents=True, exist_ok=True)
    script = guard / "uv"
    if not script.exists():
        script.write_text(UV_GUARD)
        script.chmod(0o755)
    return guard


def _bentoml_build(settings: Settings, context: Path, env: dict[str, str]) -> str:
    bentoml_cli = Path(sys.executable).with_name("bentoml")
    env = {
        **os.environ,
        **env,
        "BENTOML_HOME": str(store.bentoml_home(settings)),
        "FLEET_HOME": str(settings.root),
        # the service is imported at build time: from the copied catalog, as when served
        "FLEET_CATALOG": str(context / "catalog"),
        "PATH": os.pathsep.join([str(_uv_dir(settings)), os.environ.get("PATH", "")]),
    }
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [str(bentoml_cli), "build", "-f", "bentofile.yaml", "-o", "tag", "."],
        cwd=context,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        raise BuildError(f"bentoml build failed in {context}:\n{proc.stderr[-3000:]}")
    # "-o tag" prints "__tag__:<name>:<version>" as the last line
    return proc.stdout.strip().splitlines()[-1].removeprefix("__tag__:")


def bento_path(settings: Settings, tag: str) -> Path:
    name, _, version = tag.partition(":")
    return store.bentoml_home(settings) / "bentos" / name / version


def _build(settings: Settings, kind: str, name: str, labels: dict[str, str], doc: str,
           env: dict[str, str]) -> Built:  # fmt: skip
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"bento-{name}-") as tmp:
        context = build_context(kind, Path(tmp) / name, name, labels, doc)
        tag = _bentoml_build(settings, context, env)
    seconds = round(time.perf_counter() - started, 1)
    return Built(name, tag, bento_path(settings, tag), seconds, labels)


def build_model(settings: Settings, model: str) -> Built:
    """The Bento of one model's ``@champion`` (imported into the model store first)."""
    spec = catalog.get_model(model)
    tag = store.import_champion(settings, spec.name)
    info = registry.champion_info(settings, spec.name)
    assert info is not None  # import_champion raised otherwise
    first, last = info.window.days
    labels = {
        "model": spec.name,
        "registry_version": str(info.version),
        "run_id": info.run_id,
        "window": f"{first}..{last}",
        "bento_model": tag,
        "dataset": spec.dataset.name,
    }
    env = {store.MODEL_ENV: spec.name, store.TAG_ENV: tag}
    return _build(settings, "model", spec.name, labels, f"{spec.name}: {spec.description}", env)


def build_gateway(settings: Settings) -> Built:
    """The gateway's Bento: routing for every catalog model, no model inside."""
    labels = {"component": GATEWAY, "models": ",".join(catalog.model_names())}
    doc = "The modelfleet gateway: each request goes only to the models it needs"
    return _build(settings, GATEWAY, GATEWAY, labels, doc, {})
