"""`fleet up` / `fleet status` / `fleet down` for real: Prefect server, deployments from
prefect.yaml, a process worker, MLflow, one model service + gateway, all on free ports
under a temporary state root; a drift event starts a retraining through the trigger.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx
import pandas as pd
import psutil
import pytest
import yaml

from fleet import processes, registry, stack
from fleet.catalog import get_model
from fleet.deployments import PREFECT_FILE, check_deployments, deployments
from fleet.settings import REPO_ROOT, Settings
from tests.serving_fixtures import fill_lake

pytestmark = pytest.mark.integration

FLEET = str(Path(sys.executable).with_name("fleet"))
MODEL = "review_sentiment"  # the cheapest model to train; the only one given a champion
UNTIL = date(2013, 4, 1)


def _free_ports(n: int, consecutive: int = 1) -> list[int]:
    """``n`` free loopback ports; the last one starts ``consecutive`` free ports."""
    ports: list[int] = []
    while len(ports) < n:
        port = processes.free_port()
        run = range(port, port + (consecutive if len(ports) == n - 1 else 1))
        if all(processes.port_free("127.0.0.1", p) for p in run) and port not in ports:
            ports.append(port)
    return ports


def _env(root: Path, ports: dict[str, int]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env |= {
        "FLEET_HOME": str(root),
        "BENTOML_HOME": str(root / "bentoml"),
        "PREFECT_HOME": str(root / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "COLUMNS": "200",
    }
    env |= {f"FLEET_{name.upper()}": str(port) for name, port in ports.items()}
    return env


def _fleet(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [FLEET, *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout
    )


@dataclasses.dataclass
class Stack:
    settings: Settings
    env: dict[str, str]
    up_output: str
    status: dict


def _tree(pid: int) -> list[psutil.Process]:
    try:
        proc = psutil.Process(pid)
        return [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


@pytest.fixture(scope="module")
def local_stack(
    tmp_path_factory: pytest.TempPathFactory, reviews_table: pd.DataFrame
) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("stack-home")
    names = ["prefect_port", "mlflow_port", "worker_port", "gateway_port", "model_port_base"]
    ports = dict(zip(names, _free_ports(len(names), consecutive=3), strict=True))
    env = _env(root, ports)
    settings = Settings(home=root, MLFLOW_TRACKING_URI=None, **ports)
    # a champion for one model (small window), so `fleet up` serves it and the gateway
    fill_lake(settings, "reviews", reviews_table, date(2013, 1, 1), UNTIL - pd.Timedelta("1D"))
    small = get_model(MODEL).model_copy(update=dict(train_weeks=12, holdout_weeks=3))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", settings.tracking_uri)
        assert registry.train_and_promote(settings, small, UNTIL).decision.promoted

    try:
        up = _fleet(env, "up", "--timeout", "600", timeout=1200)
        assert up.returncode == 0, up.stdout + up.stderr
        status = json.loads(_fleet(env, "status", "--json").stdout)
        yield Stack(settings, env, up.stdout, status)
    finally:
        # everything `fleet up` started, with every descendant, as it is right now
        recorded = processes.read_pid_files(settings, stack.STACK)
        recorded += processes.read_pid_files(settings)
        before = [p for r in recorded for p in _tree(r.pid)]
        down = _fleet(env, "down")
        assert down.returncode == 0, down.stdout + down.stderr
        left = [p for p in before if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not left, f"left behind: {[(p.pid, p.cmdline()) for p in left]}"
        assert not processes.read_pid_files(settings, stack.STACK)
        assert not processes.read_pid_files(settings)


def test_a_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    (port,) = _free_ports(1)
    env = _env(tmp_path / "home", {"prefect_port": port})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        result = _fleet(env, "up", "--no-serve", timeout=300)
    assert result.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr  # errors: stderr
    assert "FLEET_PREFECT_PORT" in result.stderr
    settings = Settings(home=tmp_path / "home")
    assert not processes.read_pid_files(settings, stack.STACK)  # nothing was started


def test_status_shows_every_component_healthy(local_stack: Stack) -> None:
    status = local_stack.status
    assert {"prefect", "mlflow", "worker", "gateway", MODEL} <= set(status), status
    assert all(entry["healthy"] for entry in status.values()), status
    assert all(isinstance(entry["pid"], int) for entry in status.values())
    s = local_stack.settings
    assert status["prefect"]["url"] == f"http://127.0.0.1:{s.prefect_port}"
    assert status["mlflow"]["url"] == f"http://127.0.0.1:{s.mlflow_port}"
    # models without a champion are not served, and `fleet up` says so
    assert "flight_delay" not in status
    assert "flight_delay: no @champion yet" in local_stack.up_output
    # and the gateway says so to a request that needs it, naming what to do
    from bentos.check import openapi_example

    gateway = status["gateway"]["url"]
    request = openapi_example(gateway) | {"models": ["flight_delay"]}
    answer = httpx.post(f"{gateway}/predict", json=request, headers=s.auth_headers(), timeout=30)
    errors = answer.json()["errors"]
    assert "flight_delay: no @champion yet" in errors["flight_delay"], errors
    assert "fleet train flight_delay" in errors["flight_delay"]
    assert f"Prefect UI: http://127.0.0.1:{s.prefect_port}" in local_stack.up_output


def _client(local_stack: Stack):
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def test_deployments_carry_their_schedules(local_stack: Stack) -> None:
    expected = {d["name"]: d for d in deployments() if d["work_pool"]["name"] == "fleet"}
    with stack.prefect_client_settings(local_stack.settings), _client(local_stack) as client:
        found = {d.name: d for d in client.read_deployments()}
    assert set(found) == set(expected)
    for name, entry in expected.items():
        crons = [s.schedule.cron for s in found[name].schedules]
        assert crons == [s["cron"] for s in entry.get("schedules", [])], name
        assert found[name].work_pool_name == "fleet"
    # per-model deployments come from the catalog, every model of it
    assert found["train-arrival_delay"].parameters == {"models": ["arrival_delay"]}
    assert found["monitor-visibility"].parameters == {"model": "visibility"}


def test_a_broken_parameter_is_refused_by_the_server(local_stack: Stack, tmp_path: Path) -> None:
    config = yaml.safe_load(PREFECT_FILE.read_text())
    config["deployments"].append(
        {
            **config["deployments"][0],
            "name": "train-broken",
            "entrypoint": "flows/train.py:train_fleet_flow",
            "parameters": {"models": "x", "until": "next tuesday"},
        }
    )
    path = tmp_path / "prefect.yaml"
    path.write_text(yaml.safe_dump(config))
    assert any("train-broken" in p and "until" in p for p in check_deployments(path))
    with pytest.raises(stack.StackError) as failed:
        stack.deploy(local_stack.settings, ["train-broken"], path=path)
    assert "until" in str(failed.value), failed.value


def _retrain_runs(local_stack: Stack) -> list:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    with stack.prefect_client_settings(local_stack.settings), _client(local_stack) as client:
        return client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["retrain"]))
        )


def _emit(local_stack: Stack, firing: str, retrain: str = "automation") -> None:
    """The monitor's event, from a process of its own as a monitor run would send it."""
    emit = (
        "from prefect.events import emit_event\n"
        f"emit_event(event='fleet.model.drift-detected', resource={{'prefect.resource.id': "
        f"'fleet.model.{MODEL}', 'fleet.retrain': '{retrain}'}}, payload={{'model': "
        f"'{MODEL}', 'reason': 'test drift', 'firing': '{firing}'}})\n"
    )
    env = local_stack.env | {"PREFECT_API_URL": stack.prefect_api_url(local_stack.settings)}
    done = subprocess.run([sys.executable, "-c", emit], env=env, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr


def _next_run(local_stack: Stack, known: int, timeout: float = 400):
    """The next retrain run the trigger starts (after ``known`` runs), once it ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = _retrain_runs(local_stack)
        if len(runs) > known and all(r.state and r.state.is_final() for r in runs):
            return max(runs, key=lambda r: r.created)
        time.sleep(2)
    raise AssertionError("the drift event started no retraining run")


def test_one_retraining_per_firing_through_the_trigger(local_stack: Stack) -> None:
    from prefect.client.schemas.objects import FlowRun

    from monitoring.claims import Claims

    settings = local_stack.settings
    before = len(registry.client(settings).search_model_versions(f"name='{MODEL}'"))
    claims = Claims(settings.state_db_url).create()
    firing = claims.claim(MODEL, datetime(2013, 4, 1, tzinfo=UTC), timedelta(days=14))
    claims.dispose()
    _emit(local_stack, firing)
    run: FlowRun = _next_run(local_stack, 0)
    worker_log = Path(processes.log_path(settings, stack.WORKER, stack.STACK)).read_text()
    assert run.state.is_completed(), f"{run.state}\n{worker_log[-4000:]}"
    assert run.parameters["model"] == MODEL and run.parameters["firing"] == firing
    assert run.parameters["reason"] == "drift detected: test drift"
    after = len(registry.client(settings).search_model_versions(f"name='{MODEL}'"))
    assert after == before + 1  # the retraining registered a new version
    # the same firing again (an event delivered twice): a run, which trains nothing
    _emit(local_stack, firing)
    again = _next_run(local_stack, 1)
    assert again.state.is_completed()
    assert len(registry.client(settings).search_model_versions(f"name='{MODEL}'")) == after
    # an event its emitter retrains for itself (the replay) starts no run
    _emit(local_stack, "inline-firing", retrain="inline")
    time.sleep(20)
    assert len(_retrain_runs(local_stack)) == 2
