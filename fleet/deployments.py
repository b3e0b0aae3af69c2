"""prefect.yaml, expanded for the catalog and kept valid.

``prefect.yaml`` holds the fleet-wide deployments under ``deployments:`` and, under
``definitions.per_model_deployments``, the entries every model gets (``{model}`` in any
string is its name). :func:`expand` makes one of each per catalog model, so adding a
model spec adds its deployments; :func:`write_expanded` writes the file that
``prefect deploy`` runs on. :func:`check_deployments` validates the expanded set the
way Prefect would run it: every entrypoint imports, every parameter set fits its flow's
signature, every work pool is known.
"""

from __future__ import annotations

import copy
import importlib
import json
from pathlib import Path
from typing import Any

import yaml

from fleet import catalog
from fleet.settings import REPO_ROOT

PREFECT_FILE = REPO_ROOT / "prefect.yaml"
PER_MODEL = "per_model_deployments"
PLACEHOLDER = "{model}"
WORK_POOL = "fleet"  # the process pool every default deployment targets
KUBERNETES_POOL = "fleet-kubernetes"
KUBERNETES_TEMPLATE = REPO_ROOT / "deploy" / "kubernetes-job-template.json"


def _fill(value: Any, model: str) -> Any:
    if isinstance(value, str):
        return value.replace(PLACEHOLDER, model)
    if isinstance(value, list):
        return [_fill(v, model) for v in value]
    if isinstance(value, dict):
        return {_fill(k, model): _fill(v, model) for k, v in value.items()}
    return value


def project(path: Path = PREFECT_FILE) -> dict[str, Any]:
    """The prefect.yaml document, anchors resolved."""
    return yaml.safe_load(path.read_text())


def expand(document: dict[str, Any], models: list[str]) -> dict[str, Any]:
    """``document`` with one copy of every per-model entry per model appended."""
    out = copy.deepcopy(document)
    templates = (document.get("definitions") or {}).get(PER_MODEL) or []
    out["deployments"] = list(out.get("deployments") or []) + [
        _fill(copy.deepcopy(entry), model) for model in models for entry in templates
    ]
    return out


def deployments(path: Path = PREFECT_FILE) -> list[dict[str, Any]]:
    """Every deployment of prefect.yaml for the catalog in use, per-model ones expanded."""
    return expand(project(path), catalog.model_names())["deployments"]


def local_deployments(path: Path = PREFECT_FILE) -> list[str]:
    """Names of the deployments that run on the stack's own `process` pool."""
    return [d["name"] for d in deployments(path) if d["work_pool"]["name"] == WORK_POOL]


def write_expanded(target: Path, path: Path = PREFECT_FILE) -> Path:
    """The expanded prefect.yaml, written to ``target`` for ``prefect deploy``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    document = expand(project(path), catalog.model_names())
    header = (
        f"# generated from {path.name} and the catalog ({catalog.catalog_dir()}); do not edit\n"
    )
    target.write_text(header + yaml.safe_dump(document, sort_keys=False))
    return target


def load_entrypoint(entrypoint: str):  # -> prefect.Flow
    """The flow object of ``path/to/module.py:name``, imported as a module of this repo."""
    path, _, attr = entrypoint.partition(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    return getattr(module, attr)


def check_deployments(path: Path = PREFECT_FILE) -> list[str]:
    """Problems of prefect.yaml, one clear line each; empty when every deployment is valid.

    Each entrypoint must import, and its parameters (with each trigger's parameters on
    top) must validate against the flow's signature; each work pool must be the local
    `process` pool or the Kubernetes pool whose template declares the job variables used.
    A fleet-wide deployment must not name a model: per-model entries are derived.
    """
    from prefect.exceptions import ParameterTypeError, SignatureMismatchError

    k8s_variables = set(json.loads(KUBERNETES_TEMPLATE.read_text())["variables"]["properties"])
    problems = []
    models = set(catalog.model_names())
    for entry in project(path).get("deployments") or []:
        named = {m for m in models if m in json.dumps(entry)}
        if named:
            problems.append(
                f"{entry.get('name')}: names model(s) {sorted(named)}; per-model deployments "
                f"belong under definitions.{PER_MODEL} with {PLACEHOLDER}"
            )
    for entry in deployments(path):
        name = entry.get("name", "<unnamed>")
        try:
            flow = load_entrypoint(entry["entrypoint"])
        except (KeyError, ImportError, AttributeError) as exc:
            problems.append(f"{name}: entrypoint {entry.get('entrypoint')!r} does not load: {exc}")
            continue
        params = entry.get("parameters") or {}
        sets = [{**params, **(t.get("parameters") or {})} for t in entry.get("triggers") or []]
        for values in sets or [params]:
            try:
                flow.validate_parameters(values)
            except (ParameterTypeError, SignatureMismatchError) as exc:
                message = " ".join(str(exc).split())
                problems.append(f"{name}: parameters {values} do not fit {flow.name}: {message}")
        pool = entry.get("work_pool") or {}
        if pool.get("name") == KUBERNETES_POOL:
            unknown = set(pool.get("job_variables") or {}) - k8s_variables
            if unknown:
                problems.append(
                    f"{name}: job variables {sorted(unknown)} are not in {KUBERNETES_TEMPLATE.name}"
                )
        elif pool.get("name") != WORK_POOL:
            problems.append(
                f"{name}: work pool {pool.get('name')!r} is neither {WORK_POOL!r} "
                f"nor {KUBERNETES_POOL!r}"
            )
    return problems
