"""Which Prefect API a command's flow runs report to, and a temporary one when none runs.

In this order (:func:`prefect_api`):

1. ``PREFECT_API_URL`` set (a remote server, Prefect Cloud, the stack by hand): used;
2. a local stack started by ``fleet up`` under this state root, healthy: used, and said
   ("using the local stack at ...");
3. otherwise a temporary server for this one command, started here (the same
   ``uvicorn`` app Prefect's own temporary server runs, on a free loopback port, with
   ``$FLEET_HOME/prefect`` as its home) and stopped when the command ends. The kernel
   ends it with the command too (``PR_SET_PDEATHSIG``): a command killed mid-run leaves
   no server behind, which Prefect's own temporary server would.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from fleet import processes
from fleet.settings import Settings

PR_SET_PDEATHSIG = 1
# a first start migrates the database: minutes on a busy machine
START_TIMEOUT_S = 300.0
# set while a command runs on its own temporary server: no deployment, no automation
TEMPORARY_ENV = "FLEET_PREFECT_TEMPORARY"


def _die_with_parent() -> None:
    """In the child, before exec: be sent SIGKILL when the parent dies (Linux)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def stack_api(settings: Settings) -> str | None:
    """The API URL of a healthy Prefect server that ``fleet up`` runs for this root."""
    from fleet import stack

    for running in processes.read_pid_files(settings, stack.STACK):
        alive = running.name == stack.PREFECT and processes.is_alive(running)
        if alive and processes.is_healthy(running.url, 2.0, running.health_path):
            return f"{running.url}/api"
    return None


def _configured() -> str | None:
    from prefect.settings import PREFECT_API_URL

    return os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value() or None


@contextlib.contextmanager
def temporary_server(settings: Settings, say: Callable[[str], None]) -> Iterator[str]:
    """A Prefect API for the block, on a free loopback port; its URL."""
    port = processes.free_port("127.0.0.1")
    url = f"http://127.0.0.1:{port}"
    log = settings.prefect_home / "temporary-server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    import prefect

    command = [
        sys.executable, "-m", "uvicorn", "--app-dir", str(Path(prefect.__file__).parent.parent),
        "--factory", "prefect.server.api.server:create_app",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "error",
    ]  # fmt: skip
    env = {
        **os.environ,
        "PREFECT_HOME": str(settings.prefect_home),
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    say(f"starting a temporary Prefect server on {url} for this command (`fleet up` keeps one)")
    env[TEMPORARY_ENV] = "1"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            command, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not processes.is_healthy(url, 2.0, "/api/health"):
            if proc.poll() is not None:
                raise processes.ProcessError(
                    f"the temporary Prefect server exited ({proc.returncode}); see {log}"
                )
            if time.monotonic() > deadline:
                raise processes.ProcessError(
                    f"the temporary Prefect server did not answer in {START_TIMEOUT_S:.0f} s; "
                    f"see {log}"
                )
            time.sleep(0.25)
        yield f"{url}/api"
    finally:
        _drain()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _drain(timeout: float = 10.0) -> None:
    """Send the logs and events still queued in this process before the server goes."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):
            worker.drain_all(timeout=timeout, at_exit=False)


@contextlib.contextmanager
def prefect_api(settings: Settings, say: Callable[[str], None] = print) -> Iterator[str]:
    """Point this process's flow runs at a Prefect API for the block (see the module)."""
    configured = _configured()
    if configured:
        yield configured
        return
    found = stack_api(settings)
    if found:
        say(f"using the local stack at {found}")
        with _api_url(found):
            yield found
        return
    with temporary_server(settings, say) as url, _api_url(url):
        os.environ[TEMPORARY_ENV] = "1"
        try:
            yield url
        finally:
            os.environ.pop(TEMPORARY_ENV, None)


def temporary() -> bool:
    """True when no server runs automations for this process's flow runs: no API at all
    (Prefect starts its own temporary one) or a per-command server of :func:`prefect_api`."""
    return os.environ.get(TEMPORARY_ENV) == "1" or not _configured()


@contextlib.contextmanager
def _api_url(url: str) -> Iterator[None]:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    before = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = url  # child processes (workers, services) see it too
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield
    finally:
        if before is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = before
