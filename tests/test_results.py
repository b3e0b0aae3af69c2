"""The gateway's result store on real SQLite (test's tmp dir) and real PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from fleet import routing
from fleet.results import ResultStore, ResultWriter
from fleet.routing import ModelAnswer, ModelFailure
from fleet.settings import Settings

FLIGHT = {"carrier": "UA", "origin": "EWR", "dest": "IAH", "distance": 1400.0, "temp": None}
T0 = datetime(2013, 3, 4, 12, 0, tzinfo=UTC)


def result(i: int, fail: bool = False) -> routing.CombinedResult:
    outcomes = [ModelAnswer("flight_delay", "3", {"label": "1", "probability": 0.5 + i / 1000})]
    if fail:
        outcomes.append(ModelFailure("arrival_delay", "arrival_delay: no answer in 2.0 s"))
    else:
        outcomes.append(ModelAnswer("arrival_delay", "7", {"value": float(i)}))
    return routing.combine(
        {"flight": FLIGHT}, outcomes, T0 + timedelta(seconds=i), 10.0 + i, f"req-{i}"
    )


def check_store(store: ResultStore) -> None:
    store.create()
    store.create()  # idempotent: a restarted gateway finds its table
    assert store.count() == 0
    assert store.save([result(0), result(1, fail=True)]) == 2
    assert store.count() == 2

    got = store.get("req-1")
    assert got is not None
    assert got.inputs == {"flight": FLIGHT}  # null features survive the JSON round trip
    assert got.outputs == {"flight_delay": {"label": "1", "probability": 0.501}}
    assert got.versions == {"flight_delay": "3"}
    assert got.errors == {"arrival_delay": "arrival_delay: no answer in 2.0 s"}
    assert got.models == ["flight_delay", "arrival_delay"]
    assert got.latency_ms == pytest.approx(11.0)
    assert got.received_at.replace(tzinfo=got.received_at.tzinfo or UTC) == T0 + timedelta(
        seconds=1
    )
    assert store.get("req-missing") is None

    ok = store.get("req-0")
    assert ok.versions == {"flight_delay": "3", "arrival_delay": "7"} and ok.errors == {}
    assert [r.request_id for r in store.recent(10)] == ["req-1", "req-0"]
    assert [r.request_id for r in store.recent(10, with_errors=True)] == ["req-1"]
    assert [r.request_id for r in store.recent(10, with_errors=False)] == ["req-0"]


async def write_concurrently(store: ResultStore, n: int) -> None:
    writer = ResultWriter(store)
    try:
        await asyncio.gather(*(writer.write(result(i)) for i in range(n)))
    finally:
        await writer.aclose()


def test_sqlite_store_default_location(settings: Settings) -> None:
    url = settings.results_db_url
    assert url == f"sqlite:///{settings.serving_dir / 'results.db'}"
    store = ResultStore(url)
    try:
        check_store(store)
        assert (settings.serving_dir / "results.db").exists()
        # group commit: 200 concurrent writers, every row committed once
        asyncio.run(write_concurrently(store, 200))
        assert store.count() == 202
        assert store.get("req-199").outputs["arrival_delay"] == {"value": 199.0}
    finally:
        store.dispose()


def test_writer_reports_a_broken_store(tmp_path) -> None:
    store = ResultStore(f"sqlite:///{tmp_path / 'r.db'}")  # table never created

    async def run() -> None:
        writer = ResultWriter(store)
        try:
            with pytest.raises(sa.exc.OperationalError, match="gateway_results"):
                await writer.write(result(0))
            store.create()  # the writer keeps going once the store is fixed
            await writer.write(result(1))
        finally:
            await writer.aclose()

    asyncio.run(run())
    assert store.count() == 1
    store.dispose()


@pytest.mark.postgres
def test_postgresql_store(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_RESULTS_URL", postgres_url)
    assert Settings().results_db_url == postgres_url
    store = ResultStore(Settings().results_db_url)
    try:
        check_store(store)
        asyncio.run(write_concurrently(store, 50))
        assert store.count() == 52
        # the rows really are in PostgreSQL, queryable as JSONB
        with store.engine.connect() as conn:
            assert conn.dialect.name == "postgresql"
            late = conn.execute(
                sa.text(
                    "select count(*) from gateway_results "
                    "where versions->>'arrival_delay' = '7' and errors = '{}'::jsonb"
                )
            ).scalar_one()
        assert late == 51
    finally:
        store.dispose()


def test_tables_made_at_once_by_many_creators_on_a_fresh_database(tmp_path) -> None:
    """Two trainings (leases), service workers (prediction log, results) and monitors
    start together on a database nobody made yet: every one of them comes up. With one
    retry per creator, 7 fresh files in 200 failed with "table already exists"."""
    import threading

    from fleet.locks import Leases
    from fleet.predictions import PredictionLog
    from monitoring.history import MonitorHistory

    kinds = (Leases, PredictionLog, ResultStore, MonitorHistory)
    failures: list[str] = []
    for trial in range(40):
        url = f"sqlite:///{tmp_path}/fresh-{trial}.db"

        def make(kind: type, url: str = url) -> None:
            try:
                kind(url).create().dispose()
            except Exception as exc:  # the failure is the finding
                failures.append(f"{kind.__name__}: {exc}")

        threads = [threading.Thread(target=make, args=(k,)) for k in kinds for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert failures == []
