"""The local stack of `fleet up` / `fleet down` / `fleet status`.

`fleet up` starts, under the state root: a Prefect server (SQLite under
``$FLEET_HOME/prefect``), the `fleet` work pool, the retrain concurrency limits and the
deployments of prefect.yaml, a process worker, an MLflow server on the fleet's tracking
store, and the model services + gateway for every model that has a champion. Each
server is a process of :mod:`fleet.processes` in the ``stack`` group: pid files under
``$FLEET_HOME/stack/pids``, logs under ``$FLEET_HOME/stack/logs``. `fleet down` stops
exactly those, plus the serving components this stack started, nothing else.

Existing servers instead: with ``PREFECT_API_URL`` set, no Prefect server is started and
everything is deployed there; with ``MLFLOW_TRACKING_URI`` an ``http(s)://`` URL, no
MLflow server is started (a database URL gets a local MLflow UI on that database).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fleet import catalog, deployments, processes, topology
from fleet.catalog import model_port
from fleet.processes import Launch, Running
from fleet.secrets import mask_url
from fleet.settings import REPO_ROOT, Settings

STACK = "stack"  # the processes group of the stack's own servers
PREFECT, MLFLOW, WORKER = "prefect", "mlflow", "worker"
WORK_POOL = deployments.WORK_POOL


class StackError(processes.ProcessError):
    """The stack cannot be brought up as configured; the message says what to change."""


@dataclass(frozen=True)
class Component:
    """One part of the stack as `fleet status` shows it."""

    name: str
    url: str
    pid: int | None  # None: a remote server, not started here
    healthy: bool
    detail: str = ""


def _bin(name: str) -> str:
    """An executable of the project's environment (beside the interpreter), else PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise StackError(f"no `{name}` executable beside the interpreter or on PATH")
    return found


def state_file(settings: Settings) -> Path:
    """What the last `fleet up` set up: remote URLs and the serving components it owns."""
    return processes.group_dir(settings, STACK) / "stack.json"


def remote_prefect(env: dict[str, str] | None = None) -> str | None:
    """The Prefect API the user pointed at (``PREFECT_API_URL``), if any."""
    return (env if env is not None else os.environ).get("PREFECT_API_URL") or None


def remote_mlflow(settings: Settings) -> str | None:
    """The MLflow server the user pointed at (an http(s) tracking URI), if any."""
    uri = settings.tracking_uri
    return uri if uri.startswith(("http://", "https://")) else None


def prefect_api_url(settings: Settings) -> str:
    return remote_prefect() or f"http://{settings.serve_host}:{settings.prefect_port}/api"


def _prefect_env(settings: Settings) -> dict[str, str]:
    """What the Prefect server and every client of it share."""
    env = {
        "PREFECT_HOME": str(settings.prefect_home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    }
    if settings.prefect_auth:
        env["PREFECT_API_AUTH_STRING"] = settings.prefect_auth
    return env


def _prefect_server_env(settings: Settings) -> dict[str, str]:
    """The local server: its own UI is the only web origin it answers, writes need a CSRF
    token (a page the operator opens elsewhere cannot start runs), and basic auth when
    ``FLEET_PREFECT_AUTH`` is set."""
    origin = f"http://{settings.serve_host}:{settings.prefect_port}"
    env = _prefect_env(settings) | {
        "PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS": origin,
        "PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED": "true",
    }
    if settings.prefect_auth:
        env["PREFECT_SERVER_API_AUTH_STRING"] = settings.prefect_auth
    return env


def run_env(settings: Settings) -> dict[str, str]:
    """What every flow run needs: the state root, the stores, the repository root.

    The worker passes its environment on to the flow runs it starts.
    """
    from fleet.topology import service_env

    env = service_env(settings)
    env.pop("OMP_NUM_THREADS")  # training wants its threads; only serving pins one
    return (
        env
        | _prefect_env(settings)
        | {
            "PREFECT_API_URL": prefect_api_url(settings),
            "FLEET_REPO_ROOT": str(REPO_ROOT),  # prefect.yaml's pull step starts runs here
            "FLEET_PREDICTIONS_URL": settings.predictions_db_url,
            "MLFLOW_DISABLE_TELEMETRY": "true",
        }
    )


def prefect_launch(settings: Settings) -> Launch:
    host, port = settings.serve_host, settings.prefect_port
    return Launch(
        name=PREFECT,
        command=[_bin("prefect"), "server", "start", "--host", host, "--port", str(port)],
        host=host,
        port=port,
        env=_prefect_server_env(settings),
        cwd=settings.root,
        port_hint="FLEET_PREFECT_PORT",
        health_path="/api/health",
    )


def _secret_file(settings: Settings, name: str, content: str) -> Path:
    """A file only this user reads, under the stack's folder (for what must be a file)."""
    path = processes.group_dir(settings, STACK) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(content)
    return path


def _mlflow_auth_env(settings: Settings) -> dict[str, str]:
    """MLflow's basic-auth app: users in their own SQLite file, the admin's password from
    ``FLEET_MLFLOW_PASSWORD`` (set at the first start), a session key kept per state root."""
    import secrets

    key_file = processes.group_dir(settings, STACK) / "mlflow-secret-key"
    key = key_file.read_text().strip() if key_file.is_file() else secrets.token_hex(32)
    _secret_file(settings, "mlflow-secret-key", key)
    config = _secret_file(
        settings,
        "mlflow-basic-auth.ini",
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{settings.mlflow_dir / 'basic_auth.db'}\n"
        f"admin_username = {settings.mlflow_username}\n"
        f"admin_password = {settings.mlflow_password}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n",
    )
    return {"MLFLOW_AUTH_CONFIG_PATH": str(config), "MLFLOW_FLASK_SERVER_SECRET_KEY": key}


def mlflow_launch(settings: Settings) -> Launch:
    host, port = settings.serve_host, settings.mlflow_port
    settings.artifact_root.mkdir(parents=True, exist_ok=True)
    command = [
        _bin("mlflow"), "server",
        # the flows write artifacts straight to this directory, so the server reads
        # them there too rather than proxying an artifact store of its own
        "--default-artifact-root", settings.artifact_root.as_uri(),
        "--no-serve-artifacts",
        "--host", host, "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip
    # the store URI may carry a password: the environment, never the command line
    env = {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_BACKEND_STORE_URI": settings.tracking_uri}
    if settings.mlflow_password:
        command += ["--app-name", "basic-auth"]
        env |= _mlflow_auth_env(settings)
    return Launch(
        name=MLFLOW,
        command=command,
        host=host,
        port=port,
        env=env,
        cwd=settings.root,
        port_hint="FLEET_MLFLOW_PORT",
        health_path="/health",
    )


def worker_launch(settings: Settings) -> Launch:
    host, port = settings.serve_host, settings.worker_port
    command = [
        _bin("prefect"), "worker", "start",
        "--pool", WORK_POOL, "--type", "process", "--name", f"fleet-worker-{port}",
        "--with-healthcheck",
    ]  # fmt: skip
    env = run_env(settings) | {
        "PREFECT_WORKER_WEBSERVER_HOST": host,
        "PREFECT_WORKER_WEBSERVER_PORT": str(port),
    }
    return Launch(
        name=WORKER,
        command=command,
        host=host,
        port=port,
        env=env,
        cwd=REPO_ROOT,
        port_hint="FLEET_WORKER_PORT",
        health_path="/health",
    )


def serving_ports(settings: Settings, models: list[str]) -> list[Launch]:
    """The serving ports `fleet up` will need, as launches for the port check only."""
    host = settings.serve_host
    ports = [(name, model_port(settings.model_port_base, name)) for name in models]
    if models:
        ports.append(("gateway", settings.gateway_port))
    hints = {"gateway": "FLEET_GATEWAY_PORT"}
    return [
        Launch(name, [], host, port, port_hint=hints.get(name, "FLEET_MODEL_PORT_BASE"))
        for name, port in ports
    ]


# --- Prefect objects: work pool, concurrency limits, deployments ---


@contextmanager
def prefect_client_settings(settings: Settings) -> Iterator[None]:
    """Point this process's Prefect client at the stack's API for the block."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: prefect_api_url(settings)}):
        yield


def ensure_work_pool(name: str = WORK_POOL) -> bool:
    """Create the `process` work pool unless it exists; True when created now."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
            return False
        except ObjectNotFound:
            template = ProcessWorker.get_default_base_job_template()
            client.create_work_pool(
                WorkPoolCreate(name=name, type="process", base_job_template=template)
            )
            return True


def deploy(
    settings: Settings,
    names: list[str] | None = None,
    timeout: float = 300.0,
    path: Path = deployments.PREFECT_FILE,
) -> str:
    """`prefect deploy` the named deployments of ``path`` expanded for the catalog
    (default: every one on the local `process` pool)."""
    names = names or deployments.local_deployments(path)
    expanded = deployments.write_expanded(
        processes.group_dir(settings, STACK) / "prefect.yaml", path
    )
    command = [_bin("prefect"), "--no-prompt", "deploy", "--prefect-file", str(expanded)]
    for name in names:
        command += ["--name", name]
    env = {**os.environ, **run_env(settings)}
    done = subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise StackError(f"`prefect deploy` failed (exit {done.returncode}):\n{output[-3000:]}")
    return output


def deploy_all(settings: Settings, say: Callable[[str], None] = print) -> list[str]:
    """Work pool and every local deployment (per-model ones expanded from the catalog)
    on the Prefect API in use; the names deployed. (One training per model at a time is
    the state database's lease, not a Prefect limit: it holds wherever a run starts.)"""
    api = prefect_api_url(settings)
    if not processes.is_healthy(api.rstrip("/"), 5.0, "/health"):
        raise StackError(
            f"no Prefect API answers at {api}: start the local stack with `fleet up`, or "
            "set PREFECT_API_URL to a running server"
        )
    with prefect_client_settings(settings):
        if ensure_work_pool():
            say(f"created work pool {WORK_POOL!r} (process)")
    names = deployments.local_deployments()
    say(f"deploying {', '.join(names)} ...")
    deploy(settings, names)
    return names


# --- up / down / status ---


def _check_ports(launches: list[Launch]) -> None:
    """Every port free before anything starts: a taken port is an error, not a hang."""
    taken = []
    for launch in launches:
        try:
            processes.check_port(launch)
        except processes.PortInUse as exc:
            taken.append(str(exc))
    if taken:
        raise processes.PortInUse("; ".join(taken))


def champions(settings: Settings) -> tuple[list[str], list[str]]:
    """(models with a @champion, models without one), catalog order."""
    from fleet.registry import champion_info

    names = catalog.model_names()
    have = [name for name in names if champion_info(settings, name) is not None]
    return have, [name for name in names if name not in have]


def _write_state(settings: Settings, state: dict) -> None:
    path = state_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(state, indent=2))


def read_state(settings: Settings) -> dict:
    try:
        return json.loads(state_file(settings).read_text())
    except (OSError, ValueError):
        return {}


def up(
    settings: Settings,
    timeout: float = 300.0,
    serve: bool = True,
    say: Callable[[str], None] = print,
) -> list[Component]:
    """Bring the stack up and wait for each health check; see the module docstring.

    On a failure everything this call started is stopped again.
    """
    running_now = [r for r in processes.read_pid_files(settings, STACK) if processes.is_alive(r)]
    if running_now:
        found = ", ".join(f"{r.name} (pid {r.pid}, {r.url})" for r in running_now)
        raise StackError(f"the stack is already running: {found}; run `fleet down` first")
    topology.refuse_exposure(settings, stack=True)
    problems = deployments.check_deployments()
    if problems:
        raise StackError("prefect.yaml is not valid:\n  " + "\n  ".join(problems))
    prefect_remote, mlflow_remote = remote_prefect(), remote_mlflow(settings)
    served, unserved = champions(settings) if serve else ([], catalog.model_names())
    launches = [worker_launch(settings)]
    if prefect_remote is None:
        launches.insert(0, prefect_launch(settings))
    if mlflow_remote is None:
        launches.append(mlflow_launch(settings))
    _check_ports(launches + serving_ports(settings, served))

    settings.prefect_home.mkdir(parents=True, exist_ok=True)
    # serving components are this stack's when none ran before it (`fleet serve` ones stay)
    owns_serving = bool(served) and not topology.running(settings)
    # what is on disk is for reading back: URLs with their passwords masked
    state = {
        "prefect": prefect_remote and mask_url(prefect_remote),
        "mlflow": mlflow_remote and mask_url(mlflow_remote),
        "serving": owns_serving,
    }
    _write_state(settings, state)
    started: list[Running] = []
    by_name = {launch.name: launch for launch in launches}

    def launch(name: str) -> Running | None:
        if name not in by_name:
            return None
        running = processes.start(settings, by_name[name], topology=STACK, group=STACK)
        started.append(running)
        return running

    # independent servers start together and are waited for afterwards: on a busy
    # machine each takes tens of seconds, mostly importing
    pool = ThreadPoolExecutor(max_workers=1)
    serving = None
    try:
        prefect, mlflow = launch(PREFECT), launch(MLFLOW)
        if served:
            say(f"starting the services of {', '.join(served)} and the gateway ...")
            serving = pool.submit(topology.start_fleet, settings, "micro", served, timeout)
        if prefect is not None:
            say(f"starting the Prefect server on {prefect.url} ...")
            processes.wait_healthy(prefect, timeout)
        deploy_all(settings, say)
        worker = launch(WORKER)
        for running in (worker, mlflow):
            if running is not None:
                processes.wait_healthy(running, timeout)
        if serving is not None:
            serving.result()
        for name in unserved:
            say(f"{name}: no @champion yet, not served (train it with `fleet train {name}`)")
    except BaseException:
        if serving is not None:
            with contextlib.suppress(BaseException):
                serving.result()  # let it finish (it cleans up its own failures)
        if owns_serving:
            topology.stop_fleet(settings)
        for running in reversed(started):
            processes.stop(settings, running)
        state_file(settings).unlink(missing_ok=True)
        raise
    finally:
        pool.shutdown(wait=True)
    return status(settings)


def down(settings: Settings, grace: float = 15.0) -> list[tuple[Running, bool]]:
    """Stop exactly what `fleet up` started: serving, worker, MLflow, Prefect, in order."""
    serving = read_state(settings).get("serving")
    done = topology.stop_fleet(settings, grace) if serving else []
    order = {WORKER: 0, MLFLOW: 1, PREFECT: 2}
    recorded = processes.read_pid_files(settings, STACK)
    recorded.sort(key=lambda r: (order.get(r.name, -1), r.name))
    done += [(r, processes.stop(settings, r, grace)) for r in recorded]
    state_file(settings).unlink(missing_ok=True)
    return done


def status(settings: Settings, timeout: float = 2.0) -> list[Component]:
    """The stack's servers (recorded or remote) and the serving components, with health."""
    serving = [
        Component(s.running.name, s.running.url, s.running.pid, s.healthy)
        for s in processes.status(settings, timeout)
    ]
    return servers(settings, timeout) + serving


def servers(settings: Settings, timeout: float = 2.0) -> list[Component]:
    """Prefect, MLflow and the worker: recorded by `fleet up`, or remote ones it uses."""
    out = []
    state = read_state(settings)
    recorded = {s.running.name: s for s in processes.status(settings, timeout, group=STACK)}
    # the live settings give the URLs to check; the state (masked) says which were in use
    live = {PREFECT: remote_prefect(), MLFLOW: remote_mlflow(settings)}
    for name in (PREFECT, MLFLOW, WORKER):
        if name in recorded:
            s = recorded[name]
            detail = "" if s.alive else "process gone"
            out.append(Component(name, s.running.url, s.running.pid, s.healthy, detail))
        elif state.get(name) and live.get(name):
            url = live[name]
            # Prefect's API URL ends in /api, whose health path is /api/health
            healthy = processes.is_healthy(url.rstrip("/"), timeout, "/health")
            out.append(Component(name, mask_url(url), None, healthy, "remote"))
    return out
