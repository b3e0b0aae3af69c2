"""Each model as its own real `bentoml serve` process on loopback, and its own Bento."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pandas as pd
import pytest

from fleet import bento_store as store
from fleet import registry, serving
from fleet.catalog import get_model, models
from fleet.predictions import PredictionLog
from tests.fuzz import fuzz_for_server_errors
from tests.serving_fixtures import ServiceProcess, ServingState, records

MODELS = models()

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def services(serving_state: ServingState) -> Iterator[dict[str, ServiceProcess]]:
    """One service per model, started together, stopped at the end of the module."""
    procs: dict[str, ServiceProcess] = {}
    try:
        for name in MODELS:
            procs[name] = ServiceProcess(serving_state, name)
        for name in MODELS:
            procs[name].wait_ready()
        yield procs
    finally:
        for proc in procs.values():
            proc.stop()


def same(got: list[dict], want: list[dict]) -> bool:
    """Same labels, numbers equal to float precision."""
    return len(got) == len(want) and all(
        g.keys() == w.keys()
        and all(g[k] == (pytest.approx(w[k]) if isinstance(w[k], float) else w[k]) for k in w)
        for g, w in zip(got, want, strict=True)
    )


def post(url: str, body: object) -> httpx.Response:
    return httpx.post(url, json=body, timeout=30)


@pytest.mark.parametrize("name", list(MODELS))
def test_http_predictions_equal_the_registry_model(
    services: dict[str, ServiceProcess], serving_state: ServingState, name: str
) -> None:
    spec = get_model(name)
    svc = services[name]
    version = serving_state.tags[name].split(":v")[1]
    rows = records(serving_state, name, 25)
    model = registry.load_version(serving_state.settings, name, version)
    expected = serving.predict(spec, model, serving.to_frame(spec, rows))

    single = [post(f"{svc.url}/predict", {"record": r}) for r in rows[:10]]
    assert all(r.status_code == 200 for r in single), single[0].text
    assert {(r.json()["model"], r.json()["version"]) for r in single} == {(name, version)}
    assert same([r.json()["prediction"] for r in single], expected[:10])

    batch = post(f"{svc.url}/predict_batch", {"records": rows})
    assert batch.status_code == 200, batch.text
    assert (batch.json()["model"], batch.json()["version"]) == (name, version)
    assert same(batch.json()["predictions"], expected)

    meta = httpx.get(f"{svc.url}/metadata", timeout=10).json()
    champion = registry.champion_info(serving_state.settings, name)
    assert meta["version"] == version == str(champion.version)
    assert meta["run_id"] == champion.run_id
    assert meta["bento_model_tag"] == serving_state.tags[name]
    assert meta["window"].startswith(str(champion.window.start))
    assert meta["features"] == list(spec.features)
    # every worker's requests (flight_delay runs two): 10 single + 1 batch, no more
    assert meta["requests_served"] == 11
    metrics = httpx.get(f"{svc.url}/metrics", timeout=10).text
    assert f'fleet_model_records_total{{model="{name}",version="{version}"}} 35.0' in metrics


def _flight(state: ServingState, **changes: object) -> dict:
    return {**records(state, "flight_delay", 1)[0], **changes}


BAD_REQUESTS = {
    "missing field": (lambda s: {"record": {k: v for k, v in _flight(s).items() if k != "dest"}},
                      "dest"),
    "wrong type": (lambda s: {"record": _flight(s, distance="far")}, "distance"),
    "out of range": (lambda s: {"record": _flight(s, sched_dep_hour=24)}, "sched_dep_hour"),
    "NaN": (lambda s: json.dumps({"record": _flight(s, temp=float("nan"))}), "temp"),
    "infinity": (lambda s: json.dumps({"record": _flight(s, wind_speed=float("inf"))}),
                 "wind_speed"),
    "extra field": (lambda s: {"record": _flight(s, late=1)}, "late"),
    "no record": (lambda s: {"flight": _flight(s)}, "record"),
    "unknown top-level field": (lambda s: {"record": _flight(s), "debug": True}, "debug"),
    "malformed JSON": (lambda s: '{"record": {"carrier": "UA",', "JSON"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_input_is_a_4xx_naming_the_field(
    services: dict[str, ServiceProcess], serving_state: ServingState, case: str
) -> None:
    svc = services["flight_delay"]
    make, field = BAD_REQUESTS[case]
    body = make(serving_state)
    if isinstance(body, str):  # NaN/inf/broken JSON: sent as raw text
        resp = httpx.post(
            f"{svc.url}/predict", content=body, headers={"content-type": "application/json"}
        )
    else:
        resp = post(f"{svc.url}/predict", body)
    assert 400 <= resp.status_code < 500, resp.text
    assert field in resp.text
    # the service is still up and answering
    ok = post(f"{svc.url}/predict", {"record": _flight(serving_state)})
    assert ok.status_code == 200 and "prediction" in ok.json()


def test_oversized_batch_is_refused_with_the_limit(
    services: dict[str, ServiceProcess], serving_state: ServingState
) -> None:
    svc = services["flight_delay"]
    limit = serving_state.settings.max_batch_records
    rows = records(serving_state, "flight_delay", 1) * (limit + 1)
    resp = post(f"{svc.url}/predict_batch", {"records": rows})
    assert resp.status_code == 400
    assert "records" in resp.text and f"at most {limit}" in resp.text
    assert post(f"{svc.url}/predict_batch", {"records": rows[:limit]}).status_code == 200


def test_openapi_carries_the_generated_schema_and_example(
    services: dict[str, ServiceProcess], serving_state: ServingState
) -> None:
    svc = services["review_sentiment"]
    spec = get_model("review_sentiment")
    doc = httpx.get(f"{svc.url}/docs.json", timeout=10).json()
    # the page names the model and the registry version it serves
    version = serving_state.tags["review_sentiment"].split(":")[1]
    assert doc["info"]["title"] == f"review_sentiment {version}"
    assert doc["info"]["version"] == version
    # the README's docs URL leads to the API page
    page = httpx.get(f"{svc.url}/docs", timeout=10, follow_redirects=True)
    assert page.status_code == 200 and "swagger" in page.text.lower()
    assert {"/predict", "/predict_batch", "/metadata", "/readyz", "/metrics"} <= set(doc["paths"])
    body = doc["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    ref = body["schema"]["properties"]["record"]["$ref"].split("/")[-1]
    schema = doc["components"]["schemas"][ref]
    assert schema["example"] == serving.example_record(spec)
    assert schema["additionalProperties"] is False
    # "try it out" sends the example as is: it must be accepted
    resp = post(f"{svc.url}/predict", {"record": schema["example"]})
    assert resp.status_code == 200 and resp.json()["prediction"]["label"] in spec.labels


def test_a_missing_model_never_becomes_ready(
    services: dict[str, ServiceProcess], serving_state: ServingState
) -> None:
    running = services["flight_delay"]
    flight = {"record": records(serving_state, "flight_delay", 1)[0]}
    assert post(f"{running.url}/predict", flight).status_code == 200
    served_before = httpx.get(f"{running.url}/metadata", timeout=10).json()["requests_served"]
    assert served_before > 0
    svc = ServiceProcess(serving_state, "arrival_delay", tag="arrival_delay:v99")
    try:
        # the service exits with the reason (it never answers /readyz), even under load
        with pytest.raises(RuntimeError, match="exited"):
            svc.wait_ready(timeout=180)
        assert svc.proc.returncode != 0
        assert "arrival_delay:v99 is not in the store" in svc.log()
        assert "fleet serve" in svc.log()
    finally:
        svc.stop()
    # starting it emptied BentoML's Prometheus directory, shared through BENTOML_HOME
    # (as `fleet serve` starting the gateway or a reloaded model does): the running
    # service's request count must survive that
    assert post(f"{running.url}/predict", flight).status_code == 200
    meta = httpx.get(f"{running.url}/metadata", timeout=10).json()
    assert meta["requests_served"] == served_before + 1


def prediction_log(state: ServingState) -> PredictionLog:
    return PredictionLog(state.settings.predictions_db_url)


def test_predictions_are_logged_with_the_callers_request_id_and_event_time(
    services: dict[str, ServiceProcess], serving_state: ServingState
) -> None:
    svc = services["arrival_delay"]
    rows = records(serving_state, "arrival_delay", 3)
    headers = {"X-Request-ID": "2013-03-04-UA1545-EWR", "X-Fleet-Event-Time": "2013-03-04T12:00"}
    r = httpx.post(f"{svc.url}/predict", json={"record": rows[0]}, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["X-Request-ID"] == "2013-03-04-UA1545-EWR"
    # the row is committed before the answer: read right away, from another process
    log = prediction_log(serving_state)
    try:
        got = log.read("arrival_delay", datetime(2013, 3, 4, 12), datetime(2013, 3, 4, 12, 1))
        [row] = got.to_dict(orient="records")
        assert row["request_id"] == "2013-03-04-UA1545-EWR"
        assert row["event_time"] == datetime(2013, 3, 4, 12, tzinfo=UTC)
        assert row["version"] == r.json()["version"] == serving_state.tags[svc.model].split(":v")[1]
        for name, value in rows[0].items():  # the validated features as sent
            assert pd.isna(row[name]) if value is None else row[name] == value, name
        assert row["prediction_value"] == pytest.approx(r.json()["prediction"]["value"])

        # no headers: an id is made and returned, the event time is the serving time
        before = datetime.now(UTC) - timedelta(seconds=1)
        r = post(f"{svc.url}/predict", {"record": rows[1]})
        made = r.headers["X-Request-ID"]
        assert r.status_code == 200 and len(made) == 32
        row = log.read("arrival_delay", start=before).set_index("request_id").loc[made]
        assert row["event_time"] == row["logged_at"] and row["logged_at"] >= before

        # a batch: one id per record from a comma-separated list, else <id>:<index>
        batch = {"records": rows[:2]}
        ids = {"X-Request-ID": "k-1,k-2", "X-Fleet-Event-Time": "2013-03-05T00:00:00+01:00"}
        assert httpx.post(f"{svc.url}/predict_batch", json=batch, headers=ids).status_code == 200
        one = {"X-Request-ID": "b-7", "X-Fleet-Event-Time": "2013-03-05T00:00:00+01:00"}
        assert httpx.post(f"{svc.url}/predict_batch", json=batch, headers=one).status_code == 200
        got = log.read("arrival_delay", datetime(2013, 3, 4, 23), datetime(2013, 3, 4, 23, 1))
        assert got["request_id"].tolist() == ["k-1", "k-2", "b-7:0", "b-7:1"]

        # a bad event time is the caller's error, and nothing is logged
        count = log.count("arrival_delay")
        bad = {"X-Fleet-Event-Time": "last tuesday"}
        r = httpx.post(f"{svc.url}/predict", json={"record": rows[2]}, headers=bad)
        assert r.status_code == 400 and "X-Fleet-Event-Time" in r.text
        assert log.count("arrival_delay") == count
    finally:
        log.dispose()


def test_a_prediction_that_cannot_be_logged_is_a_5xx(
    services: dict[str, ServiceProcess], serving_state: ServingState
) -> None:
    """Another writer holds the SQLite log's write lock past the service's wait budget."""
    svc = services["review_sentiment"]
    body = {"record": records(serving_state, "review_sentiment", 1)[0]}
    path = serving_state.settings.serving_dir / "predictions.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        r = httpx.post(f"{svc.url}/predict", json=body, headers={"X-Request-ID": "locked-1"},
                       timeout=60)  # fmt: skip
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert r.status_code == 503, r.text
    ok = httpx.post(f"{svc.url}/predict", json=body, headers={"X-Request-ID": "after-1"})
    assert ok.status_code == 200
    log = prediction_log(serving_state)
    try:
        assert "after-1" in set(log.read("review_sentiment")["request_id"])
    finally:
        log.dispose()


def test_service_refuses_to_start_without_a_pinned_tag(monkeypatch: pytest.MonkeyPatch) -> None:
    from bentos.model_service import make_service

    monkeypatch.delenv(store.TAG_ENV, raising=False)
    service = make_service("arrival_delay")
    assert service.models == []  # nothing to bundle, and no ":latest" fallback
    with pytest.raises(store.StoreError, match="FLEET_BENTO_MODEL_TAG is not set"):
        service.inner()


def test_bento_model_labels_carry_the_lineage(serving_state: ServingState) -> None:
    import bentoml

    settings = serving_state.settings
    for name, tag in serving_state.tags.items():
        assert store.import_champion(settings, name) == tag  # idempotent
        champion = registry.champion_info(settings, name)
        with store.model_store(settings):
            labels = bentoml.models.get(tag).info.labels
        first, last = champion.window.days
        assert labels == {
            "mlflow_model": name,
            "version": str(champion.version),
            "run_id": champion.run_id,
            "window": f"{first}..{last}",
            "window_split": champion.window.split.isoformat(),
        }
    assert Path(store.bentoml_home(settings), "models", "flight_delay", "v1").is_dir()


def test_fuzzing_the_openapi_finds_no_server_error(
    services: dict[str, ServiceProcess], serving_state: ServingState
) -> None:
    svc = services["flight_delay"]
    output = fuzz_for_server_errors(svc.url, serving_state.settings.auth_headers())
    generated = re.search(r"(\d+) generated, (\d+) passed", output)
    assert generated and int(generated.group(1)) >= 100, output[-3000:]
    assert generated.group(1) == generated.group(2)
