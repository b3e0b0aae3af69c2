"""`fleet serve / status / stop` and the topology plans; end to end on real services."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx
import pandas as pd
import pytest
from typer.testing import CliRunner

from fleet import placement, processes, topology
from fleet.catalog import get_model, models
from fleet.cli import app
from fleet.settings import REPO_ROOT, Settings

MODELS = models()

runner = CliRunner()
HOST = "127.0.0.1"
TAGS = {name: f"{name}:v7" for name in MODELS}


def invoke(*args: str):
    """Run the CLI in-process; ``.flat`` is the output with rich's line wrapping undone."""
    result = runner.invoke(app, list(args))
    result.flat = " ".join(result.output.split())
    result.bare = "".join(result.output.split())  # for paths and URLs folded inside cells
    return result


def test_micro_plan_one_process_per_model_then_the_gateway(monkeypatch, settings) -> None:
    monkeypatch.setenv("FLEET_GATEWAY_PORT", "4100")
    monkeypatch.setenv("FLEET_MODEL_PORT_BASE", "4200")
    plan = topology.plan(Settings(), "micro", list(reversed(MODELS)), TAGS)

    assert plan.names == [*MODELS, "gateway"]  # catalog order whatever the request order
    backends = {}
    for i, (launch, name) in enumerate(zip(plan.launches, MODELS, strict=False)):
        assert launch.port == 4200 + i and launch.host == HOST
        assert launch.command[1:] == [
            "serve", "bentos.model.service:Service", "--host", HOST, "--port", str(4200 + i)
        ]  # fmt: skip
        assert Path(launch.command[0]).name == "bentoml" and Path(launch.command[0]).exists()
        assert launch.env["FLEET_BENTO_MODEL_TAG"] == f"{name}:v7"
        assert launch.env["FLEET_MODEL"] == name
        assert launch.env["OMP_NUM_THREADS"] == "1"
        assert launch.env["BENTOML_DO_NOT_TRACK"] == "true"
        assert launch.env["FLEET_HOME"] == str(settings.root)
        assert launch.env["MLFLOW_TRACKING_URI"] == settings.tracking_uri
        assert launch.cwd == REPO_ROOT
        assert "FLEET_MODEL_PORT_BASE" in launch.port_hint
        backends[name] = f"http://{HOST}:{4200 + i}"
    gateway = plan.launches[-1]
    assert gateway.port == 4100 and "FLEET_GATEWAY_PORT" in gateway.port_hint
    assert gateway.command[2] == "bentos.gateway.service:Service"
    assert gateway.env["FLEET_GATEWAY_MODE"] == "micro"
    assert json.loads(gateway.env["FLEET_GATEWAY_BACKENDS"]) == backends


def test_mono_plan_is_the_gateway_alone_with_the_tags(settings: Settings) -> None:
    plan = topology.plan(settings, "mono", ["review_sentiment", "flight_delay"], TAGS)
    [gateway] = plan.launches
    assert plan.models == ["flight_delay", "review_sentiment"]
    assert gateway.name == "gateway" and gateway.port == settings.gateway_port
    assert gateway.env["FLEET_GATEWAY_MODE"] == "mono"
    assert json.loads(gateway.env["FLEET_BENTO_MODEL_TAGS"]) == {
        "flight_delay": "flight_delay:v7",
        "review_sentiment": "review_sentiment:v7",
    }
    assert "FLEET_GATEWAY_BACKENDS" not in gateway.env


def test_plan_refuses_unknown_models_topologies_and_missing_tags(settings: Settings) -> None:
    with pytest.raises(KeyError, match="no_such_model"):
        topology.plan(settings, "micro", ["no_such_model"], TAGS)
    with pytest.raises(ValueError, match="topology"):
        topology.plan(settings, "macro", [], TAGS)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="arrival_delay"):
        topology.plan(settings, "mono", [], {"flight_delay": "flight_delay:v1"})


def test_bad_arguments_are_usage_errors(settings: Settings) -> None:
    result = invoke("serve", "--topology", "macro")
    assert result.exit_code == 2 and "micro" in result.flat
    result = invoke("serve", "--models", "flight_delay,nope")
    assert result.exit_code == 2 and "nope" in result.flat


def test_serve_refuses_models_without_a_champion(settings: Settings) -> None:
    result = invoke("serve", "--models", "flight_delay,review_sentiment")
    assert result.exit_code == 1
    assert "run `fleet train flight_delay` first" in result.flat
    assert "run `fleet train review_sentiment` first" in result.flat
    assert processes.read_pid_files(settings) == []


def test_nothing_running(settings: Settings) -> None:
    result = invoke("status", "--json")
    assert result.exit_code == 0 and json.loads(result.output) == {}
    result = invoke("stop")
    assert result.exit_code == 0 and "nothing to stop" in result.flat


def test_serve_when_something_runs_is_refused_and_stop_stops_it(
    settings: Settings, tmp_path: Path
) -> None:
    (tmp_path / "readyz").write_text("ok")
    port = processes.free_port(HOST)
    command = [sys.executable, "-m", "http.server", str(port), "--bind", HOST]
    launch = processes.Launch("gateway", [*command, "--directory", str(tmp_path)], HOST, port)
    running = processes.start(settings, launch, topology="mono")
    try:
        processes.wait_healthy(running, timeout=20)
        status = json.loads(invoke("status", "--json").output)
        assert status == {
            "gateway": {
                "url": running.url, "pid": running.pid, "healthy": True, "alive": True,
                "state": "healthy", "version": "", "orphans": [], "restarts": 0, "detail": "",
            }
        }  # fmt: skip

        result = invoke("serve", "--topology", "micro")
        assert result.exit_code == 1 and "already running" in result.flat
        assert "fleet stop" in result.flat
        assert processes.read_pid_files(settings) == [running]
    finally:
        result = invoke("stop")
    assert result.exit_code == 0 and f"gateway (pid {running.pid}" in result.flat
    assert "stopped" in result.flat
    assert not processes.is_alive(running) and processes.read_pid_files(settings) == []


def test_reload_needs_a_running_fleet(settings: Settings) -> None:
    result = invoke("serve", "--reload")
    assert result.exit_code == 1 and "not running" in result.flat and "fleet serve" in result.flat
    with pytest.raises(processes.ProcessError, match="not running"):
        topology.update(settings, TAGS)


def test_mono_update_the_gateway_does_not_confirm_is_rolled_back(
    settings: Settings, tmp_path: Path
) -> None:
    # a stand-in gateway that is healthy but never reports the new tag in /metadata
    (tmp_path / "readyz").write_text("ok")
    plan = topology.plan(settings, "mono", ["flight_delay"], TAGS)
    port = processes.free_port(HOST)
    command = [sys.executable, "-m", "http.server", str(port), "--bind", HOST]
    launch = dataclasses.replace(
        plan.launches[0], command=[*command, "--directory", str(tmp_path)], port=port
    )
    fake = dataclasses.replace(plan, launches=[launch])
    [gateway] = topology.start_plan(settings, fake, supervise=False)
    try:
        tags_file = topology.tags_file(settings)
        assert json.loads(tags_file.read_text()) == {"flight_delay": "flight_delay:v7"}
        assert topology.served_models(settings) == ["flight_delay"]

        assert topology.update(settings, {"flight_delay": "flight_delay:v7"}) == []
        with pytest.raises(processes.ProcessError, match="did not switch flight_delay"):
            topology.update(settings, {"flight_delay": "flight_delay:v8"}, timeout=1.0)
        # the gateway keeps its old tags, on file and in its record
        assert json.loads(tags_file.read_text()) == {"flight_delay": "flight_delay:v7"}
        assert processes.read_pid_files(settings) == [gateway]
    finally:
        processes.stop_all(settings)


def _static_server(name: str, folder: Path, port: int) -> processes.Launch:
    """A stand-in component: healthy (``/readyz``), ``/metadata`` a fixed file."""
    command = [sys.executable, "-m", "http.server", str(port), "--bind", HOST,
               "--directory", str(folder)]  # fmt: skip
    return processes.Launch(name, command, HOST, port)


def test_micro_reload_the_gateway_does_not_confirm_keeps_the_old_version(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gateway that never re-points: the reload fails cleanly, the old version serves."""
    model_dir, gateway_dir = tmp_path / "model", tmp_path / "gateway"
    for folder in (model_dir, gateway_dir):
        folder.mkdir()
        (folder / "readyz").write_text("ok")
    old = processes.start(
        settings, _static_server("flight_delay", model_dir, processes.free_port(HOST)), "micro"
    )
    old = processes.rename(settings, dataclasses.replace(old, meta={"tag": TAGS["flight_delay"]}),
                           "flight_delay")  # fmt: skip
    backends = {"flight_delay": old.url}
    topology.write_json(topology.backends_file(settings), backends)
    (gateway_dir / "metadata").write_text(
        json.dumps({"backends": {"flight_delay": {"url": old.url}}})
    )
    gateway = processes.start(
        settings, _static_server("gateway", gateway_dir, processes.free_port(HOST)), "micro"
    )
    # the new version's process: a stand-in too, on the port the update picks
    monkeypatch.setattr(
        topology, "model_launch",
        lambda s, model, tag, port, component=None, **_: _static_server(component, model_dir, port),
    )  # fmt: skip
    try:
        for component in (old, gateway):
            processes.wait_healthy(component, 20)
        with pytest.raises(processes.ProcessError, match="did not switch flight_delay"):
            topology.update(settings, {"flight_delay": "flight_delay:v8"}, timeout=20)
        # the backends file points at the old process again, which still serves; the
        # new one is gone and nothing else is recorded
        assert json.loads(topology.backends_file(settings).read_text()) == backends
        assert sorted(r.name for r in processes.read_pid_files(settings)) == [
            "flight_delay", "gateway"
        ]  # fmt: skip
        assert processes.is_alive(old) and processes.is_healthy(old.url)
    finally:
        topology.stop_fleet(settings)
    assert processes.read_pid_files(settings) == []


# --- end to end: real model services and gateway -------------------------------------


def _fill_lake(settings: Settings, spec, table: pd.DataFrame, first: date, last: date) -> None:
    from fleet import etl, lake

    for day, frame in etl.build_partitions(spec.dataset, table, lake.days(first, last)).items():
        lake.write_partition(settings.lake_dir, spec.dataset.name, day, frame)


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory,
    dataset_tables: dict[str, pd.DataFrame],
) -> Iterator[Settings]:
    """A state root whose registry holds a champion for every catalog model."""
    from fleet import registry, training

    home = tmp_path_factory.mktemp("serve-home") / "fleet-home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLEET_HOME", str(home))
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
        mp.setenv("BENTOML_HOME", str(home / "bentoml"))
        settings = Settings()
        for name in MODELS:
            spec = get_model(name)
            table = dataset_tables[spec.dataset.name]
            if spec.dataset.name == "reviews":
                until = date(2013, 7, 1)
            else:  # three weeks keep it fast
                spec = spec.model_copy(update=dict(train_weeks=3))
                until = date(2013, 2, 1)
            _fill_lake(settings, spec, table, *training.training_window(spec, until).days)
            result = registry.train_and_promote(settings, spec, until)
            assert result.decision.promoted, result.decision.reason
        # a second flight_delay version, kept out of @champion until a test moves it there
        spec = get_model("flight_delay").model_copy(update=dict(train_weeks=3))
        _fill_lake(settings, spec, dataset_tables["flights"], date(2013, 2, 1), date(2013, 2, 8))
        second = registry.train_and_promote(settings, spec, date(2013, 2, 8))
        first = second.candidate.version - 1
        registry.client(settings).set_registered_model_alias("flight_delay", "champion", first)
        # ports from the environment, as a user would set them: free ones on loopback,
        # picked after the training minutes so that nothing else took them meanwhile
        base = _free_run(len(MODELS))
        mp.setenv("FLEET_MODEL_PORT_BASE", str(base))
        mp.setenv("FLEET_GATEWAY_PORT", str(processes.free_port(HOST)))
        yield Settings()


def _free_run(count: int) -> int:
    """A base port with ``count`` consecutive free ports."""
    for _ in range(50):
        base = processes.free_port(HOST)
        if base + count < 65536 and all(processes.port_free(HOST, base + i) for i in range(count)):
            return base
    raise RuntimeError("no run of free ports")


def _request() -> dict:
    """One input of every kind the gateway takes: every model of the catalog answers."""
    from fleet import routing
    from fleet.serving import example_of

    request = {}
    for kind in routing.record_kinds():
        dataset, features = routing.input_features(kind)
        request[kind] = example_of([dataset.column(f) for f in features])
    return request


def _serve_check_stop(
    settings: Settings, topology_name: str, expected: set[str], reload: bool = False
) -> None:
    result = invoke("serve", "--topology", topology_name, "--timeout", "300")
    recorded = processes.read_pid_files(settings)
    try:
        assert result.exit_code == 0, result.output
        assert {r.name for r in recorded} == expected
        for r in recorded:
            assert r.url in result.bare and str(r.pid) in result.bare
        assert str(processes.logs_dir(settings)) in result.bare

        status = json.loads(invoke("status", "--json").output)
        assert set(status) == expected
        assert all(entry["healthy"] for entry in status.values()), status
        assert {n: e["pid"] for n, e in status.items()} == {r.name: r.pid for r in recorded}

        # a second serve starts nothing
        again = invoke("serve", "--topology", topology_name)
        assert again.exit_code == 0 and "already running" in again.flat
        assert processes.read_pid_files(settings) == recorded

        answer = httpx.post(status["gateway"]["url"] + "/predict", json=_request(), timeout=30)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert set(body["results"]) == set(MODELS) and not body["errors"], body
        for name, entry in body["results"].items():
            from fleet.registry import champion_info

            assert str(entry["version"]) == str(champion_info(settings, name).version)
        if topology_name == "micro":
            for name in MODELS:
                meta = httpx.get(status[name]["url"] + "/metadata", timeout=10).json()
                # each service serves the champion pinned by `fleet serve`
                assert meta["bento_model_tag"] == f"{name}:v{meta['version']}"
                assert str(meta["version"]) == str(body["results"][name]["version"])
        if reload:
            at_least = 5000 if topology_name == "micro" else 1000
            _move_champion_under_load(settings, status, topology_name, at_least)
    finally:
        final = processes.read_pid_files(settings)  # after a reload: the new processes
        workers = {r.name: processes.descendants(r.pid) for r in final}
        stopped = invoke("stop")
    assert stopped.exit_code == 0, stopped.output
    for r in final:
        assert f"{r.name} (pid {r.pid}" in stopped.flat
        # the process group is gone, and BentoML's workers (own sessions) with it
        assert workers[r.name], r  # bentoml serve runs its workers as child processes
        assert processes._group_members(r.pid) == [], r
        assert processes._remaining(r.pid, workers[r.name]) == [], r
        assert processes.port_free(HOST, r.port)
    assert processes.read_pid_files(settings) == []
    assert json.loads(invoke("status", "--json").output) == {}


# each topology's load requests carry event times of their own day of 2013, so the
# prediction log's window on that day holds exactly them
LOAD_DAY = {"micro": datetime(2013, 6, 1, tzinfo=UTC), "mono": datetime(2013, 6, 2, tzinfo=UTC)}


Answer = tuple[int, str, dict[str, str], dict]  # status, request id, versions, errors


def _under_load(
    gateway: str,
    label: str,
    day: datetime,
    at_least: int,
    actions: list,
    models: tuple[str, ...] = ("flight_delay",),
) -> tuple[list[list[Answer]], list]:
    """16 clients send flight requests for ``models`` to the gateway while ``actions``
    (callables, each returning what it did) run one after another, load flowing before,
    between and for a second after them; at least ``at_least`` requests in all.
    Returns what each client saw, in order, and what each action returned."""
    flight = _request()["flight"]
    sent = itertools.count()
    done = threading.Event()
    seen: list[list[Answer]] = [[] for _ in range(16)]

    def client(k: int) -> None:
        with httpx.Client(timeout=30) as http:
            while True:
                n = next(sent)
                if n >= at_least and done.is_set():
                    return
                rid = f"{label}-load-{n}"
                body = {
                    "request_id": rid,
                    "event_time": (day + timedelta(seconds=n % 86_400)).isoformat(),
                    "flight": flight,
                    "models": list(models),
                }
                try:
                    answer = http.post(gateway, json=body)
                except httpx.HTTPError as exc:
                    seen[k].append((0, rid, {}, {"client": repr(exc)}))
                    continue
                payload = answer.json() if answer.status_code == 200 else {}
                versions = {m: r["version"] for m, r in payload.get("results", {}).items()}
                seen[k].append((answer.status_code, rid, versions, payload.get("errors", {})))

    clients = [threading.Thread(target=client, args=(k,)) for k in range(16)]
    for thread in clients:
        thread.start()
    results = []
    try:
        for action in actions:
            deadline = time.monotonic() + 120
            floor = sum(map(len, seen)) + at_least // (5 * len(actions))
            while sum(map(len, seen)) < floor:  # each action starts with load flowing
                assert time.monotonic() < deadline and all(t.is_alive() for t in clients)
                time.sleep(0.1)
            results.append(action())
        time.sleep(1.0)  # requests after the last switch
    finally:
        done.set()
        for thread in clients:
            thread.join(120)
    return seen, results


def _failed(seen: list[list[Answer]], models: tuple[str, ...]) -> list[Answer]:
    """Answers that are not a 200 with every model's prediction and no error."""
    return [a for c in seen for a in c if a[0] != 200 or a[3] or set(a[2]) != set(models)]


def _move_champion_under_load(
    settings: Settings, status: dict, topology_name: str, at_least: int
) -> None:
    """@champion moves; `fleet serve --reload` while 16 clients send requests: none may
    fail, and the prediction log holds exactly the answered ones (micro: logged by the
    model services, the ids and event times forwarded by the gateway; mono: by the
    gateway). At least ``at_least`` requests, and until a second after the reload."""
    from fleet import registry
    from fleet.predictions import PredictionLog

    mlflow = registry.client(settings)
    before = registry.champion_info(settings, "flight_delay").version
    versions = sorted(int(v.version) for v in mlflow.search_model_versions("name='flight_delay'"))
    after = [v for v in versions if v != before][-1]  # the other trained version
    mlflow.set_registered_model_alias("flight_delay", "champion", after)
    day = LOAD_DAY[topology_name]
    gateway = status["gateway"]["url"] + "/predict"
    reload = lambda: invoke("serve", "--reload", "--timeout", "300")  # noqa: E731
    full, (result,) = _under_load(gateway, topology_name, day, at_least, [reload])
    seen = [[(s, rid, v.get("flight_delay"), e) for s, rid, v, e in c] for c in full]
    assert result.exit_code == 0, result.output
    assert f"flight_delay: flight_delay:v{before} -> flight_delay:v{after}" in result.flat
    answered = [entry for per_client in seen for entry in per_client]
    failed = [s for s in answered if s[0] != 200 or s[3] or s[2] is None]
    assert not failed, (len(failed), failed[:5])
    assert len(answered) >= at_least
    for per_client in seen:  # once the new version answers a client, the old never does
        order = [int(v) for _, _, v, _ in per_client]
        assert order == sorted(order, key=lambda v: v == after), order
    versions_seen = {int(v) for _, _, v, _ in answered}
    assert versions_seen == {before, after}

    # nothing lost: one logged row per answered request, under its id, version and time
    log = PredictionLog(settings.predictions_db_url)
    try:
        logged = log.read("flight_delay", day, day + timedelta(days=1))
    finally:
        log.dispose()
    assert len(logged) == len(answered)
    assert logged["request_id"].is_unique
    answers = {rid: version for _, rid, version, _ in answered}
    assert dict(zip(logged["request_id"], logged["version"], strict=True)) == answers
    offsets = logged["request_id"].str.rsplit("-", n=1).str[1].astype(int) % 86_400
    assert (logged["event_time"] == [day + timedelta(seconds=int(o)) for o in offsets]).all()
    print(f"\n{topology_name}: {len(answered)} requests across the reload, all logged")

    if topology_name == "micro":
        # the old process is gone, the new one is recorded under the model's name
        now = json.loads(invoke("status", "--json").output)
        assert (
            now["flight_delay"]["healthy"]
            and now["flight_delay"]["pid"] != status["flight_delay"]["pid"]
        )
        assert processes._group_members(status["flight_delay"]["pid"]) == []
        assert set(now) == set(status)
    else:
        meta = topology.gateway_metadata(status["gateway"]["url"])
        assert meta["backends"]["flight_delay"]["tag"] == f"flight_delay:v{after}"
        assert meta["backends"]["flight_delay"]["version"] == str(after)


@pytest.mark.integration
def test_serve_micro_end_to_end(trained: Settings) -> None:
    _serve_check_stop(trained, "micro", {*MODELS, "gateway"}, reload=True)


@pytest.mark.integration
def test_serve_mono_end_to_end(trained: Settings) -> None:
    _serve_check_stop(trained, "mono", {"gateway"}, reload=True)


HYBRID_DAY = datetime(2013, 6, 5, tzinfo=UTC)  # a day of its own in the log
FLIGHT_MODELS = ("flight_delay", "arrival_delay")


def _plan_file(path: Path, dedicated: str, workers: int) -> Path:
    # two gateway workers: each loads a shared model on its own, and a move must wait
    # for both before the service it leaves stops
    lines = ["gateway_workers: 2", "models:"] + [
        f"  {m}: {{placement: dedicated, workers: {workers}}}"
        if m == dedicated
        else f"  {m}: shared"
        for m in MODELS
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def _status_and_workers(name: str) -> tuple[int, dict]:
    """A component's pid and its processes (BentoML's workers) now."""
    pid = json.loads(invoke("status", "--json").output)[name]["pid"]
    return pid, processes.descendants(pid)


def _kinds(url: str) -> dict[str, str]:
    return {m: b["kind"] for m, b in topology.gateway_metadata(url)["backends"].items()}


@pytest.mark.integration
def test_a_hybrid_placement_scales_and_moves_under_load(trained: Settings, tmp_path) -> None:
    """flight_delay on a service of its own, the other models in the gateway. Under load
    from 16 clients whose every request needs a remote and an in-process model at once,
    `fleet scale` and `fleet serve --placement` (the two flight models swap places) fail
    no request; every answer names the champion versions; the prediction log holds each
    answered prediction once, whoever served it; `auto` plans from that traffic."""
    from fleet.predictions import PredictionLog
    from fleet.registry import champion_info

    hot = _plan_file(tmp_path / "hot.yaml", "flight_delay", 1)
    swapped = _plan_file(tmp_path / "swapped.yaml", "arrival_delay", 1)
    result = invoke("serve", "--placement", str(hot), "--timeout", "300")
    try:
        assert result.exit_code == 0, result.output
        assert "hybrid" in result.flat and "flight_delay: dedicated, 1 worker(s)" in result.flat
        status = json.loads(invoke("status", "--json").output)
        assert set(status) == {"flight_delay", "gateway"}
        url = status["gateway"]["url"]
        assert topology.gateway_metadata(url)["mode"] == "hybrid"
        assert _kinds(url) == {"flight_delay": "http", **{m: "in-process" for m in MODELS
                                                          if m != "flight_delay"}}  # fmt: skip
        answer = httpx.post(url + "/predict", json=_request(), timeout=30).json()
        assert set(answer["results"]) == set(MODELS) and not answer["errors"], answer
        before = processes.descendants(status["flight_delay"]["pid"])

        actions = [
            lambda: invoke("scale", "flight_delay", "2", "--timeout", "300"),
            lambda: _status_and_workers("flight_delay"),
            lambda: invoke("serve", "--placement", str(swapped), "--timeout", "300"),
        ]
        seen, (scaled, between, moved) = _under_load(
            url + "/predict", "hybrid", HYBRID_DAY, 3000, actions, FLIGHT_MODELS
        )
        assert scaled.exit_code == 0, scaled.output
        assert "flight_delay: 1 -> 2 worker(s)" in scaled.flat
        # BentoML runs one more worker process for the scaled service
        scaled_pid, workers = between
        assert scaled_pid != status["flight_delay"]["pid"]
        assert len(workers) == len(before) + 1
        assert moved.exit_code == 0, moved.output
        assert "flight_delay: dedicated -> shared" in moved.flat
        assert "arrival_delay: shared -> dedicated, 1 worker(s)" in moved.flat
        answered = [a for per_client in seen for a in per_client]
        failed = _failed(seen, FLIGHT_MODELS)
        assert not failed, (len(failed), failed[:5])
        assert len(answered) >= 3000
        champions = {m: str(champion_info(trained, m).version) for m in FLIGHT_MODELS}
        assert {json.dumps(a[2], sort_keys=True) for a in answered} == {
            json.dumps(champions, sort_keys=True)
        }
        now = json.loads(invoke("status", "--json").output)
        assert set(now) == {"arrival_delay", "gateway"}
        assert processes._group_members(scaled_pid) == []
        assert (
            _kinds(url)["flight_delay"] == "in-process" and _kinds(url)["arrival_delay"] == "http"
        )
        state = json.loads(placement.state_file(trained).read_text())
        assert state["topology"] == "hybrid"
        assert state["models"]["arrival_delay"]["kind"] == "dedicated"
        assert state["models"]["flight_delay"]["kind"] == "shared"

        log = PredictionLog(trained.predictions_db_url)
        try:
            for model in FLIGHT_MODELS:
                logged = log.read(model, HYBRID_DAY, HYBRID_DAY + timedelta(days=1))
                assert len(logged) == len(answered) and logged["request_id"].is_unique, model
                assert set(logged["request_id"]) == {a[1] for a in answered}
        finally:
            log.dispose()
        print(f"\nhybrid: {len(answered)} requests across a scale and a move, all logged")

        # the plan for that traffic, with a reason per model; a dry run moves nothing
        plan = invoke("serve", "--placement", "auto", "--dry-run")
        assert plan.exit_code == 0, plan.output
        assert "placement (auto)" in plan.flat
        counted = re.search(r"(\d+) requests in \d+ s of logged traffic", plan.flat)
        assert counted and int(counted[1]) >= len(answered) + 1, plan.flat  # the load at least
        for model in MODELS:
            assert re.search(rf"{model}: (shared|dedicated, \d+ worker\(s\)) \(", plan.flat)
        assert json.loads(placement.state_file(trained).read_text()) == state
        assert set(json.loads(invoke("status", "--json").output)) == {"arrival_delay", "gateway"}
    finally:
        stopped = invoke("stop")
    assert stopped.exit_code == 0, stopped.output
    assert processes.read_pid_files(trained) == []


def _shadow_setup(settings: Settings) -> tuple[int, int]:
    """flight_delay's other trained version as its @challenger: (champion, challenger)."""
    from fleet import registry

    mlflow = registry.client(settings)
    champion = registry.champion_info(settings, "flight_delay").version
    versions = sorted(int(v.version) for v in mlflow.search_model_versions("name='flight_delay'"))
    challenger = [v for v in versions if v != champion][-1]
    mlflow.set_registered_model_alias("flight_delay", "challenger", str(challenger))
    return champion, challenger


def _logged(settings: Settings, shadow: bool, day: datetime) -> pd.DataFrame:
    from fleet.predictions import PredictionLog

    log = PredictionLog(settings.predictions_db_url)
    try:
        return log.read("flight_delay", day, day + timedelta(days=1), shadow=shadow)
    finally:
        log.dispose()


def _until(check, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


@pytest.mark.integration
def test_a_challenger_shadows_without_touching_an_answer(trained: Settings) -> None:
    """micro: the @challenger runs as its own service; every request is mirrored to it and
    logged as a shadow row under the same id, the answers are the champion's. Killing the
    challenger under load fails no request; the supervisor brings it back as a challenger;
    `fleet reject` stops it."""
    champion, challenger = _shadow_setup(trained)
    day = datetime(2013, 6, 3, tzinfo=UTC)
    flight = _request()["flight"]
    result = invoke("serve", "--models", "flight_delay", "--timeout", "300")
    try:
        assert result.exit_code == 0, result.output
        status = json.loads(invoke("status", "--json").output)
        assert set(status) == {"flight_delay", "flight_delay.challenger", "gateway"}
        assert status["flight_delay.challenger"]["version"] == str(challenger)
        gateway = status["gateway"]["url"]
        shadow_meta = httpx.get(status["flight_delay.challenger"]["url"] + "/metadata").json()
        assert shadow_meta["role"] == "challenger"

        answers: list[tuple[int, str, dict]] = []
        killed = threading.Event()

        def send(n: int) -> None:
            body = {"request_id": f"shadow-{n}", "flight": flight, "models": ["flight_delay"],
                    "event_time": (day + timedelta(seconds=n)).isoformat()}  # fmt: skip
            with httpx.Client(timeout=30) as http:
                answer = http.post(gateway + "/predict", json=body)
            answers.append((answer.status_code, body["request_id"], answer.json()))
            if n == 150:  # mid-load: the challenger dies
                os.killpg(status["flight_delay.challenger"]["pid"], signal.SIGKILL)
                killed.set()

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(send, range(400)))
        assert killed.is_set()
        bad = [a for a in answers if a[0] != 200 or a[2]["errors"]]
        assert not bad, bad[:3]
        assert {a[2]["results"]["flight_delay"]["version"] for a in answers} == {str(champion)}
        served = _logged(trained, False, day)
        assert len(served) == len(answers) and set(served["version"]) == {str(champion)}

        def restarted() -> bool:
            now = json.loads(invoke("status", "--json").output)["flight_delay.challenger"]
            return now["healthy"] and now["pid"] != status["flight_delay.challenger"]["pid"]

        _until(restarted, timeout=120)
        after = json.loads(invoke("status", "--json").output)["flight_delay.challenger"]
        last = {"request_id": "shadow-after", "flight": flight, "models": ["flight_delay"],
                "event_time": (day + timedelta(hours=2)).isoformat()}  # fmt: skip
        assert httpx.post(gateway + "/predict", json=last, timeout=30).status_code == 200
        _until(lambda: "shadow-after" in set(_logged(trained, True, day)["request_id"]))
        mirrored = _logged(trained, True, day)
        # shadow rows: the challenger's version, ids of answered requests, each once
        assert set(mirrored["version"]) == {str(challenger)}
        assert mirrored["request_id"].is_unique
        assert set(mirrored["request_id"]) <= {a[1] for a in answers} | {"shadow-after"}
        assert len(mirrored) > 150
        meta = topology.gateway_metadata(gateway)
        counts = meta["challengers"]["flight_delay"]
        assert counts["mirrored"] + counts.get("dropped", 0) == len(answers) + 1, counts

        rejected = invoke("reject", "flight_delay")
        assert rejected.exit_code == 0, rejected.output
        assert f"@challenger version {challenger} rejected" in rejected.flat
        assert f"flight_delay@challenger: flight_delay:v{challenger} stopped" in rejected.flat
        assert topology.gateway_metadata(gateway)["challengers"] == {}
        assert set(json.loads(invoke("status", "--json").output)) == {"flight_delay", "gateway"}
        assert processes._group_members(after["pid"]) == []
        again = invoke("reject", "flight_delay")
        assert again.exit_code == 1 and "has no @challenger" in again.flat
    finally:
        stopped = invoke("stop")
    assert stopped.exit_code == 0, stopped.output


@pytest.mark.integration
def test_mono_mirrors_in_process_and_promote_moves_the_champion(trained: Settings) -> None:
    """mono: the gateway loads the @challenger beside the champion and logs its answers
    as shadow rows; `fleet promote` makes it the champion the gateway answers with."""
    champion, challenger = _shadow_setup(trained)
    day = datetime(2013, 6, 4, tzinfo=UTC)
    flight = _request()["flight"]
    result = invoke("serve", "--topology", "mono", "--models", "flight_delay", "--timeout", "300")
    try:
        assert result.exit_code == 0, result.output
        gateway = json.loads(invoke("status", "--json").output)["gateway"]["url"]
        meta = topology.gateway_metadata(gateway)
        assert meta["challengers"]["flight_delay"]["tag"] == f"flight_delay:v{challenger}"
        for n in range(30):
            body = {"request_id": f"mono-shadow-{n}", "flight": flight, "models": ["flight_delay"],
                    "event_time": (day + timedelta(seconds=n)).isoformat()}  # fmt: skip
            answer = httpx.post(gateway + "/predict", json=body, timeout=30).json()
            assert answer["results"]["flight_delay"]["version"] == str(champion), answer
        _until(lambda: len(_logged(trained, True, day)) == 30)
        assert set(_logged(trained, True, day)["version"]) == {str(challenger)}
        assert len(_logged(trained, False, day)) == 30

        promoted = invoke("promote", "flight_delay")
        assert promoted.exit_code == 0, promoted.output
        assert f"moved from version {champion} to version {challenger}" in promoted.flat
        assert f"flight_delay: flight_delay:v{champion} -> flight_delay:v{challenger}" in (
            promoted.flat
        )
        assert f"flight_delay@challenger: flight_delay:v{challenger} stopped" in promoted.flat
        meta = topology.gateway_metadata(gateway)
        assert meta["challengers"] == {}
        one = {"flight": flight, "models": ["flight_delay"]}
        answer = httpx.post(gateway + "/predict", json=one, timeout=30).json()
        assert answer["results"]["flight_delay"]["version"] == str(challenger)
        from fleet import registry

        assert registry.champion_history(trained, "flight_delay")[-1]["reason"] == (
            "promoted by hand"
        )
    finally:
        stopped = invoke("stop")
    assert stopped.exit_code == 0, stopped.output
