"""The served fleet under exposure and failure, for real: a token on every endpoint, body
limits, no password anywhere it could be read, reloads racing under load, and processes
killed under load that the supervisor brings back."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

import httpx
import pandas as pd
import psutil
import pytest

from fleet import bento_store as store
from fleet import etl, lake, processes, registry, routing, serving, stack, topology
from fleet.catalog import get_model
from fleet.settings import TELEMETRY_OFF, Settings
from tests.serving_fixtures import BentoProcess, ServingState, records

pytestmark = pytest.mark.integration

TOKEN = "t0ken-for-the-test"
HOST = "127.0.0.1"


def _flight(state: ServingState) -> dict:
    _, features = routing.input_features("flight")
    dataset = get_model("flight_delay").dataset
    rows = state.flights.sample(n=1, random_state=3)
    return serving.records_of([dataset.column(f) for f in features], rows)[0]


# --- a token on every endpoint, limits at the door -------------------------------------


def test_every_endpoint_wants_the_token_and_the_door_holds(
    serving_state: ServingState,
) -> None:
    env = {"FLEET_API_TOKEN": TOKEN, "FLEET_MAX_BODY_BYTES": "200000"}
    service = BentoProcess(
        "flight_delay", topology.MODEL_SERVICE,
        {**store.service_env(serving_state.settings, serving_state.tags["flight_delay"]), **env},
        serving_state.settings.serving_dir,
    )  # fmt: skip
    gateway_env = {
        **os.environ, **TELEMETRY_OFF, **env,
        "FLEET_HOME": str(serving_state.settings.root),
        "FLEET_GATEWAY_BACKENDS": json.dumps({"flight_delay": service.url}),
    }  # fmt: skip
    gateway = BentoProcess("gateway-auth", "bentos.gateway.service:Service", gateway_env,
                           serving_state.settings.serving_dir)  # fmt: skip
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    try:
        service.wait_ready()
        gateway.wait_ready()
        record = records(serving_state, "flight_delay", 1)[0]
        url = f"{service.url}/predict"
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            refused = httpx.post(url, json={"record": record}, headers=headers)
            assert refused.status_code == 401, refused.text
            assert "FLEET_API_TOKEN" in refused.json()["error"]
        assert httpx.get(f"{service.url}/metadata").status_code == 401
        assert httpx.get(f"{service.url}/readyz").status_code == 200  # probes need none
        ok = httpx.post(url, json={"record": record}, headers=bearer)
        assert ok.status_code == 200 and ok.json()["model"] == "flight_delay"
        # a browser's simple cross-origin request never reaches the model or the log
        plain = httpx.post(url, content=json.dumps({"record": record}),
                           headers={**bearer, "Content-Type": "text/plain"})  # fmt: skip
        assert plain.status_code == 415, plain.text
        # over the cap: 413 before the body is read, whether its length is said or not
        big = b'{"record": "' + b"x" * 300_000 + b'"}'
        said = httpx.post(url, content=big, headers={**bearer, "Content-Type": "application/json"})
        assert said.status_code == 413 and "FLEET_MAX_BODY_BYTES" in said.json()["error"]

        def chunks() -> Iterator[bytes]:
            for start in range(0, len(big), 10_000):
                yield big[start : start + 10_000]

        streamed = httpx.post(url, content=chunks(),
                              headers={**bearer, "Content-Type": "application/json"})  # fmt: skip
        assert streamed.status_code == 413
        assert httpx.get(f"{service.url}/readyz").status_code == 200  # and it stays ready
        # the gateway wants the token too, and forwards it to the model service
        body = {"flight": _flight(serving_state), "models": ["flight_delay"]}
        assert httpx.post(f"{gateway.url}/predict", json=body).status_code == 401
        answer = httpx.post(f"{gateway.url}/predict", json=body, headers=bearer)
        assert answer.status_code == 200 and answer.json()["errors"] == {}, answer.text
        assert answer.json()["results"]["flight_delay"]["version"] == "1"
        too_many = {**body, "models": ["flight_delay"] * 9}
        assert (
            httpx.post(f"{gateway.url}/predict", json=too_many, headers=bearer).status_code == 400
        )
    finally:
        gateway.stop()
        service.stop()


def test_binding_beyond_loopback_without_authentication_is_refused(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    exposed = settings.model_copy(update={"serve_host": "0.0.0.0"})
    with pytest.raises(topology.Exposed, match="FLEET_API_TOKEN"):
        topology.start_fleet(exposed, "micro", ["flight_delay"])
    with pytest.raises(topology.Exposed, match=r"FLEET_PREFECT_AUTH.*FLEET_MLFLOW_PASSWORD"):
        stack.up(exposed.model_copy(update={"api_token": TOKEN}))
    assert processes.read_pid_files(settings) == []


# --- no password where it could be read -----------------------------------------------

SECRET = "s3cret-pw-Zq9"


@pytest.mark.postgres
def test_a_password_in_a_url_is_never_shown(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, postgres_url: str,
    flights_q1: pd.DataFrame, tmp_path: Path,
) -> None:  # fmt: skip
    """PostgreSQL (trust auth: any password is accepted) as registry, prediction log and
    result store, each URL carrying a password: none shows in output, logs, argv, pid
    files or Bento metadata."""
    from typer.testing import CliRunner

    from fleet.cli import app

    base = postgres_url.replace("postgresql://postgres@", f"postgresql://postgres:{SECRET}@")
    assert SECRET in base
    monkeypatch.setenv("MLFLOW_TRACKING_URI", base)
    monkeypatch.setenv(
        "FLEET_PREDICTIONS_URL", base.replace("postgresql://", "postgresql+psycopg://")
    )
    monkeypatch.setenv("FLEET_RESULTS_URL", base.replace("postgresql://", "postgresql+psycopg://"))
    s = Settings()
    spec = get_model("flight_delay").model_copy(update={"train_weeks": 3})
    for day, frame in etl.build_partitions(
        spec.dataset, flights_q1, lake.days(date(2013, 1, 1), date(2013, 1, 28))
    ).items():
        lake.write_partition(s.lake_dir, spec.dataset.name, day, frame)
    assert registry.train_and_promote(s, spec, date(2013, 1, 29)).decision.promoted
    shown = [CliRunner().invoke(app, [command]).output for command in ("models", "status")]
    tag = store.import_champion(s, "flight_delay")
    import bentoml

    with store.model_store(s):
        shown.append(json.dumps(bentoml.models.get(tag).info.to_dict(), default=str))
    # a model service and the MLflow server, started as the fleet starts them
    port = processes.free_port(HOST)
    service = processes.start(s, topology.model_launch(s, "flight_delay", tag, port), "micro")
    mlflow = processes.start(
        s, stack.mlflow_launch(s.model_copy(update={"mlflow_port": processes.free_port(HOST)})),
        group=stack.STACK,
    )  # fmt: skip
    try:
        processes.wait_healthy(service, 180)
        processes.wait_healthy(mlflow, 180)
        record = serving.json_records(spec, flights_q1.head(1))[0]
        answer = httpx.post(f"{service.url}/predict", json={"record": record}, timeout=30)
        assert answer.status_code == 200, answer.text
        shown.append(json.dumps(httpx.get(f"{service.url}/metadata").json()))
        for running in (service, mlflow):
            tree = [running.pid, *processes.descendants(running.pid)]
            shown += [_command_line(p) for p in tree]
        time.sleep(1)
        shown += [p.read_text() for p in s.root.rglob("*.json") if "pids" in p.parts]
        shown += [p.read_text(errors="replace") for p in s.root.rglob("*.log")]
    finally:
        processes.stop(s, service)
        processes.stop(s, mlflow)
    text = "\n".join(shown)
    assert "postgres:***@" in text  # the URLs are there, masked
    assert SECRET not in text


def _command_line(pid: int) -> str:
    """A process's argv as one string; empty for one that ended (or is a zombie waiting to
    be reaped) between listing and reading: it has no argv left to leak."""
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return ""


# --- reloads racing, processes killed: under load ---------------------------------------


class Load:
    """Clients sending flight requests to the gateway until stopped; per-model outcomes."""

    def __init__(self, url: str, body: dict, clients: int = 4) -> None:
        self.url, self.body = url, body
        self.ok = 0
        self.failed: list[str] = []
        self.last_failure = 0.0
        self._stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]
        for t in self.threads:
            t.start()

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                try:
                    answer = client.post(self.url, json=self.body)
                    body = answer.json()
                    good = answer.status_code == 200 and not body["errors"]
                    problem = "" if good else json.dumps(body)[:300]
                except (httpx.HTTPError, ValueError) as exc:
                    problem = f"{type(exc).__name__}: {exc}"
                if problem:
                    self.failed.append(problem)
                    self.last_failure = time.monotonic()
                else:
                    self.ok += 1

    def stop(self) -> None:
        self._stop.set()
        for t in self.threads:
            t.join(timeout=60)


def _second_versions(settings: Settings, flights: pd.DataFrame, models: list[str]) -> None:
    """A version 2 of each model, trained on a later window and kept out of @champion."""
    for name in models:
        spec = get_model(name).model_copy(update={"train_weeks": 3})
        days = lake.days(date(2013, 1, 29), date(2013, 2, 4))
        partitions = etl.build_partitions(spec.dataset, flights, days)
        for day, frame in partitions.items():
            lake.write_partition(settings.lake_dir, spec.dataset.name, day, frame)
        result = registry.train_and_promote(settings, spec, date(2013, 2, 5))
        champion = registry.champion_info(settings, name).version
        if result.decision.promoted:  # keep v1 serving until the test moves it
            registry.client(settings).set_registered_model_alias(name, "champion", "1")
        assert champion in (1, result.candidate.version)


@pytest.fixture
def served_fleet(
    tmp_path_factory: pytest.TempPathFactory, dataset_tables: dict[str, pd.DataFrame]
) -> Iterator[tuple[Settings, ServingState]]:
    from tests.serving_fixtures import build_serving_state

    root = tmp_path_factory.mktemp("supervised")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLEET_HOME", str(root))
        mp.setenv("BENTOML_HOME", str(root / "bentoml"))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow' / 'mlflow.db'}")
        state = build_serving_state(root, dataset_tables)
        _second_versions(
            state.settings, dataset_tables["flights"], ["flight_delay", "arrival_delay"]
        )
        mp.setenv("FLEET_GATEWAY_PORT", str(processes.free_port(HOST)))
        mp.setenv("FLEET_MODEL_PORT_BASE", str(processes.free_port(HOST) + 100))
        settings = Settings()
        topology.start_fleet(settings, "micro", ["flight_delay", "arrival_delay"], timeout=300)
        try:
            yield settings, state
        finally:
            topology.stop_fleet(settings)


def _recorded(settings: Settings) -> dict[str, processes.Running]:
    return {r.name: r for r in processes.read_pid_files(settings)}


def _until_restarted(
    settings: Settings, name: str, old_pid: int, load: Load, timeout: float = 240
) -> processes.Running:
    """Wait until the supervisor has recorded a new process for ``name`` and the load
    has run clean for a while since; the new record."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = _recorded(settings).get(name)
        if now is not None and now.pid != old_pid and processes.is_healthy(now.url):
            _until_quiet(load, quiet_s=5, timeout=deadline - time.monotonic())
            return now
        time.sleep(0.5)
    raise AssertionError(f"{name} was not restarted in {timeout} s")


def _until_quiet(load: Load, quiet_s: float, timeout: float) -> None:
    """Wait until no request has failed for ``quiet_s`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if time.monotonic() - max(load.last_failure, 0) > quiet_s and load.ok:
            return
        time.sleep(1)
    raise AssertionError(f"still failing after {timeout} s: {load.failed[-3:]}")


def test_racing_reloads_then_killed_processes_under_load(
    served_fleet: tuple[Settings, ServingState],
) -> None:
    settings, state = served_fleet
    gateway = _recorded(settings)[topology.GATEWAY]
    body = {"flight": _flight(state), "models": ["flight_delay", "arrival_delay"]}
    load = Load(f"{gateway.url}/predict", body)
    try:
        # 1. both champions move; two reloads at once, while 4 clients send requests
        for name in ("flight_delay", "arrival_delay"):
            registry.client(settings).set_registered_model_alias(name, "champion", "2")
        with ThreadPoolExecutor(max_workers=2) as pool:
            swaps = list(pool.map(lambda _: topology.reload_champions(settings), range(2)))
        assert sorted(s.model for batch in swaps for s in batch) == [
            "arrival_delay", "flight_delay"
        ]  # fmt: skip  # each model moved once, by one of the two
        time.sleep(2)
        assert load.failed == [], load.failed[:3]  # zero failed requests
        meta = topology.gateway_metadata(gateway.url)
        recorded = _recorded(settings)
        for name in ("flight_delay", "arrival_delay"):
            assert recorded[name].meta["tag"] == f"{name}:v2"
            assert meta["backends"][name]["url"] == recorded[name].url
        answer = httpx.post(f"{gateway.url}/predict", json=body, timeout=30).json()
        assert {m: r["version"] for m, r in answer["results"].items()} == {
            "flight_delay": "2", "arrival_delay": "2"
        }  # fmt: skip

        # 2. SIGKILL of a service's server: its workers keep the port; the supervisor
        # stops them and starts the service again on that port
        victim = recorded["flight_delay"]
        os.kill(victim.pid, signal.SIGKILL)
        back = _until_restarted(settings, "flight_delay", victim.pid, load)
        assert back.port == victim.port
        # 3. SIGKILL of a worker: BentoML's server starts another
        worker = next(iter(processes.descendants(back.pid)))
        os.kill(worker, signal.SIGKILL)
        time.sleep(3)
        _until_quiet(load, quiet_s=5, timeout=120)
        # 4. SIGKILL of the gateway: back on its port, with its current backends
        os.kill(gateway.pid, signal.SIGKILL)
        _until_restarted(settings, "gateway", gateway.pid, load)
    finally:
        load.stop()
    rows = {r["name"]: r for r in topology.component_report(settings)}
    assert rows["flight_delay"]["restarts"] >= 1 and rows["gateway"]["restarts"] >= 1
    assert all(r["state"] == "healthy" for r in rows.values()), rows
    assert load.ok > 100
    # stop: nothing left, no port held
    final = _recorded(settings)
    trees = {n: [r.pid, *processes.descendants(r.pid)] for n, r in final.items()}
    topology.stop_fleet(settings)
    for name, running in final.items():
        assert processes.port_free(HOST, running.port), name
        assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
                       for p in trees[name]), name  # fmt: skip
    assert processes.read_pid_files(settings) == []
    from fleet import supervisor

    assert supervisor.supervisor_record(settings) is None
