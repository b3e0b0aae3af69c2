"""What ``fleet serve`` starts for each topology, as plain data.

- ``micro``: one ``bentoml serve`` process per model (catalog order, ports from
  ``model_port_base``, workers from the model's spec) plus the gateway, which calls the
  models over HTTP (``FLEET_GATEWAY_BACKENDS``).
- ``mono``: the gateway alone, hosting every model in-process
  (``FLEET_GATEWAY_MODE=mono`` and ``FLEET_BENTO_MODEL_TAGS``).

A model with a ``@challenger`` gets it served beside the champion: in micro its own
service ``<model>.challenger`` on a free port (``FLEET_MODEL_ROLE=challenger``), in mono
loaded in the gateway; either way under the routes key ``<model>@challenger``, which
the gateway mirrors traffic to (``bentos/gateway/service.py``).

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

from fleet import catalog, processes
from fleet.bento_store import ROLE_ENV
from fleet.catalog import get_model, model_port
from fleet.files import write_text_atomic
from fleet.processes import Launch, Running
from fleet.routing import challenger_route, parse_route
from fleet.settings import REPO_ROOT, Settings

Topology = Literal["micro", "mono"]
TOPOLOGIES: tuple[str, ...] = ("micro", "mono")
GATEWAY = "gateway"
MODEL_SERVICE = "bentos.model.service:Service"  # one template serves any model
BACKENDS_FILE_ENV = "FLEET_GATEWAY_BACKENDS_FILE"
TAGS_FILE_ENV = "FLEET_BENTO_MODEL_TAGS_FILE"
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
    topology: Topology,
    models: list[str],
    tags: dict[str, str],
    challengers: dict[str, str] | None = None,
) -> Plan:
    """The launches of ``topology`` for ``models`` (catalog order), given their Bento
    tags, and the challengers of those models (model -> tag) served beside them."""
    if topology not in TOPOLOGIES:
        raise ValueError(f"unknown topology {topology!r}; choose one of {', '.join(TOPOLOGIES)}")
    models = resolve_models(models)
    missing = [m for m in models if m not in tags]
    if missing:
        raise ValueError(f"no Bento model tag for: {', '.join(missing)}")
    shadows = {name: tag for name, tag in (challengers or {}).items() if name in models}
    launches: list[Launch] = []
    if topology == "micro":
        for name in models:
            port = model_port(settings.model_port_base, name)
            launches.append(model_launch(settings, name, tags[name], port))
        backends = {launch.name: launch.url for launch in launches}
        for name, tag in shadows.items():
            port = processes.free_port(settings.serve_host)
            launches.append(
                model_launch(settings, name, tag, port, challenger_component(name), challenger=True)
            )
            backends[challenger_route(name)] = launches[-1].url
        # the file is how a rolling update re-points the running gateway (see update)
        files = {backends_file(settings): backends}
        gateway = gateway_launch(settings, "micro", backends)
    else:
        served = {name: tags[name] for name in models}
        served |= {challenger_route(name): tag for name, tag in shadows.items()}
        files = {tags_file(settings): served}
        gateway = gateway_launch(settings, "mono", served)
    launches.append(gateway)
    return Plan(topology=topology, models=models, launches=launches, files=files)


def model_launch(
    settings: Settings,
    name: str,
    tag: str,
    port: int,
    component: str | None = None,
    challenger: bool = False,
) -> Launch:
    """One model's service: the template serving ``tag`` on ``port`` (workers: its spec);
    a ``challenger`` logs its answers as shadow rows."""
    host = settings.serve_host
    env = {**service_env(settings), **model_env(name, tag)}
    meta = {"tag": tag}
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


def gateway_launch(settings: Settings, topology: str, routes: dict[str, str]) -> Launch:
    """The gateway: ``routes`` are model URLs (micro) or pinned Bento model tags (mono).

    It re-reads the backends (or tags) file while it runs, so a restart from the file's
    current content picks up every move made since it first started.
    """
    env = dict(service_env(settings))
    if topology == "micro":
        env |= {
            "FLEET_GATEWAY_MODE": "micro",
            "FLEET_GATEWAY_BACKENDS": json.dumps(routes),
            BACKENDS_FILE_ENV: str(backends_file(settings)),
        }
        meta = {}
    else:
        env |= {
            "FLEET_GATEWAY_MODE": "mono",
            "FLEET_BENTO_MODEL_TAGS": json.dumps(routes),
            TAGS_FILE_ENV: str(tags_file(settings)),
        }
        meta = {"tags": json.dumps(routes)}
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
    """The launch that starts ``component`` again as it is now: same name and port, the
    model's pinned tag, the gateway's current backends (or tags) file."""
    if component.name == GATEWAY:
        file = backends_file(settings) if component.topology == "micro" else tags_file(settings)
        try:
            routes = json.loads(file.read_text())
        except (OSError, ValueError):
            routes = json.loads(component.meta.get("tags", "{}"))
        at_port = settings.model_copy(update={"gateway_port": component.port})
        return gateway_launch(at_port, component.topology or "micro", routes)
    model = component.name.split(".")[0]  # "<model>.next" during a reload
    return model_launch(
        settings, model, component.meta["tag"], component.port, component.name,
        challenger=is_challenger(component),
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


def served_models(settings: Settings) -> list[str]:
    """Models the running fleet serves, catalog order."""
    gateway = _running_gateway(settings)
    if gateway.topology == "mono":
        keys = json.loads(gateway.meta.get("tags", "{}"))
        names = [k for k in keys if not parse_route(k)[1]]
    else:
        names = [r.name for r in running(settings) if r.name in catalog.models()]
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
    if gateway.topology == "mono":
        return _update_mono(settings, gateway, tags, timeout, challengers)
    components = {r.name: r for r in running(settings)}
    swaps = []
    for name in served_models(settings):
        old = components[name]
        new_tag = tags.get(name)
        if new_tag is None or old.meta.get("tag") == new_tag:
            continue
        port = processes.free_port(settings.serve_host)
        launch = model_launch(settings, name, new_tag, port, component=f"{name}.next")
        new = processes.start(settings, launch, "micro")
        path = backends_file(settings)
        backends = json.loads(path.read_text()) if path.exists() else {}
        try:
            processes.wait_healthy(new, timeout)
            write_json(path, {**backends, name: new.url})
            _wait_gateway(settings, gateway, name, "url", new.url, timeout=10)
        except BaseException:
            write_json(path, {**backends, name: old.url})
            processes.stop(settings, new)
            raise
        # a call sent to the old version just before the switch ends within the timeout
        time.sleep(settings.model_timeout_s + 0.5)
        processes.stop(settings, old, grace)
        processes.rename(settings, new, name)
        swaps.append(Swap(name, old.meta.get("tag"), new_tag, new.url))
    if challengers is not None:
        served = set(served_models(settings))
        wanted = {name: tag for name, tag in challengers.items() if name in served}
        swaps += _sync_challengers(settings, gateway, wanted, timeout, grace)
    return swaps


def _read_routes(path: Path) -> dict[str, str]:
    return json.loads(path.read_text()) if path.exists() else {}


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


def _update_mono(
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
    topology: str = "micro",
    names: list[str] | None = None,
    timeout: float = 180.0,
) -> tuple[list[Running], bool]:
    """Serve the champions of ``names`` (default: all) and wait until healthy.

    Returns the components and whether they were started now (False: the same fleet
    was already running and healthy). Anything else already running is an error.
    """
    if topology not in TOPOLOGIES:
        raise ValueError(f"unknown topology {topology!r}; choose one of: {', '.join(TOPOLOGIES)}")
    refuse_exposure(settings)
    models = resolve_models(names)
    wanted = set(models) | {GATEWAY} if topology == "micro" else {GATEWAY}
    already = running(settings)
    if already:
        names_up = {r.name for r in already if not is_challenger(r)}
        same = names_up == wanted and all(r.topology == topology for r in already)
        if same and all(processes.is_healthy(r.url) for r in already):
            return already, False
        found = ", ".join(f"{r.name} (pid {r.pid}, {r.url})" for r in already)
        raise processes.ProcessError(f"already running: {found}; run `fleet stop` first")

    from fleet.bento_store import import_challenger, import_champion
    from fleet.registry import champion_info

    missing = [name for name in models if champion_info(settings, name) is None]
    if missing:
        hints = "; ".join(f"run `fleet train {name}` first" for name in missing)
        raise NoChampion(f"no @champion yet for {', '.join(missing)}: {hints}")
    tags = {name: import_champion(settings, name) for name in models}
    shadows = {name: import_challenger(settings, name) for name in models}
    challengers = {name: tag for name, tag in shadows.items() if tag is not None}
    fleet_plan = plan(settings, topology, models, tags, challengers)  # type: ignore[arg-type]
    return start_plan(settings, fleet_plan, timeout=timeout), True


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
