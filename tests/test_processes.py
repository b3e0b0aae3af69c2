"""Process management on real processes: a stdlib HTTP server stands in for a service."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet import processes
from fleet.processes import Launch, NotHealthy, PortInUse, ProcessError
from fleet.settings import Settings
from fleet.topology import GATEWAY, Plan, start_plan

HOST = "127.0.0.1"


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A directory served by http.server; the file ``readyz`` makes /readyz answer 200."""
    root = tmp_path / "site"
    root.mkdir()
    (root / "readyz").write_text("ok")
    return root


@pytest.fixture(autouse=True)
def _no_leftovers(settings: Settings) -> Iterator[None]:
    yield
    # whatever a failing test left running is stopped, through the code under test
    for running, _ in processes.stop_all(settings, grace=2.0):
        assert not processes.is_alive(running)


def http_server(name: str, directory: Path, port: int | None = None, **kw) -> Launch:
    port = port or processes.free_port(HOST)
    command = [sys.executable, "-m", "http.server", str(port), "--bind", HOST]
    return Launch(name, [*command, "--directory", str(directory)], HOST, port, **kw)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return processes._zombie(pid)


def test_start_health_status_stop(settings: Settings, site: Path) -> None:
    launch = http_server("web", site, env={"FLEET_PROBE": "42"})
    running = processes.start(settings, launch, topology="micro")
    processes.wait_healthy(running, timeout=20)

    recorded = json.loads(processes.pid_path(settings, "web").read_text())
    assert recorded["pid"] == running.pid and recorded["port"] == launch.port
    assert recorded["url"] == f"http://{HOST}:{launch.port}"
    assert recorded["command"] == launch.command and recorded["started"]
    assert processes.read_pid_files(settings) == [running]
    # detached: its own process group, the env of the launch added to ours
    assert os.getpgid(running.pid) == running.pid != os.getpgid(0)
    environ = Path(f"/proc/{running.pid}/environ").read_bytes().split(b"\0")
    assert b"FLEET_PROBE=42" in environ

    [state] = processes.status(settings)
    assert state.alive and state.healthy and state.running == running

    assert processes.stop(settings, running, grace=5) is True
    assert gone(running.pid)
    assert not processes.pid_path(settings, "web").exists()
    assert processes.status(settings) == []
    assert processes.port_free(HOST, launch.port)
    # the server's output went to its log
    assert "GET /readyz" in Path(running.log).read_text()


def test_port_in_use_is_a_clear_error_and_starts_nothing(settings: Settings, site: Path) -> None:
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        launch = http_server("gateway", site, port=port, port_hint="--gateway-port")
        assert not processes.port_free(HOST, port)
        with pytest.raises(PortInUse) as info:
            processes.start(settings, launch)
        assert str(port) in str(info.value) and "--gateway-port" in str(info.value)
        assert processes.read_pid_files(settings) == []


def test_plan_checks_every_port_before_starting_any(settings: Settings, site: Path) -> None:
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        first = http_server("flight_delay", site)
        gateway = http_server(GATEWAY, site, port=taken.getsockname()[1], port_hint="FLEET_X")
        plan = Plan("micro", ["flight_delay"], [first, gateway])
        with pytest.raises(PortInUse, match="FLEET_X"):
            start_plan(settings, plan, timeout=10)
    assert processes.read_pid_files(settings) == []
    assert processes.port_free(HOST, first.port)


def test_start_plan_starts_all_and_a_failure_rolls_back(settings: Settings, site: Path) -> None:
    model = http_server("flight_delay", site)
    broken = Launch(GATEWAY, [sys.executable, "-c", "raise SystemExit('no backends')"], HOST,
                    processes.free_port(HOST))  # fmt: skip
    with pytest.raises(NotHealthy, match="no backends"):
        start_plan(settings, Plan("micro", ["flight_delay"], [model, broken]), timeout=20)
    # the model that did start was stopped again
    assert processes.read_pid_files(settings) == []
    assert processes.port_free(HOST, model.port)

    started = start_plan(settings, Plan("mono", [], [http_server(GATEWAY, site)]), timeout=20)
    assert [r.name for r in started] == [GATEWAY] and started[0].topology == "mono"
    assert all(s.healthy for s in processes.status(settings))


def test_second_start_is_refused(settings: Settings, site: Path) -> None:
    running = processes.start(settings, http_server("web", site))
    processes.wait_healthy(running, timeout=20)
    with pytest.raises(ProcessError, match="already running"):
        processes.start(settings, http_server("web", site))
    assert [r.pid for r in processes.read_pid_files(settings)] == [running.pid]


def test_exit_while_starting_points_to_the_log(settings: Settings) -> None:
    code = "import sys; print('cannot load model xyz', flush=True); sys.exit(3)"
    launch = Launch("broken", [sys.executable, "-c", code], HOST, processes.free_port(HOST))
    running = processes.start(settings, launch)
    with pytest.raises(NotHealthy) as info:
        processes.wait_healthy(running, timeout=20)
    message = str(info.value)
    assert "exited" in message and running.log in message and "cannot load model xyz" in message


def test_never_ready_times_out_and_names_the_log(settings: Settings, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()  # no readyz file: /readyz answers 404, the process stays up
    running = processes.start(settings, http_server("slow", empty))
    started = time.monotonic()
    with pytest.raises(NotHealthy) as info:
        processes.wait_healthy(running, timeout=1.5)
    assert time.monotonic() - started < 10
    assert "did not answer" in str(info.value) and running.log in str(info.value)
    assert processes.is_alive(running)
    [state] = processes.status(settings)
    assert state.alive and not state.healthy


def test_stale_pid_files_are_detected_and_replaced(settings: Settings, site: Path) -> None:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)  # fmt: skip
    dead = processes.Running("web", int(finished.stdout), "http://127.0.0.1:1", 1, ["x"], "t", "l")
    processes.write_pid_file(settings, dead)
    [state] = processes.status(settings)
    assert not state.alive and not state.healthy

    running = processes.start(settings, http_server("web", site))
    assert processes.read_pid_files(settings) == [running]
    processes.wait_healthy(running, timeout=20)


def test_a_reused_pid_is_never_signalled(settings: Settings) -> None:
    # a pid file naming a live process we did not start (here: this test process,
    # with another start time) must not lead to a signal
    me = processes.Running("gateway", os.getpid(), "http://127.0.0.1:1", 1, ["x"], "t", "l",
                           proc_start=processes._proc_start(os.getpid()) - 1)  # fmt: skip
    processes.write_pid_file(settings, me)
    assert not processes.is_alive(me)
    [(running, stopped)] = processes.stop_all(settings)
    assert running == me and stopped is False
    assert not processes.pid_path(settings, "gateway").exists()


def test_stop_reaches_children_and_kills_what_ignores_sigterm(settings: Settings) -> None:
    # like bentoml's worker processes: a child in the same group, and a parent ignoring TERM
    # and a child in a session of its own, as circus starts BentoML's workers
    code = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "sleep = [sys.executable, '-c', 'import time; time.sleep(300)']\n"
        "own = subprocess.Popen(sleep, start_new_session=True)\n"
        "child = subprocess.Popen(sleep)\n"
        "print(own.pid, flush=True)\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(300)\n"
    )
    launch = Launch("stubborn", [sys.executable, "-c", code], HOST, processes.free_port(HOST))
    running = processes.start(settings, launch)
    log = Path(running.log)
    deadline = time.monotonic() + 20
    while not all(line.isdigit() for line in log.read_text().strip().splitlines()[-2:]):
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    own, child = (int(line) for line in log.read_text().strip().splitlines()[-2:])
    assert not gone(child) and not gone(own) and os.getpgid(own) != running.pid
    assert set(processes.descendants(running.pid)) == {own, child}

    started = time.monotonic()
    assert processes.stop(settings, running, grace=1.0) is True
    assert time.monotonic() - started < 10
    assert gone(running.pid) and gone(child) and gone(own)
