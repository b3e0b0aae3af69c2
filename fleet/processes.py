"""Detached service processes with pid files, health waits and clean stops.

Each component (a model service, the gateway) runs as its own process group, so a stop
reaches the workers ``bentoml serve`` forks too. What was started is recorded in
``<serving_dir>/pids/<name>.json`` and only those processes are ever signalled; the
process start time is recorded as well, so a pid the kernel has since reused for an
unrelated process is never killed. Output goes to ``<serving_dir>/logs/<name>.log``.

No bentoml import here: this module only knows commands, ports and HTTP health URLs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from fleet.files import write_text_atomic

if TYPE_CHECKING:
    from fleet.settings import Settings

HEALTH_PATH = "/readyz"
# Components are recorded per group: the serving fleet (`fleet serve` / `fleet stop`) and
# the local stack's servers (`fleet up` / `fleet down`) never see each other's pid files.
SERVING = "serving"


class ProcessError(RuntimeError):
    """A component cannot be started, found healthy or stopped; the message says why."""


class PortInUse(ProcessError):
    """The port a component needs is already taken."""


class NotHealthy(ProcessError):
    """A component did not become healthy in time, or exited while starting."""


@dataclass(frozen=True)
class Launch:
    """What to start: one component of a topology."""

    name: str
    command: list[str]
    host: str
    port: int
    env: dict[str, str] = field(default_factory=dict)  # added to the inherited environment
    cwd: Path | None = None
    port_hint: str = ""  # the setting or flag that changes the port, for error messages
    meta: dict[str, str] = field(default_factory=dict)  # recorded in the pid file as is
    health_path: str = HEALTH_PATH  # answers 200 once the component is ready

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass(frozen=True)
class Running:
    """A started component as its pid file records it."""

    name: str
    pid: int
    url: str
    port: int
    command: list[str]
    started: str  # ISO time
    log: str
    proc_start: int | None = None  # kernel start time of the pid (clock ticks), Linux
    topology: str | None = None
    meta: dict[str, str] = field(default_factory=dict)
    health_path: str = HEALTH_PATH
    group: str = SERVING


@dataclass(frozen=True)
class Status:
    """One recorded component: is its process alive, does it answer its health path, and
    which processes hold its port without being its own (orphans of a killed server)."""

    running: Running
    alive: bool
    healthy: bool
    orphans: tuple[int, ...] = ()


def group_dir(settings: Settings, group: str = SERVING) -> Path:
    return settings.serving_dir if group == SERVING else settings.root / group


def pids_dir(settings: Settings, group: str = SERVING) -> Path:
    return group_dir(settings, group) / "pids"


def logs_dir(settings: Settings, group: str = SERVING) -> Path:
    return group_dir(settings, group) / "logs"


def pid_path(settings: Settings, name: str, group: str = SERVING) -> Path:
    return pids_dir(settings, group) / f"{name}.json"


def log_path(settings: Settings, name: str, group: str = SERVING) -> Path:
    return logs_dir(settings, group) / f"{name}.log"


def port_free(host: str, port: int) -> bool:
    """True when nothing listens on ``host:port`` (bind test, as the server will bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # servers set SO_REUSEADDR too, so sockets in TIME_WAIT do not count as taken
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel reports free right now (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def check_port(launch: Launch) -> None:
    """Raise :class:`PortInUse` naming the port and how to choose another one."""
    if not port_free(launch.host, launch.port):
        hint = f"; change it with {launch.port_hint}" if launch.port_hint else ""
        raise PortInUse(
            f"port {launch.port} on {launch.host} is already in use, "
            f"so {launch.name} cannot start there{hint}"
        )


def _proc_start(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (field 22 of /proc/<pid>/stat), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces; the fields after it do not
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :].split()[0] == "Z"


def _reap(pid: int) -> None:
    # a process started by this very process (tests) stays a zombie until waited for
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def is_alive(running: Running) -> bool:
    """True when the recorded process still runs and is the one we started."""
    _reap(running.pid)
    try:
        os.kill(running.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # someone else's process took over the pid
    if _zombie(running.pid):
        return False
    # a different start time means the pid was reused by an unrelated process
    return running.proc_start is None or _proc_start(running.pid) == running.proc_start


def is_healthy(url: str, timeout: float = 1.0, path: str = HEALTH_PATH) -> bool:
    """True when ``GET <url><path>`` answers 200 within ``timeout`` seconds."""
    try:
        with urllib.request.urlopen(url + path, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def write_pid_file(settings: Settings, running: Running) -> Path:
    # atomic: a reader never sees half a pid file
    return write_text_atomic(pid_path(settings, running.name, running.group),
                             json.dumps(asdict(running), indent=2))  # fmt: skip


def read_pid_files(settings: Settings, group: str = SERVING) -> list[Running]:
    """Every component recorded in ``group`` (default: serving), sorted by name."""
    found = []
    for path in sorted(pids_dir(settings, group).glob("*.json")):
        try:
            found.append(Running(**json.loads(path.read_text())))
        except (OSError, ValueError, TypeError):
            continue  # unreadable or foreign file: not ours to act on
    return found


def remove_pid_file(settings: Settings, name: str, group: str = SERVING) -> None:
    pid_path(settings, name, group).unlink(missing_ok=True)


def rename(settings: Settings, running: Running, name: str) -> Running:
    """Record ``running`` under another component name (a replacement taking over)."""
    renamed = replace(running, name=name)
    write_pid_file(settings, renamed)
    if running.name != name:
        remove_pid_file(settings, running.name, running.group)
    return renamed


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def start(
    settings: Settings,
    launch: Launch,
    topology: str | None = None,
    group: str = SERVING,
    check_port_free: bool = True,
) -> Running:
    """Start ``launch`` as a detached process group and record it in its pid file.

    Refuses when the component is already running or its port is taken (a component
    that listens on no port passes ``check_port_free=False``).
    """
    existing = pid_path(settings, launch.name, group)
    if existing.exists():
        for running in read_pid_files(settings, group):
            if running.name == launch.name and is_alive(running):
                how = "`fleet stop`" if group == SERVING else "`fleet down`"
                raise ProcessError(
                    f"{launch.name} is already running (pid {running.pid}, {running.url}); "
                    f"stop it first with {how}"
                )
        existing.unlink(missing_ok=True)  # stale: its process is gone
    if check_port_free:
        check_port(launch)
    log = log_path(settings, launch.name, group)
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **launch.env}
    with log.open("ab") as out:
        out.write(f"\n--- {datetime.now(UTC).isoformat()} {' '.join(launch.command)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            launch.command,
            cwd=launch.cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group, survives the CLI, one signal stops all
        )
    running = Running(
        name=launch.name,
        pid=proc.pid,
        url=launch.url,
        port=launch.port,
        command=launch.command,
        started=datetime.now(UTC).isoformat(timespec="seconds"),
        log=str(log),
        proc_start=_proc_start(proc.pid),
        topology=topology,
        meta=dict(launch.meta),
        health_path=launch.health_path,
        group=group,
    )
    write_pid_file(settings, running)
    return running


def wait_healthy(running: Running, timeout: float, interval: float = 0.25) -> None:
    """Wait until the component answers its health path; raise :class:`NotHealthy` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        if is_healthy(running.url, min(2.0, max(interval, 0.5)), running.health_path):
            return
        if not is_alive(running):
            raise NotHealthy(
                f"{running.name} exited while starting; see its log {running.log}:\n"
                f"{_tail(Path(running.log))}"
            )
        if time.monotonic() >= deadline:
            raise NotHealthy(
                f"{running.name} did not answer {running.url}{running.health_path} within "
                f"{timeout:.0f} s; see its log {running.log}:\n{_tail(Path(running.log))}"
            )
        time.sleep(interval)


def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (state, ppid, pgrp, ...), or None when gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def _all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) pids of a process group, from /proc."""
    members = []
    for pid in _all_pids():
        fields = _stat_fields(pid)
        if fields and int(fields[2]) == pgid and fields[0] != "Z":
            members.append(pid)
    return members


def descendants(pid: int) -> dict[int, int]:
    """Live descendants of ``pid`` as {pid: kernel start time}.

    BentoML's process manager puts each worker in a session of its own, so a signal to
    the component's process group does not reach them: they are tracked as descendants.
    """
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for other in _all_pids():
        fields = _stat_fields(other)
        if fields and fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(other)
            starts[other] = int(fields[19])
    found: dict[int, int] = {}
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        if child not in found:
            found[child] = starts[child]
            todo.extend(children.get(child, []))
    return found


def _still_ours(pid: int, start: int) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z" and int(fields[19]) == start


def _remaining(pgid: int, tree: dict[int, int]) -> list[int]:
    _reap(pgid)
    left = [pid for pid, start in tree.items() if _still_ours(pid, start)]
    return sorted(set(left) | set(_group_members(pgid)))


def _signal_all(pgid: int, tree: dict[int, int], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
    for pid, start in tree.items():
        if _still_ours(pid, start):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


def started_at(running: Running) -> float | None:
    """When the component was started (epoch seconds), from its record."""
    try:
        return datetime.fromisoformat(running.started).timestamp()
    except ValueError:
        return None


# what a process must run to be stopped for holding a fleet port: never anything else
_OURS = ("bentoml", "_bentoml_impl", "prefect", "mlflow", "uvicorn", "http.server")


def port_holders(port: int, host: str | None = None) -> list[int]:
    """Pids listening on ``port`` (on ``host`` or any address), found by socket, not pid file.

    BentoML's workers outlive a ``bentoml serve`` that was killed, and keep its port;
    this finds them.
    """
    import psutil

    pids = set()
    try:
        connections = psutil.net_connections(kind="inet")
    except psutil.Error:
        return []
    for conn in connections:
        if conn.status != psutil.CONN_LISTEN or not conn.laddr or conn.laddr.port != port:
            continue
        if host not in (None, "0.0.0.0", "::") and conn.laddr.ip not in (host, "0.0.0.0", "::"):
            continue
        if conn.pid:
            pids.add(conn.pid)
    return sorted(pids)


def orphans(running: Running) -> list[int]:
    """Processes holding the component's port that are not its recorded process tree."""
    if not running.port:
        return []
    own = {running.pid, *descendants(running.pid)} if is_alive(running) else set()
    return [pid for pid in port_holders(running.port, running.url.split("//")[-1].split(":")[0])
            if pid not in own and _looks_ours(pid)]  # fmt: skip


def _looks_ours(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    return any(word in cmdline for word in _OURS)


def _left(starts: dict[int, int | None]) -> list[int]:
    """The pids of ``starts`` still running as the same process (start time kept)."""
    return [
        p for p, s in starts.items() if s is not None and _proc_start(p) == s and not _zombie(p)
    ]


def kill_orphans(running: Running, grace: float = 5.0, rounds: int = 5) -> list[int]:
    """TERM, then KILL, the orphans holding the component's port; the pids signalled.

    In rounds: processes sharing one listening socket may be reported one at a time.
    """
    signalled: list[int] = []
    for _ in range(rounds):
        found = orphans(running)
        if not found:
            break
        signalled += found
        starts = {pid: _proc_start(pid) for pid in found}

        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            for pid in _left(starts):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + wait
            while _left(starts) and time.monotonic() < deadline:
                time.sleep(0.1)
    return signalled


def stop(settings: Settings, running: Running, grace: float = 15.0, tree: bool = True) -> bool:
    """SIGTERM the component (its process group and descendants), SIGKILL after ``grace``;
    then whatever still holds its port as an orphan of it.

    ``tree=False`` signals the process alone (a supervisor, whose children are
    components of their own). Returns True when a live process was stopped, False when
    it was already gone. The pid file is removed either way.
    """
    stopped = False
    if is_alive(running):
        members = descendants(running.pid) if tree else {}
        # start_new_session made the pid the group id; the leader's SIGTERM handler (the
        # BentoML arbiter) stops its workers cleanly, so only the group gets TERM first
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(running.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while _remaining(running.pid, members) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _remaining(running.pid, members):
            _signal_all(running.pid, members, signal.SIGKILL)
            deadline = time.monotonic() + 5.0
            while _remaining(running.pid, members) and time.monotonic() < deadline:
                time.sleep(0.05)
        stopped = True
    if kill_orphans(running):
        stopped = True
    remove_pid_file(settings, running.name, running.group)
    return stopped


def stop_all(settings: Settings, grace: float = 15.0) -> list[tuple[Running, bool]]:
    """Stop every recorded component, gateway first so no request reaches a dying model."""
    recorded = read_pid_files(settings)
    recorded.sort(key=lambda r: (r.name != "gateway", r.name))
    return [(running, stop(settings, running, grace)) for running in recorded]


def status(settings: Settings, timeout: float = 1.0, group: str = SERVING) -> list[Status]:
    """Every component recorded in ``group`` with liveness and health."""
    out = []
    for running in read_pid_files(settings, group):
        alive = is_alive(running)
        healthy = alive and is_healthy(running.url, timeout, running.health_path)
        out.append(Status(running, alive, healthy, tuple(orphans(running))))
    return out
