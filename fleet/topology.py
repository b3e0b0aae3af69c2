"""What ``fleet serve`` starts for a placement plan, as plain data, and how a running
fleet moves from one plan to another.

A plan (``fleet.placement``) puts each model on a service of its own (``dedicated``:
one ``bentoml serve`` process with a number of workers, its port from
``model_port_base``) or in the gateway's process (``shared``). The gateway routes to
both in one request: it reads the URLs of the dedicated models from the backends file
and the pinned Bento tags of the shared ones from the tags file, and re-reads either
when it changes. ``micro`` (every model dedicated, workers from its spec) and ``mono``
(every model shared) are the two extreme plans.

A model with a ``@challenger`` gets it served beside the champion: a dedicated model's
on a service ``<model>.challenger`` on a free port (``FLEET_MODEL_ROLE=challenger``), a
shared model's in the gateway; either way under the routes key ``<model>@challenger``,
which the gateway mirrors traffic to (``bentos/gateway/service.py``).

The Bento model tags are inputs: importing champions into the Bento store is the
caller's step, so planning stays free of bentoml and MLflow.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from fleet import catalog, placement, processes
from fleet.bento_store import ROLE_ENV
from fleet.catalog import get_model, model_port
from fleet.files import write_text_atomic
from fleet.placement import Placement
from fleet.processes import Launch, Running
from fleet.routing import challenger_route, parse_route
from fleet.settings import REPO_ROOT, Settings

Topology = Literal["micro", "mono"]
TOPOLOGIES: tuple[str, ...] = ("micro", "mono")  # the two extreme placements
GATEWAY = "gateway"
MODEL_SERVICE = "bentos.model.service:Service"  # one template serves any model
BACKENDS_FILE_ENV = "FLEET_GATEWAY_BACKENDS_FILE"
TAGS_FILE_ENV = "FLEET_BENTO_MODEL_TAGS_FILE"
WORKERS_ENV = "BENTOML_CONFIG_OVERRIDES"
CHALLENGER = "challenger"  # a component's role: its answers are mirrored, never returned


def challenger_component(model: str) -> str:
    """The component name of ``model``'s challenger service (micro)."""
    return f"{model}.{CHALLENGER}"


def is_challenger(component: Running | Launch) -> bool:
    return component.meta.get("role") == CHALLENGER


@dataclass(frozen=True)
class Plan:
    topology: Topology
    models: list[str]
    launches: list[Launch]  # models first, gateway last: it needs its backends up
    files: dict[Path, dict[str, str]] = field(default_factory=dict)  # written before start
    placement: Placement | None = None

    @property
    def names(self) -> list[str]:
        return [launch.name for launch in self.launches]


def bentoml_executable() -> str:
    """The ``bentoml`` next to this interpreter (the project venv), else from PATH."""
    beside = Path(sys.executable).parent / "bentoml"
    if beside.exists():
        return str(beside)
    found = shutil.which("bentoml")
    if found is None:
        raise FileNotFoundError("no `bentoml` executable beside the interpreter or on PATH")
    return found


def service_env(settings: Settings) -> dict[str, str]:
    """Environment every service process gets on top of the inherited one."""
    return {
        "FLEET_HOME": str(settings.root),
        "FLEET_CATALOG": str(catalog.catalog_dir()),
        "MLFLOW_TRACKING_URI": settings.tracking_uri,
        # the store fleet.bento_store.import_champion writes to
        "BENTOML_HOME": str(settings.root / "bentoml"),
        # single-row predicts: HistGradientBoosting threads cost more than they give
        "OMP_NUM_THREADS": "1",
        "BENTOML_DO_NOT_TRACK": "true",
        "FLEET_RESULTS_URL": settings.results_db_url,
        # every service logs its predictions here (fleet.predictions)
        "FLEET_PREDICTIONS_URL": settings.predictions_db_url,
        "FLEET_MODEL_TIMEOUT_S": str(settings.model_timeout_s),
        "FLEET_MAX_BATCH_RECORDS": str(settings.max_batch_records),
    }


def model_env(model: str, tag: str) -> dict[str, str]:
    """What tells the service template which model and which pinned version to serve."""
    return {"FLEET_MODEL": model, "FLEET_BENTO_MODEL_TAG": tag}


def backends_file(settings: Settings) -> Path:
    """The gateway's model URLs (micro); rewritten by a rolling update."""
    return settings.serving_dir / "backends.json"


def tags_file(settings: Settings) -> Path:
    """The gateway's in-process model tags (mono); rewritten by an update."""
    return settings.serving_dir / "model_tags.json"


def write_json(path: Path, data: dict[str, str]) -> None:
    """Atomic write: the gateway never reads half a file."""
    write_text_atomic(path, json.dumps(data, indent=2))


class _ServingLock:
    """An exclusive file lock on ``<serving_dir>/serving.lock``, reentrant in one process.

    Every change to the serving state (start, reload, restart, stop) holds it, across
    processes (``fcntl.flock``: released by the kernel if its holder dies), so two
    reloads, or a reload and the supervisor's restart, never interleave their writes of
    the backends file, the tags file and the pid files.
    """

    def __init__(self) -> None:
        self._mutex = threading.RLock()
        self._held: dict[Path, tuple[int, int]] = {}  # path -> (fd, depth)

    @contextlib.contextmanager
    def hold(self, settings: Settings, timeout: float = 600.0) -> Iterator[None]:
        path = settings.serving_dir / "serving.lock"
        with self._mutex:
            fd, depth = self._held.get(path, (-1, 0))
            if depth == 0:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
                deadline = time.monotonic() + timeout
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            os.close(fd)
                            raise processes.ProcessError(
                                f"another fleet command holds {path} for more than "
                                f"{timeout:.0f} s (a reload or restart); try again"
                            ) from None
                        time.sleep(0.1)
            self._held[path] = (fd, depth + 1)
            try:
                yield
            finally:
                fd, depth = self._held[path]
                if depth == 1:
                    del self._held[path]
                    fcntl.flock(fd, fcntl.LOCK_UN)
                    os.close(fd)
                else:
                    self._held[path] = (fd, depth - 1)


_LOCK = _ServingLock()


def serving_lock(settings: Settings, timeout: float = 600.0) -> contextlib.AbstractContextManager:
    """Hold the serving state's lock for the block (see :class:`_ServingLock`)."""
    return _LOCK.hold(settings, timeout)


def resolve_models(names: list[str] | None) -> list[str]:
    """Requested model names in catalog order; all of them when none are named."""
    if not names:
        return catalog.model_names()
    wanted = {get_model(name).name for name in names}  # KeyError names the unknown one
    return [name for name in catalog.model_names() if name in wanted]


def serve_command(target: str, host: str, port: int) -> list[str]:
    return [bentoml_executable(), "serve", target, "--host", host, "--port", str(port)]


def plan(
    settings: Settings,
    topology: Topology | Placement,
    models: list[str],
    tags: dict[str, str],
    challengers: dict[str, str] | None = None,
) -> Plan:
    """The launches of ``topology`` (``micro``, ``mono`` or a placement plan) for
    ``models`` (catalog order), given their Bento tags, and the challengers of those
    models (model -> tag) served beside them: a dedicated model's on a service of its
    own, a shared model's in the gateway."""
    if isinstance(topology, str):
        if topology not in TOPOLOGIES:
            raise ValueError(
                f"unknown topology {topology!r}; choose one of {', '.join(TOPOLOGIES)}"
            )
        placed = placement.micro(models) if topology == "micro" else placement.mono(models)
    else:
        placed = topology
    models = resolve_models([m for m in models if m in placed.models])
    missing = [m for m in models if m not in tags]
    if missing:
        raise ValueError(f"no Bento model tag for: {', '.join(missing)}")
    shadows = {name: tag for name, tag in (challengers or {}).items() if name in models}
    dedicated = {m: w for m, w in placed.dedicated.items() if m in models}
    launches: list[Launch] = []
    urls: dict[str, str] = {}
    in_process: dict[str, str] = {}
    for name in models:
        if name in dedicated:
            port = model_port(settings.model_port_base, name)
            launches.append(model_launch(settings, name, tags[name], port, workers=dedicated[name]))
            urls[name] = launches[-1].url
        else:
            in_process[name] = tags[name]
    for name, tag in shadows.items():
        if name in dedicated:
            port = processes.free_port(settings.serve_host)
            launches.append(
                model_launch(settings, name, tag, port, challenger_component(name), challenger=True)
            )
            urls[challenger_route(name)] = launches[-1].url
        else:
            in_process[challenger_route(name)] = tag
    # the files are how a move re-points the running gateway (see update and move)
    files = {backends_file(settings): urls, tags_file(settings): in_process}
    launches.append(gateway_launch(settings, urls, in_process, placed.gateway_workers))
    return Plan(topology=placed.topology, models=models, launches=launches, files=files,
                placement=placed)  # fmt: skip


def workers_override(service: str, workers: int) -> dict[str, str]:
    """BentoML's own setting for a service's worker processes."""
    return {WORKERS_ENV: json.dumps({"services": {service: {"workers": workers}}})}


def model_launch(
    settings: Settings,
    name: str,
    tag: str,
    port: int,
    component: str | None = None,
    challenger: bool = False,
    workers: int | None = None,
) -> Launch:
    """One model's service: the template serving ``tag`` on ``port`` with ``workers``
    (default: its spec's); a ``challenger`` logs its answers as shadow rows."""
    host = settings.serve_host
    env = {**service_env(settings), **model_env(name, tag)}
    meta = {"tag": tag}
    if workers is not None and workers != get_model(name).serving.workers:
        env |= workers_override(name, workers)
        meta["workers"] = str(workers)
    if challenger:
        env[ROLE_ENV] = meta["role"] = CHALLENGER
    return Launch(
        name=component or name,
        command=serve_command(MODEL_SERVICE, host, port),
        host=host,
        port=port,
        env=env,
        meta=meta,
        cwd=REPO_ROOT,
        port_hint="--model-port-base or FLEET_MODEL_PORT_BASE",
    )


def launch_workers(component: Running | Launch) -> int:
    """The workers a model component runs with."""
    workers = component.meta.get("workers")
    return int(workers) if workers else get_model(component.name.split(".")[0]).serving.workers


def gateway_launch(
    settings: Settings, urls: dict[str, str], tags: dict[str, str], workers: int = 1
) -> Launch:
    """The gateway: ``urls`` of the remote (dedicated) models and pinned Bento model
    ``tags`` of the in-process (shared) ones.

    It re-reads both files while it runs, so a restart from the files' current content
    picks up every move made since it first started.
    """
    mode = "hybrid" if urls and tags else ("mono" if tags else "micro")
    env = {
        **service_env(settings),
        "FLEET_GATEWAY_MODE": mode,
        BACKENDS_FILE_ENV: str(backends_file(settings)),
        TAGS_FILE_ENV: str(tags_file(settings)),
    }
    if urls:
        env["FLEET_GATEWAY_BACKENDS"] = json.dumps(urls)
    if tags:
        env["FLEET_BENTO_MODEL_TAGS"] = json.dumps(tags)
    meta = {"tags": json.dumps(tags)} if tags else {}
    if workers != 1:
        env |= workers_override(GATEWAY, workers)
        meta["workers"] = str(workers)
    return Launch(
        name=GATEWAY,
        command=serve_command("bentos.gateway.service:Service", settings.serve_host,
                              settings.gateway_port),
        host=settings.serve_host,
        port=settings.gateway_port,
        env=env,
        cwd=REPO_ROOT,
        port_hint="--gateway-port or FLEET_GATEWAY_PORT",
        meta=meta,
    )  # fmt: skip


def running(settings: Settings) -> list[Running]:
    """Recorded components whose process still runs."""
    return [r for r in processes.read_pid_files(settings) if processes.is_alive(r)]


def start_plan(
    settings: Settings, plan: Plan, timeout: float = 120.0, supervise: bool = True
) -> list[Running]:
    """Start every launch of ``plan`` and wait until each answers /readyz.

    All ports are checked before anything starts. Models start together (their loads
    overlap), the gateway once they are healthy. On any failure everything this call
    started is stopped again, so a failed start leaves no process behind. Then the
    supervisor (``fleet.supervisor``) watches them, unless ``supervise`` is False.
    """
    with serving_lock(settings):
        for launch in plan.launches:
            processes.check_port(launch)
        for path, data in plan.files.items():
            write_json(path, data)
        started: list[Running] = []
        try:
            models = [launch for launch in plan.launches if launch.name != GATEWAY]
            gateway = [launch for launch in plan.launches if launch.name == GATEWAY]
            for group in (models, gateway):
                batch = [processes.start(settings, launch, plan.topology) for launch in group]
                started.extend(batch)
                deadline = time.monotonic() + timeout
                for component in batch:
                    processes.wait_healthy(component, max(1.0, deadline - time.monotonic()))
        except BaseException:
            for component in reversed(started):
                processes.stop(settings, component)
            raise
    if supervise:
        from fleet import supervisor

        supervisor.ensure_running(settings)
    return started


def relaunch(settings: Settings, component: Running) -> Launch:
    """The launch that starts ``component`` again as it is now: same name, port and
    workers, the model's pinned tag, the gateway's current backends and tags files."""
    if component.name == GATEWAY:
        urls = _read_routes(backends_file(settings))
        tags = _read_routes(tags_file(settings), json.loads(component.meta.get("tags", "{}")))
        at_port = settings.model_copy(update={"gateway_port": component.port})
        return gateway_launch(at_port, urls, tags, int(component.meta.get("workers", 1)))
    model = component.name.split(".")[0]  # "<model>.next" during a reload
    return model_launch(
        settings, model, component.meta["tag"], component.port, component.name,
        challenger=is_challenger(component), workers=launch_workers(component),
    )  # fmt: skip


def restart(settings: Settings, component: Running, timeout: float = 180.0) -> Running:
    """Stop whatever is left of ``component`` (its port freed) and start it again there.

    Call under :func:`serving_lock`.
    """
    processes.stop(settings, component)
    try:
        fresh = processes.start(settings, relaunch(settings, component), component.topology)
    except processes.ProcessError:
        processes.write_pid_file(settings, component)  # still ours to bring back
        raise
    try:
        processes.wait_healthy(fresh, timeout)
    except processes.ProcessError:
        processes.stop(settings, fresh)
        processes.write_pid_file(settings, component)
        raise
    return fresh


def stop_fleet(settings: Settings, grace: float = 15.0) -> list[tuple[Running, bool]]:
    """Stop the supervisor first (so nothing is restarted), then every component."""
    from fleet import supervisor

    supervisor.stop(settings)
    with serving_lock(settings):
        return processes.stop_all(settings, grace)


@dataclass(frozen=True)
class Swap:
    """One model (or ``<model>@challenger``) moved to a new pinned version by an update;
    ``new_tag`` None: a challenger stopped, ``old_tag`` None: one started."""

    model: str
    old_tag: str | None
    new_tag: str | None
    url: str  # where the new version is served (the gateway's URL in mono)

    def text(self) -> str:
        if self.new_tag is None:
            return f"{self.model}: {self.old_tag} stopped"
        if self.old_tag is None:
            return f"{self.model}: {self.new_tag} started ({self.url})"
        return f"{self.model}: {self.old_tag} -> {self.new_tag} ({self.url})"


def gateway_metadata(
    url: str, timeout: float = 2.0, headers: dict[str, str] | None = None
) -> dict[str, Any] | None:
    """The gateway's GET /metadata, or None when it does not answer."""
    request = urllib.request.Request(url + "/metadata", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _wait_gateway(
    settings: Settings,
    gateway: Running,
    model: str,
    key: str,
    value: str | None,
    timeout: float,
    table: str = "backends",
) -> None:
    """Until the gateway's /metadata shows ``table[model][key] == value`` (None: until
    ``model`` is gone from ``table``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        meta = gateway_metadata(gateway.url, headers=settings.auth_headers())
        if meta is not None:
            entry = meta.get(table, {}).get(model)
            if (entry is None) if value is None else str((entry or {}).get(key)) == value:
                return
        time.sleep(0.2)
    raise processes.ProcessError(
        f"the gateway did not switch {model} ({table}) to {value} within {timeout:.0f} s "
        f"(it re-reads {BACKENDS_FILE_ENV} / {TAGS_FILE_ENV}); see {gateway.log}"
    )


def _running_gateway(settings: Settings) -> Running:
    components = {r.name: r for r in running(settings)}
    if GATEWAY not in components:
        raise processes.ProcessError("the fleet is not running; start it with `fleet serve`")
    return components[GATEWAY]


def shared_tags(gateway: Running) -> dict[str, str]:
    """The gateway's in-process routes (shared models and their challengers)."""
    return json.loads(gateway.meta.get("tags", "{}"))


def dedicated_components(settings: Settings) -> dict[str, Running]:
    """The running services of dedicated models (challengers and moves in progress not
    included), by model."""
    models = catalog.models()
    return {r.name: r for r in running(settings) if r.name in models}


def served_models(settings: Settings) -> list[str]:
    """Models the running fleet serves, dedicated or shared, catalog order."""
    gateway = _running_gateway(settings)
    names = [k for k in shared_tags(gateway) if not parse_route(k)[1]]
    names += list(dedicated_components(settings))
    return resolve_models(names) if names else []


def update(
    settings: Settings,
    tags: dict[str, str],
    timeout: float = 120.0,
    grace: float = 15.0,
    challengers: dict[str, str | None] | None = None,
) -> list[Swap]:
    """Move the running fleet to ``tags`` (and the challengers named in ``challengers``:
    model -> tag, None for none), under the serving lock (see :func:`_update`)."""
    with serving_lock(settings):
        swaps = _update(settings, tags, timeout, grace, challengers)
    return swaps


def _update(
    settings: Settings,
    tags: dict[str, str],
    timeout: float,
    grace: float,
    challengers: dict[str, str | None] | None = None,
) -> list[Swap]:
    """Move the running fleet to ``tags`` without failing requests; the models moved.

    micro, per model whose pinned tag differs: start the new version on a free port,
    wait for /readyz, re-point the gateway (backends file), wait until the gateway
    reports the new URL and until calls already sent to the old version have finished
    or timed out, then stop the old process. mono: rewrite the tags file and wait until
    the gateway reports the new versions loaded. A failed step leaves the old version
    serving. Challengers follow (:func:`_sync_challengers`): a shadow has no callers
    waiting on it, so the old one stops before the new one starts.
    """
    gateway = _running_gateway(settings)
    dedicated = dedicated_components(settings)
    swaps = []
    for name, old in dedicated.items():
        new_tag = tags.get(name)
        if new_tag is None or old.meta.get("tag") == new_tag:
            continue
        swaps.append(_swap_service(settings, gateway, old, new_tag, launch_workers(old), timeout,
                                   grace))  # fmt: skip
    if challengers is not None:
        wanted = {name: tag for name, tag in challengers.items() if name in dedicated}
        swaps += _sync_challengers(settings, gateway, wanted, timeout, grace)
    shared = {name: tag for name, tag in tags.items() if name not in dedicated}
    shadows = {n: t for n, t in (challengers or {}).items() if n not in dedicated}
    return swaps + _update_shared(settings, gateway, shared, timeout, shadows)


def _swap_service(
    settings: Settings,
    gateway: Running,
    old: Running,
    tag: str,
    workers: int,
    timeout: float,
    grace: float,
) -> Swap:
    """A dedicated model's service replaced by one serving ``tag`` with ``workers``,
    without failing a request: the new one starts on a free port, the gateway is
    re-pointed once it is healthy, and the old one stops once calls sent to it have
    finished or timed out. A failed step leaves the old one serving."""
    name = old.name
    port = processes.free_port(settings.serve_host)
    launch = model_launch(settings, name, tag, port, component=f"{name}.next", workers=workers)
    new = processes.start(settings, launch, old.topology)
    path = backends_file(settings)
    try:
        processes.wait_healthy(new, timeout)
        write_json(path, {**_read_routes(path), name: new.url})
        _wait_gateway(settings, gateway, name, "url", new.url, timeout=10)
    except BaseException:
        write_json(path, {**_read_routes(path), name: old.url})
        processes.stop(settings, new)
        raise
    # a call sent to the old version just before the switch ends within the timeout
    time.sleep(settings.model_timeout_s + 0.5)
    processes.stop(settings, old, grace)
    processes.rename(settings, new, name)
    return Swap(name, old.meta.get("tag"), tag, new.url)


def _read_routes(path: Path, default: dict[str, str] | None = None) -> dict[str, str]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return dict(default or {})


def _sync_challengers(
    settings: Settings,
    gateway: Running,
    wanted: dict[str, str | None],
    timeout: float,
    grace: float,
) -> list[Swap]:
    """micro: serve exactly the ``wanted`` challenger of each named model (None: none).

    A challenger that changes or goes is taken out of the gateway's routes and stopped;
    a new one is started on a free port, and routed once healthy. A failure leaves the
    model without a challenger (its champion is untouched) and is raised.
    """
    # recorded, dead or alive: a dead challenger the supervisor would restart goes too
    components = {r.name: r for r in processes.read_pid_files(settings)}
    path = backends_file(settings)
    swaps = []
    for name, tag in wanted.items():
        route = challenger_route(name)
        old = components.get(challenger_component(name))
        old_tag = old.meta.get("tag") if old is not None else None
        if old_tag == tag:
            continue
        if old is not None:
            write_json(path, {k: v for k, v in _read_routes(path).items() if k != route})
            _wait_gateway(settings, gateway, name, "url", None, timeout=10, table="challengers")
            processes.stop(settings, old, grace)
        url = ""
        if tag is not None:
            port = processes.free_port(settings.serve_host)
            launch = model_launch(settings, name, tag, port, challenger_component(name), True)
            new = processes.start(settings, launch, "micro")
            try:
                processes.wait_healthy(new, timeout)
                write_json(path, {**_read_routes(path), route: new.url})
                _wait_gateway(settings, gateway, name, "url", new.url, timeout=10,
                              table="challengers")  # fmt: skip
            except BaseException:
                write_json(path, {k: v for k, v in _read_routes(path).items() if k != route})
                processes.stop(settings, new)
                raise
            url = new.url
        swaps.append(Swap(route, old_tag, tag, url))
    return swaps


def _update_shared(
    settings: Settings,
    gateway: Running,
    tags: dict[str, str],
    timeout: float,
    challengers: dict[str, str | None] | None = None,
) -> list[Swap]:
    served = json.loads(gateway.meta.get("tags", "{}"))
    wanted = {}
    for key, tag in served.items():
        model, shadow = parse_route(key)
        wanted[key] = tag if shadow else tags.get(model, tag)
    for model, tag in (challengers or {}).items():
        if model in wanted:  # challengers of served models only
            wanted.pop(challenger_route(model), None)
            if tag is not None:
                wanted[challenger_route(model)] = tag
    changed = [key for key in wanted if wanted[key] != served.get(key)]
    removed = [key for key in served if key not in wanted]
    if not changed and not removed:
        return []
    write_json(tags_file(settings), wanted)
    try:
        for key in changed + removed:
            model, shadow = parse_route(key)
            _wait_gateway(settings, gateway, model, "tag", wanted.get(key), timeout,
                          table="challengers" if shadow else "backends")  # fmt: skip
    except BaseException:
        write_json(tags_file(settings), served)
        raise
    processes.write_pid_file(
        settings, replace(gateway, meta={**gateway.meta, "tags": json.dumps(wanted)})
    )
    return [Swap(key, served.get(key), wanted.get(key), gateway.url) for key in changed + removed]


# --- the whole step on the current champions, for the CLI, `fleet up` and the replay ---


class Exposed(processes.ProcessError):
    """A non-loopback bind was asked for without the authentication it needs."""


def refuse_exposure(settings: Settings, stack: bool = False) -> None:
    """Refuse to bind beyond loopback without authentication; the message says what to set."""
    missing = settings.exposure_problems(stack)
    if missing:
        raise Exposed(
            f"FLEET_SERVE_HOST={settings.serve_host} would expose the fleet without "
            f"authentication; set {', '.join(missing)} (docs/operations.md, Security), "
            "or serve on 127.0.0.1"
        )


class NoChampion(processes.ProcessError):
    """A model to serve has no @champion yet."""


def start_fleet(
    settings: Settings,
    topology: str | Placement = "micro",
    names: list[str] | None = None,
    timeout: float = 180.0,
) -> tuple[list[Running], bool]:
    """Serve the champions of ``names`` (default: all, or what the plan places) by
    ``topology`` (``micro``, ``mono`` or a placement plan) and wait until healthy.

    Returns the components and whether they were started now (False: the same fleet
    was already running and healthy). Anything else already running is an error. The
    plan is written to the serving state (``fleet.placement.state_file``).
    """
    if isinstance(topology, str):
        if topology not in TOPOLOGIES:
            raise ValueError(
                f"unknown topology {topology!r}; choose one of: {', '.join(TOPOLOGIES)}"
            )
        models = resolve_models(names)
        placed = placement.micro(models) if topology == "micro" else placement.mono(models)
    else:
        placed = topology
        models = resolve_models(names or list(placed.models))
    refuse_exposure(settings)
    wanted = {m for m in placed.dedicated if m in models} | {GATEWAY}
    already = running(settings)
    if already:
        names_up = {r.name for r in already if not is_challenger(r)}
        current = placement.read_state(settings)
        same_plan = current is None or (
            current.dedicated == placed.dedicated and set(current.models) == set(models)
        )
        if names_up == wanted and same_plan and all(processes.is_healthy(r.url) for r in already):
            return already, False
        found = ", ".join(f"{r.name} (pid {r.pid}, {r.url})" for r in already)
        raise processes.ProcessError(
            f"already running: {found}; run `fleet stop` first, or move it with "
            "`fleet serve --placement FILE|auto|micro|mono`"
        )

    from fleet.bento_store import import_challenger, import_champion
    from fleet.registry import champion_info

    missing = [name for name in models if champion_info(settings, name) is None]
    if missing:
        hints = "; ".join(f"run `fleet train {name}` first" for name in missing)
        raise NoChampion(f"no @champion yet for {', '.join(missing)}: {hints}")
    tags = {name: import_champion(settings, name) for name in models}
    shadows = {name: import_challenger(settings, name) for name in models}
    challengers = {name: tag for name, tag in shadows.items() if tag is not None}
    fleet_plan = plan(settings, placed, models, tags, challengers)
    started = start_plan(settings, fleet_plan, timeout=timeout)
    placement.write_state(settings, placed)
    return started, True


# --- moving a running fleet: another plan, another worker count ------------------------


def move(
    settings: Settings, target: Placement, timeout: float = 180.0, grace: float = 15.0
) -> list[str]:
    """Move the running fleet to ``target`` without failing a request; what was done.

    Per model whose placement changes: shared -> dedicated starts its service (the
    version the gateway serves), routes the model to it once healthy and only then
    drops it from the gateway's in-process table; dedicated -> shared loads it in the
    gateway, waits until the gateway serves it there, then unroutes and stops the
    service once calls sent to it have finished; a dedicated model with another worker
    count is replaced by a service with that many (:func:`scale`). A model's challenger
    follows it. The gateway keeps its own workers (a restart would drop requests); each
    of them loads a shared model on its own, and one that has not finished when the
    model's service is unrouted waits for it (``bentos/gateway/service.py``).
    """
    from fleet.bento_store import import_challenger

    with serving_lock(settings):
        served = served_models(settings)
        unknown = [m for m in target.models if m not in served]
        if unknown:
            raise processes.ProcessError(
                f"the running fleet does not serve {', '.join(unknown)}; serve them with "
                "`fleet stop`, then `fleet serve --placement ...`"
            )
        dedicated = dedicated_components(settings)
        steps: list[str] = []
        for name, want in target.models.items():
            is_dedicated = name in dedicated
            if want.kind == "dedicated" and is_dedicated:
                if launch_workers(dedicated[name]) != want.workers:
                    steps.append(_scale(settings, dedicated[name], want.workers, timeout, grace))
                continue
            if (want.kind == "dedicated") == is_dedicated:
                continue  # shared and staying shared
            shadow = import_challenger(settings, name)
            if shadow is not None:  # it follows its model: stopped here, started there
                _update(settings, {}, timeout, grace, {name: None})
            gateway = _running_gateway(settings)
            if want.kind == "dedicated":
                steps.append(_to_dedicated(settings, gateway, name, want.workers, timeout))
            else:
                steps.append(_to_shared(settings, gateway, dedicated[name], timeout, grace))
            if shadow is not None:
                _update(settings, {}, timeout, grace, {name: shadow})
        gateway = _running_gateway(settings)
        processes.write_pid_file(settings, replace(gateway, topology=_now_topology(settings)))
        gateway_workers = int(gateway.meta.get("workers", 1))
        if target.gateway_workers != gateway_workers:
            steps.append(
                f"gateway: keeps its {gateway_workers} worker(s) (the plan asks for "
                f"{target.gateway_workers}; that takes `fleet stop` and `fleet serve`)"
            )
        current = placement.read_state(settings)
        kept = {m: p for m, p in (current.models if current else {}).items() if m in served}
        moved = Placement({**kept, **target.models}, gateway_workers, target.source, target.notes)
        placement.write_state(settings, replace(moved, models=placement.ordered(moved.models)))
    return steps


def scale(
    settings: Settings, model: str, workers: int, timeout: float = 180.0, grace: float = 15.0
) -> str:
    """A dedicated model's service replaced live by one with ``workers`` workers."""
    if workers < 1:
        raise ValueError("workers must be at least 1")
    with serving_lock(settings):
        dedicated = dedicated_components(settings)
        if model not in dedicated:
            where = "shared in the gateway" if model in served_models(settings) else "not served"
            raise processes.ProcessError(
                f"{model} is {where}: only a dedicated model scales; give it a service with "
                "`fleet serve --placement FILE` (placement: dedicated)"
            )
        done = _scale(settings, dedicated[model], workers, timeout, grace)
        current = placement.read_state(settings)
        if current is not None and model in current.models:
            old = current.models[model]
            models = {**current.models, model: replace(old, workers=workers, reason="fleet scale")}
            placement.write_state(settings, replace(current, models=models))
    return done


def _scale(settings: Settings, old: Running, workers: int, timeout: float, grace: float) -> str:
    before = launch_workers(old)
    if before == workers:
        return f"{old.name}: already {workers} worker(s)"
    gateway = _running_gateway(settings)
    swap = _swap_service(settings, gateway, old, old.meta["tag"], workers, timeout, grace)
    return f"{old.name}: {before} -> {workers} worker(s) ({swap.url})"


def _to_dedicated(
    settings: Settings, gateway: Running, name: str, workers: int, timeout: float
) -> str:
    tags = shared_tags(gateway)
    tag = tags[name]
    port = processes.free_port(settings.serve_host)
    new = processes.start(settings, model_launch(settings, name, tag, port, workers=workers),
                          "hybrid")  # fmt: skip
    path = backends_file(settings)
    try:
        processes.wait_healthy(new, timeout)
        write_json(path, {**_read_routes(path), name: new.url})
        _wait_gateway(settings, gateway, name, "url", new.url, timeout=10)
    except BaseException:
        write_json(path, {k: v for k, v in _read_routes(path).items() if k != name})
        processes.stop(settings, new)
        raise
    # routed remotely now: the in-process copy goes (the gateway keeps the remote route)
    left = {k: v for k, v in tags.items() if k != name}
    write_json(tags_file(settings), left)
    processes.write_pid_file(
        settings, replace(gateway, meta={**gateway.meta, "tags": json.dumps(left)})
    )
    return f"{name}: shared -> dedicated, {workers} worker(s) ({new.url})"


def _to_shared(
    settings: Settings, gateway: Running, old: Running, timeout: float, grace: float
) -> str:
    name, tag = old.name, old.meta["tag"]
    tags = shared_tags(gateway)
    path = tags_file(settings)
    write_json(path, {**tags, name: tag})
    try:
        _wait_gateway(settings, gateway, name, "tag", tag, timeout)
    except BaseException:
        write_json(path, tags)
        raise
    joined = {**tags, name: tag}
    processes.write_pid_file(
        settings, replace(gateway, meta={**gateway.meta, "tags": json.dumps(joined)})
    )
    routes = backends_file(settings)
    write_json(routes, {k: v for k, v in _read_routes(routes).items() if k != name})
    # a call sent to the service just before the switch ends within the timeout
    time.sleep(settings.model_timeout_s + 0.5)
    processes.stop(settings, old, grace)
    return f"{name}: dedicated -> shared in the gateway ({gateway.url})"


def _now_topology(settings: Settings) -> str:
    gateway = _running_gateway(settings)
    shared = [k for k in shared_tags(gateway) if not parse_route(k)[1]]
    if not shared:
        return "micro"
    return "hybrid" if dedicated_components(settings) else "mono"


def reload_champions(
    settings: Settings, timeout: float = 180.0, models: list[str] | None = None
) -> list[Swap]:
    """Move the running fleet to the current @champion of ``models`` (default: every
    served model), no downtime, and to their current @challenger; a model whose aliases
    did not move is not touched.

    The aliases are read under the serving lock: of two reloads at once, the second
    sees what the first left and moves only what is still behind.
    """
    from fleet.bento_store import import_challenger, import_champion

    with serving_lock(settings):
        served = served_models(settings)
        wanted = [m for m in served if models is None or m in models]
        tags = {name: import_champion(settings, name) for name in wanted}
        challengers = {name: import_challenger(settings, name) for name in wanted}
        return update(settings, tags, timeout=timeout, challengers=challengers)


def follow_registry(settings: Settings, model: str) -> str:
    """After the registry moved ``model``'s aliases: move a running fleet that serves it
    (champion and challenger); a note on what happened."""
    try:
        served = served_models(settings)
    except processes.ProcessError:  # no fleet is running here
        served = []
    if model not in served:
        return "not served here"
    try:
        swaps = reload_champions(settings, models=[model])
    except processes.ProcessError as exc:
        return f"serving kept the previous versions: {exc}"
    return "; ".join(swap.text() for swap in swaps) or "serving already current"


def component_report(settings: Settings, timeout: float = 1.0) -> list[dict[str, Any]]:
    """Every recorded serving component as ``fleet status`` shows it, dead ones too.

    ``state``: healthy, unhealthy, dead (its process is gone), orphaned (gone, but
    processes of it still hold its port), or gave up (the supervisor stopped trying).
    """
    from fleet import supervisor

    watched = supervisor.read_state(settings)
    rows = []
    for s in processes.status(settings, timeout):
        r = s.running
        watch = watched.get(r.name, {})
        if watch.get("gave_up"):
            state = "gave up"
        elif s.healthy:
            state = "healthy"
        elif s.alive:
            state = "unhealthy"
        else:
            state = "orphaned" if s.orphans else "dead"
        tag = r.meta.get("tag", "")
        rows.append(
            {
                "name": r.name,
                "url": r.url,
                "pid": r.pid,
                "healthy": s.healthy,
                "alive": s.alive,
                "state": state,
                "version": tag.split(":v")[-1] if tag else _mono_versions(r),
                "orphans": list(s.orphans),
                "restarts": len(watch.get("restarts", [])),
                "detail": watch.get("gave_up") or watch.get("last_reason", ""),
            }
        )
    return rows


def _mono_versions(gateway: Running) -> str:
    tags = json.loads(gateway.meta.get("tags", "{}"))
    return ", ".join(f"{m} v{t.split(':v')[-1]}" for m, t in tags.items())
