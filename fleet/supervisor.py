"""The serving supervisor: restarts a dead or unhealthy service, with backoff and a limit.

``fleet serve`` (and ``fleet up``, and the replay) start it next to the services: one
detached process, ``python -m fleet.supervisor``, recorded in
``$FLEET_HOME/supervisor/pids/supervisor.json``. Each second it reads the serving pid
files and checks every component:

- its recorded process is gone (killed, out of memory): whatever still listens on its
  port (BentoML's workers outlive a killed ``bentoml serve``, keeping the port) is
  stopped, and the component is started again on the same port, so the gateway's
  backends stay valid;
- it is alive but ``/readyz`` failed ``UNHEALTHY_CHECKS`` times in a row: stopped and
  started again.

Restarts back off (``BACKOFF_S``); after ``GIVE_UP`` restarts of one component within
``WINDOW_S`` the supervisor gives up on it, logs why and leaves it down for a person
(``fleet status`` says so). Every restart happens under the serving lock, like reloads,
so a restart and a reload never interleave. Its log is
``$FLEET_HOME/supervisor/logs/supervisor.log``; its state (restarts per component,
given up or not) is ``$FLEET_HOME/supervisor/state.json``.

BentoML restarts a worker that dies while its ``bentoml serve`` lives; the supervisor
covers the rest: the server itself, the gateway, and a fleet whose process died
together with its workers. Production deployments hand this job to their platform
(systemd, Kubernetes); the supervisor is what the local embedded fleet uses.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fleet import processes
from fleet.files import write_text_atomic
from fleet.settings import Settings, prepare_environment

GROUP = "supervisor"
NAME = "supervisor"
INTERVAL_S = 1.0
UNHEALTHY_CHECKS = 3
BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
GIVE_UP = 5
WINDOW_S = 600.0
START_TIMEOUT_S = 180.0

logger = logging.getLogger("fleet.supervisor")


@dataclass
class Watch:
    """What the supervisor knows of one component."""

    restarts: list[float] = field(default_factory=list)  # wall times of recent restarts
    failed_checks: int = 0
    next_try: float = 0.0
    gave_up: str = ""  # why, once it gave up
    last_reason: str = ""


def state_path(settings: Settings) -> Path:
    return processes.group_dir(settings, GROUP) / "state.json"


def read_state(settings: Settings) -> dict[str, dict]:
    try:
        return json.loads(state_path(settings).read_text())
    except (OSError, ValueError):
        return {}


def _write_state(settings: Settings, watches: dict[str, Watch]) -> None:
    write_text_atomic(state_path(settings), json.dumps({n: asdict(w) for n, w in watches.items()},
                                                       indent=1))  # fmt: skip


class Supervisor:
    """One pass at a time over the recorded components (:meth:`check`)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.watches: dict[str, Watch] = {}

    def check(self) -> list[str]:
        """Look at every component once; restart the ones that need it. What was done."""
        from fleet import topology

        done = []
        now = time.time()
        for running in processes.read_pid_files(self.settings):
            watch = self.watches.setdefault(running.name, Watch())
            if watch.gave_up or now < watch.next_try:
                continue
            reason = self._trouble(running, watch)
            if reason is None:
                continue
            watch.restarts = [t for t in watch.restarts if now - t < WINDOW_S]
            if len(watch.restarts) >= GIVE_UP:
                watch.gave_up = (
                    f"{reason}; {len(watch.restarts)} restarts in {WINDOW_S / 60:.0f} min "
                    "did not help: left down (see its log, then `fleet serve`)"
                )
                logger.error("%s: %s", running.name, watch.gave_up)
                continue
            delay = BACKOFF_S[min(len(watch.restarts), len(BACKOFF_S) - 1)]
            watch.restarts.append(now)
            watch.last_reason = reason
            logger.warning("%s: %s; restarting it on port %d", running.name, reason, running.port)
            try:
                with topology.serving_lock(self.settings):
                    # a reload may have replaced or removed it meanwhile
                    current = {r.name: r for r in processes.read_pid_files(self.settings)}
                    if current.get(running.name) != running:
                        continue
                    restarted = topology.restart(self.settings, running, START_TIMEOUT_S)
                logger.info("%s: serving again (pid %d)", running.name, restarted.pid)
                watch.failed_checks = 0
                done.append(f"{running.name}: restarted ({reason})")
            except processes.ProcessError as exc:
                watch.next_try = time.time() + delay
                logger.error("%s: restart failed (%s); next try in %.0f s", running.name, exc,
                             delay)  # fmt: skip
        _write_state(self.settings, self.watches)
        return done

    def _trouble(self, running: processes.Running, watch: Watch) -> str | None:
        if not processes.is_alive(running):
            return f"its process {running.pid} is gone"
        if processes.is_healthy(running.url, 2.0, running.health_path):
            watch.failed_checks = 0
            return None
        started = processes.started_at(running)
        if started is not None and time.time() - started < START_TIMEOUT_S:
            return None  # still starting (a reload's new process, or a restart)
        watch.failed_checks += 1
        if watch.failed_checks < UNHEALTHY_CHECKS:
            return None
        return f"{running.health_path} failed {watch.failed_checks} checks in a row"


def supervisor_record(settings: Settings) -> processes.Running | None:
    for running in processes.read_pid_files(settings, GROUP):
        if running.name == NAME and processes.is_alive(running):
            return running
    return None


def ensure_running(settings: Settings) -> processes.Running:
    """Start the supervisor unless one runs for this state root; its record."""
    found = supervisor_record(settings)
    if found is not None:
        return found
    launch = processes.Launch(
        name=NAME,
        command=[sys.executable, "-m", "fleet.supervisor"],
        host=settings.serve_host,
        port=0,
        env={"FLEET_HOME": str(settings.root)},
        health_path="",
    )
    return processes.start(settings, launch, topology=None, group=GROUP, check_port_free=False)


def stop(settings: Settings, grace: float = 10.0) -> bool:
    """Stop the supervisor first, so it does not restart what is being stopped."""
    found = supervisor_record(settings)
    if found is None:
        for stale in processes.read_pid_files(settings, GROUP):
            processes.remove_pid_file(settings, stale.name, GROUP)
        return False
    return processes.stop(settings, found, grace, tree=False)


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(prog="python -m fleet.supervisor", description=__doc__).parse_args(argv)
    settings = Settings()
    prepare_environment(settings)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stdout,
    )
    stopping = False

    def _stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    supervisor = Supervisor(settings)
    logger.info("supervising the fleet under %s (pid %d)", settings.root, os.getpid())
    idle_since = None
    while not stopping:
        supervisor.check()
        if processes.read_pid_files(settings):
            idle_since = None
        else:  # nothing left to watch: the fleet was stopped
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since > 10:
                break
        time.sleep(INTERVAL_S)
    logger.info("supervisor stopping")


if __name__ == "__main__":
    main()
