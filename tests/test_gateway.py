"""The gateway with REAL model services on loopback: routing, storage, failures, load.

One trained registry + Bento store, the three model services and the gateway are started
once for the module (``bentoml serve`` subprocesses on free ports). The destructive tests
(a stopped and a killed model service) run last.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import statistics
import time
from datetime import UTC, datetime, timedelta

import httpx
import psutil
import pytest

from fleet import bento_store as store
from fleet import serving
from fleet.catalog import get_model, models
from fleet.predictions import PredictionLog
from fleet.results import ResultStore
from fleet.settings import TELEMETRY_OFF, Settings
from tests.fuzz import fuzz_for_server_errors
from tests.serving_fixtures import (
    BentoProcess,
    ServiceProcess,
    ServingState,
    build_serving_state,
    records,
)

MODELS = models()

pytestmark = pytest.mark.integration

# the gateways run with the shipped per-model time budget
TIMEOUT_S = Settings.model_fields["model_timeout_s"].default
# generous: on a loaded 2-core machine five BentoML servers take a while to import
STARTUP_S = 240
FLIGHT_MODELS = {"flight_delay", "arrival_delay"}


class GatewayProcess(BentoProcess):
    """``bentoml serve bentos.gateway.service:Service`` with the serving contract's env."""

    def __init__(self, state: ServingState, name: str, env: dict[str, str]) -> None:
        self.results_url = f"sqlite:///{state.settings.serving_dir / f'results-{name}.db'}"
        full_env = {
            **os.environ,
            **TELEMETRY_OFF,
            "FLEET_HOME": str(state.settings.root),
            "BENTOML_HOME": str(store.bentoml_home(state.settings)),
            "MLFLOW_TRACKING_URI": state.settings.tracking_uri,
            "OMP_NUM_THREADS": "1",
            "FLEET_RESULTS_URL": self.results_url,
            "FLEET_MODEL_TIMEOUT_S": str(TIMEOUT_S),
            **env,
        }
        target = "bentos.gateway.service:Service"
        super().__init__(f"gateway-{name}", target, full_env, state.settings.serving_dir)


@pytest.fixture(scope="module")
def state(tmp_path_factory, dataset_tables) -> ServingState:
    return build_serving_state(tmp_path_factory.mktemp("gateway-home"), dataset_tables)


@pytest.fixture(scope="module")
def fleet(state: ServingState):
    """The three model services, a micro gateway in front of them and a mono gateway.

    All start at once: their imports and model loads overlap, and a gateway needs no
    live backend to start (connections are made per request).
    """
    services = {name: ServiceProcess(state, name) for name in MODELS}
    backends = {name: s.url for name, s in services.items()}
    micro = GatewayProcess(state, "micro", {"FLEET_GATEWAY_BACKENDS": json.dumps(backends)})
    mono_env = {"FLEET_GATEWAY_MODE": "mono", "FLEET_BENTO_MODEL_TAGS": json.dumps(state.tags)}
    mono = GatewayProcess(state, "mono", mono_env)
    processes = [*services.values(), micro, mono]
    try:
        deadline = time.monotonic() + STARTUP_S
        for process in processes:
            process.wait_ready(max(1.0, deadline - time.monotonic()))
        yield services, micro, mono
    finally:
        for process in processes:
            process.stop()


@pytest.fixture(scope="module")
def in_process(state: ServingState) -> dict:
    """The pinned models loaded here, to compare the gateway's answers with."""
    with store.model_store(state.settings):
        return {name: store.load_model(tag) for name, tag in state.tags.items()}


def served(service: ServiceProcess) -> int:
    return httpx.get(f"{service.url}/metadata", timeout=5).json()["requests_served"]


def logged_ids(state: ServingState, model: str, prefix: str) -> list[str]:
    """Request ids starting with ``prefix`` in the prediction log of ``model``, sorted."""
    log = PredictionLog(state.settings.predictions_db_url)
    try:
        ids = log.read(model)["request_id"]
    finally:
        log.dispose()
    return sorted(i for i in ids if i.startswith(prefix))


def expected(in_process: dict, name: str, record: dict) -> dict:
    spec = get_model(name)
    frame = serving.to_frame(spec, [record])
    return serving.predict(spec, in_process[name].model, frame)[0]


def test_requests_reach_only_the_models_they_need(fleet, state, in_process) -> None:
    services, gateway, _ = fleet
    flight = records(state, "flight_delay", 1)[0]
    review = records(state, "review_sentiment", 1)[0]
    before = {name: served(s) for name, s in services.items()}

    r = httpx.post(
        f"{gateway.url}/predict",
        json={"request_id": "f-1", "event_time": "2013-05-06T07:08:09", "flight": flight},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["request_id"] == "f-1" and body["errors"] == {} and body["stored"] is True
    assert set(body["results"]) == FLIGHT_MODELS
    after_flight = {name: served(s) for name, s in services.items()}
    assert {n: after_flight[n] - before[n] for n in MODELS} == {
        n: int(n in FLIGHT_MODELS) for n in MODELS
    }

    r = httpx.post(f"{gateway.url}/predict", json={"review": review})
    assert r.status_code == 200, r.text
    assert set(r.json()["results"]) == {"review_sentiment"}
    after_review = {name: served(s) for name, s in services.items()}
    assert {n: after_review[n] - after_flight[n] for n in MODELS} == {
        n: int(n == "review_sentiment") for n in MODELS
    }

    # "models" narrows the fan-out
    r = httpx.post(
        f"{gateway.url}/predict",
        json={"flight": flight, "review": review, "models": ["arrival_delay"]},
    )
    assert r.status_code == 200 and set(r.json()["results"]) == {"arrival_delay"}
    assert served(services["flight_delay"]) == after_review["flight_delay"]

    # answers equal the pinned models' in-process output and name their versions
    for name, answer in body["results"].items():
        assert answer["version"] == in_process[name].version
        assert answer["prediction"] == pytest.approx(expected(in_process, name, flight))

    # the combined result is stored, with inputs, outputs and versions
    stored = ResultStore(gateway.results_url).get("f-1")
    assert stored is not None
    assert stored.inputs == {"flight": flight}
    assert stored.outputs == {m: a["prediction"] for m, a in body["results"].items()}
    assert stored.versions == {m: in_process[m].version for m in FLIGHT_MODELS}
    assert stored.errors == {} and stored.latency_ms > 0

    # each model service logged its prediction under the forwarded id and event time
    log = PredictionLog(state.settings.predictions_db_url)
    try:
        at = datetime(2013, 5, 6, 7, 8, 9, tzinfo=UTC)
        for name in FLIGHT_MODELS:
            [row] = log.read(name, at, at + timedelta(seconds=1)).to_dict(orient="records")
            assert (row["request_id"], row["event_time"]) == ("f-1", at)
            assert row["version"] == body["results"][name]["version"]
            answer = {k.removeprefix("prediction_"): v for k, v in row.items()
                      if k.startswith("prediction_")}  # fmt: skip
            assert answer == body["results"][name]["prediction"]
    finally:
        log.dispose()

    meta = httpx.get(f"{gateway.url}/metadata").json()
    assert meta["mode"] == "micro" and meta["requests_served"] >= 3
    assert {n: b["url"] for n, b in meta["backends"].items()} == {
        n: s.url for n, s in services.items()
    }


def test_bad_requests_are_4xx_naming_the_problem(fleet, state) -> None:
    _, gateway, _ = fleet
    flight = records(state, "flight_delay", 1)[0]
    url = f"{gateway.url}/predict"
    cases = [
        ({"flight": {**flight, "distance": -5.0}}, "distance"),
        ({"flight": {**flight, "carrier": 7}}, "carrier"),
        ({"flight": {k: v for k, v in flight.items() if k != "month"}}, "month"),
        ({"flight": flight, "models": ["no_such_model"]}, "no_such_model"),
        ({"flight": flight, "models": ["review_sentiment"]}, "review"),
        ({}, "flight"),
        ({"flight": flight, "event_time": "last tuesday"}, "event_time"),
    ]
    for body, needle in cases:
        r = httpx.post(url, json=body)
        assert 400 <= r.status_code < 500, (body, r.status_code, r.text)
        assert needle in r.text, (needle, r.text)
    r = httpx.post(url, content=b'{"flight": ', headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500
    r = httpx.post(url, content=b'{"flight": {"distance": NaN}}',
                   headers={"content-type": "application/json"})  # fmt: skip
    assert 400 <= r.status_code < 500
    assert httpx.post(url, json={"flight": flight}).status_code == 200  # still serving


async def load(url: str, bodies: list[dict], concurrency: int) -> tuple[list, list, float]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    failures: list[str] = []
    inner: list[float] = []
    async with httpx.AsyncClient(limits=limits, timeout=30, trust_env=False) as client:

        async def one(body: dict) -> None:
            async with gate:
                start = time.perf_counter()
                try:
                    r = await client.post(url, json=body)
                except httpx.HTTPError as exc:
                    failures.append(f"{type(exc).__name__}: {exc}")
                    return
                latencies.append(time.perf_counter() - start)
                data = r.json() if r.status_code == 200 else {}
                inner.append(data.get("latency_ms", 0.0))
                if r.status_code != 200 or data["errors"] or not data["stored"]:
                    failures.append(f"{r.status_code}: {r.text[:300]}")

        t0 = time.perf_counter()
        await asyncio.gather(*(one(b) for b in bodies))
        wall = time.perf_counter() - t0
        print(f"gateway-side fan-out p50: {statistics.median(inner or [0]):.1f} ms")
        return latencies, failures, wall


def test_concurrency_32_without_errors(fleet, state) -> None:
    _, gateway, _ = fleet
    flights = records(state, "flight_delay", 100)
    reviews = records(state, "review_sentiment", 100)
    observations = records(state, "visibility", 100)
    bodies = []
    for i in range(300):
        body = {"request_id": f"load-{i}", "flight": flights[i % 100]}
        if i % 3 == 0:
            body["review"] = reviews[i % 100]
            body["observation"] = observations[i % 100]
        bodies.append(body)
    latencies, failures, wall = asyncio.run(load(f"{gateway.url}/predict", bodies, 32))
    assert failures == [], f"{len(failures)} failed, e.g. {failures[:3]}"
    assert len(latencies) == 300
    ms = sorted(x * 1000 for x in latencies)
    figures = {
        "requests": 300,
        "concurrency": 32,
        "req_per_s": round(300 / wall, 1),
        "p50_ms": round(statistics.median(ms), 1),
        "p99_ms": round(ms[int(0.99 * len(ms)) - 1], 1),
    }
    print(f"\ngateway load check: {figures}")
    (state.settings.serving_dir / "gateway-load.json").write_text(json.dumps(figures))
    stored = ResultStore(gateway.results_url)
    assert stored.get("load-299") is not None and stored.get("load-0").versions.keys() == set(
        MODELS
    )
    # every model service logged each of its predictions under the gateway's request id
    ids = {name: logged_ids(state, name, "load-") for name in MODELS}
    want = [b["request_id"] for b in bodies]
    assert ids["flight_delay"] == ids["arrival_delay"] == sorted(want)
    assert ids["review_sentiment"] == sorted(b["request_id"] for b in bodies if "review" in b)
    assert ids["visibility"] == ids["review_sentiment"]


def test_a_slow_model_gives_a_bounded_partial_answer(fleet, state) -> None:
    """A frozen service (SIGSTOP: it accepts connections, never answers)."""
    services, gateway, _ = fleet
    flight = records(state, "flight_delay", 1)[0]
    review = records(state, "review_sentiment", 1)[0]
    # every process of the service: BentoML's workers are not all in the server's group
    tree = psutil.Process(services["review_sentiment"].proc.pid)
    frozen = [tree, *tree.children(recursive=True)]
    for process in frozen:
        process.send_signal(signal.SIGSTOP)
    try:
        start = time.perf_counter()
        r = httpx.post(
            f"{gateway.url}/predict", json={"flight": flight, "review": review}, timeout=30
        )
        elapsed = time.perf_counter() - start
    finally:
        for process in frozen:
            process.send_signal(signal.SIGCONT)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body["results"]) == FLIGHT_MODELS
    assert list(body["errors"]) == ["review_sentiment"]
    assert "review_sentiment" in body["errors"]["review_sentiment"]
    assert elapsed < TIMEOUT_S + 2.0


def test_a_killed_model_leaves_the_others_answering(fleet, state) -> None:
    services, gateway, _ = fleet
    flight = records(state, "flight_delay", 1)[0]
    killed = services["arrival_delay"]
    tree = psutil.Process(killed.proc.pid)
    for process in [*tree.children(recursive=True), tree]:
        process.kill()
    killed.proc.wait(timeout=10)
    for i in range(3):  # the first call may find a pooled connection to the dead process
        start = time.perf_counter()
        r = httpx.post(
            f"{gateway.url}/predict",
            json={"request_id": f"down-{i}", "flight": flight},
            timeout=30,
        )
        elapsed = time.perf_counter() - start
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body["results"]) == {"flight_delay"}
        assert list(body["errors"]) == ["arrival_delay"]
        assert "arrival_delay" in body["errors"]["arrival_delay"]
        assert killed.url in body["errors"]["arrival_delay"]
        assert elapsed < TIMEOUT_S + 2.0
    stored = ResultStore(gateway.results_url).get("down-2")
    assert stored.errors.keys() == {"arrival_delay"} and stored.versions.keys() == {"flight_delay"}


def test_mono_gateway_answers_the_same_in_process(fleet, state, in_process) -> None:
    _, _, gateway = fleet
    meta = httpx.get(f"{gateway.url}/metadata").json()
    assert meta["mode"] == "mono"
    assert {n: b["kind"] for n, b in meta["backends"].items()} == dict.fromkeys(
        MODELS, "in-process"
    )
    flights = records(state, "flight_delay", 5)
    reviews = records(state, "review_sentiment", 5)
    observations = records(state, "visibility", 5)
    for i, inputs in enumerate(zip(flights, reviews, observations, strict=True)):
        body = dict(zip(("flight", "review", "observation"), inputs, strict=True))
        r = httpx.post(f"{gateway.url}/predict", json={"request_id": f"mono-{i}", **body})
        assert r.status_code == 200, r.text
        answer_body = r.json()
        assert answer_body["errors"] == {} and set(answer_body["results"]) == set(MODELS)
        for name, answer in answer_body["results"].items():
            record = body[get_model(name).dataset.record]
            assert answer["version"] == in_process[name].version
            assert answer["prediction"] == pytest.approx(expected(in_process, name, record))
    assert ResultStore(gateway.results_url).get("mono-4").versions == {
        n: in_process[n].version for n in MODELS
    }
    # the mono gateway logs the predictions of the models it hosts
    for name in MODELS:
        assert logged_ids(state, name, "mono-") == [f"mono-{i}" for i in range(5)]


def test_openapi_example_documents_request_id_and_event_time(fleet) -> None:
    _, gateway, _ = fleet
    doc = httpx.get(f"{gateway.url}/docs.json", timeout=10).json()
    body = doc["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    schema = body["schema"]
    if "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].split("/")[-1]]
    example = schema["example"]
    assert example["request_id"] and example["event_time"]
    assert "default now" in schema["properties"]["event_time"]["description"]
    assert "labels join" in schema["properties"]["request_id"]["description"]
    r = httpx.post(f"{gateway.url}/predict", json=example, timeout=30)  # "try it out"
    assert r.status_code == 200 and r.json()["request_id"] == example["request_id"]
    page = httpx.get(f"{gateway.url}/docs", timeout=10, follow_redirects=True)
    assert page.status_code == 200 and "swagger" in page.text.lower()


def test_fuzzing_the_gateways_openapi_finds_no_server_error(fleet, state: ServingState) -> None:
    # last in this module: the fuzzed requests it sends land in the shared prediction log
    _, gateway, _ = fleet
    output = fuzz_for_server_errors(gateway.url, state.settings.auth_headers())
    generated = re.search(r"(\d+) generated, (\d+) passed", output)
    assert generated and int(generated.group(1)) >= 100, output[-3000:]
    assert generated.group(1) == generated.group(2)
