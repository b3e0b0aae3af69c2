"""The prediction log and its group-commit recorder, on real SQLite and real PostgreSQL."""

from __future__ import annotations

import asyncio
import multiprocessing
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from fleet import predictions
from fleet.predictions import LoggedPrediction, PredictionLog, PredictionRecorder

T0 = datetime(2013, 3, 4, 12, 0, tzinfo=UTC)
# in the catalog's feature order, which read() keeps (PostgreSQL's JSONB does not)
FLIGHT = {"carrier": "UA", "origin": "EWR", "distance": 1400.0, "temp": None}


def flight_row(i: int, model: str = "flight_delay", **changes) -> LoggedPrediction:
    fields = {
        "model": model,
        "version": "3",
        "request_id": f"2013-03-04-UA{i}-EWR",
        "features": {**FLIGHT, "distance": 1000.0 + i},
        "prediction": {"label": "1", "probability": i / 100},
        "event_time": T0 + timedelta(hours=i),
        **changes,
    }
    return LoggedPrediction(**fields)


def check_log(log: PredictionLog) -> None:
    log.create()
    log.create()  # idempotent
    assert log.count() == 0
    assert log.read("flight_delay").columns.tolist() == predictions.META_COLUMNS
    served = datetime.now(UTC)
    rows = [flight_row(i) for i in range(5)]
    rows.append(
        LoggedPrediction(
            "arrival_delay",
            "7",
            "r-late",
            {"distance": 500.0},
            {"value": 12.5},
            event_time=T0 + timedelta(hours=2),
        )
    )
    rows.append(  # no event time: the serving clock
        LoggedPrediction("arrival_delay", "7", "r-now", {"distance": 1.0}, {"value": -3.0})
    )
    assert log.write(rows) == 7 and log.write([]) == 0

    assert log.count() == 7 and log.count("flight_delay") == 5
    # windows are on event_time, start inclusive, end exclusive
    assert log.count("flight_delay", T0 + timedelta(hours=1), T0 + timedelta(hours=3)) == 2
    # naive bounds are UTC
    assert log.count("flight_delay", start=datetime(2013, 3, 4, 15)) == 2

    frame = log.read("flight_delay", T0 + timedelta(hours=1), T0 + timedelta(hours=4))
    assert frame["request_id"].tolist() == [f"2013-03-04-UA{i}-EWR" for i in (1, 2, 3)]
    assert frame.columns.tolist() == [
        *predictions.META_COLUMNS, "carrier", "origin", "distance", "temp",
        "prediction_label", "prediction_probability",
    ]  # fmt: skip
    assert frame["distance"].tolist() == [1001.0, 1002.0, 1003.0]
    assert frame["temp"].isna().all()  # a null feature survives the JSON round trip
    assert frame["prediction_probability"].tolist() == pytest.approx([0.01, 0.02, 0.03])
    assert frame["event_time"].tolist() == [T0 + timedelta(hours=h) for h in (1, 2, 3)]
    assert str(frame["event_time"].dt.tz) == "UTC" and str(frame["logged_at"].dt.tz) == "UTC"
    assert (frame["logged_at"] >= served - timedelta(seconds=5)).all()
    assert set(frame["model"]) == {"flight_delay"} and set(frame["version"]) == {"3"}
    assert len(log.read("flight_delay", limit=2)) == 2

    regression = log.read("arrival_delay")
    assert regression["prediction_value"].tolist() == [12.5, -3.0]  # event_time order
    late, now = regression.to_dict(orient="records")
    assert late["event_time"] == T0 + timedelta(hours=2)
    assert now["event_time"] == now["logged_at"]  # both clocks: the serving clock
    assert now["logged_at"] >= served - timedelta(seconds=5)


def old_log_gains_the_shadow_column(url: str) -> None:
    """A log made before challengers (no ``shadow`` column) is upgraded in place: its rows
    read as answered ones, and shadow rows are kept apart."""
    engine = sa.create_engine(url)
    old = sa.Table(
        "predictions", sa.MetaData(),
        *(c._copy() for c in predictions.PredictionRow.__table__.columns if c.name != "shadow"),
    )  # fmt: skip
    old.create(engine)
    with engine.begin() as conn:
        row = {k: v for k, v in flight_row(0).row().items() if k != "shadow"}
        conn.execute(sa.insert(old), [row | {"request_id": "old"}])
    engine.dispose()
    log = PredictionLog(url)
    try:
        log.create()
        log.create()  # idempotent
        log.write([flight_row(1), flight_row(2, version="4", shadow=True)])
        assert log.read("flight_delay")["request_id"].tolist() == ["old", flight_row(1).request_id]
        mirrored = log.read("flight_delay", shadow=True)
        assert mirrored["version"].tolist() == ["4"]
        assert log.read("flight_delay", shadow=True, version="3").empty
        assert log.count("flight_delay") == 2 and log.count("flight_delay", shadow=None) == 3
    finally:
        log.dispose()


def test_an_old_sqlite_log_gains_the_shadow_column(tmp_path: Path) -> None:
    old_log_gains_the_shadow_column(f"sqlite:///{tmp_path / 'predictions.db'}")


@pytest.mark.postgres
def test_an_old_postgresql_log_gains_the_shadow_column(postgres_url: str) -> None:
    old_log_gains_the_shadow_column(postgres_url)


def test_store_on_sqlite(tmp_path: Path) -> None:
    log = PredictionLog(f"sqlite:///{tmp_path / 'deep' / 'predictions.db'}")
    try:
        check_log(log)
    finally:
        log.dispose()


@pytest.mark.postgres
def test_store_and_recorder_on_postgresql(postgres_url: str) -> None:
    log = PredictionLog(postgres_url)
    try:
        check_log(log)
        many_threads_share_commits(PredictionRecorder(log), log, offset=7)
    finally:
        log.dispose()


def test_settings_url_and_request_metadata(settings) -> None:
    assert settings.predictions_db_url == f"sqlite:///{settings.serving_dir / 'predictions.db'}"
    assert predictions.parse_event_time(None) is None
    assert predictions.parse_event_time(" ") is None
    assert predictions.parse_event_time("2013-03-04T12:00:00") == T0  # naive: UTC
    assert predictions.parse_event_time("2013-03-04T14:00:00+02:00") == T0
    with pytest.raises(ValueError, match="X-Fleet-Event-Time must be an ISO 8601"):
        predictions.parse_event_time("yesterday")
    assert predictions.request_id_of(" abc ") == "abc"
    made = {predictions.request_id_of(None) for _ in range(3)}
    assert len(made) == 3 and all(len(x) == 32 for x in made)
    with pytest.raises(ValueError, match="longer than 128"):
        predictions.request_id_of("x" * 129)
    assert predictions.batch_request_ids("a, b,c", 3) == ["a", "b", "c"]
    assert predictions.batch_request_ids("batch-1", 2) == ["batch-1:0", "batch-1:1"]
    assert predictions.batch_request_ids("a,b", 3) == ["a,b:0", "a,b:1", "a,b:2"]


def many_threads_share_commits(recorder: PredictionRecorder, log: PredictionLog, offset=0):
    """64 threads x 25 requests, each waiting for its own rows: all land, commits shared."""
    before = log.count()
    seen_committed: list[bool] = []

    def one(i: int) -> None:
        rid = f"t-{offset}-{i}"
        recorder.record([flight_row(i % 24, request_id=rid)])
        if i % 25 == 0:  # durable before the call returns: another connection sees it
            with log.engine.connect() as conn:
                query = sa.select(sa.func.count()).select_from(predictions.PredictionRow)
                found = conn.execute(query.where(predictions.PredictionRow.request_id == rid))
                seen_committed.append(found.scalar_one() == 1)

    try:
        with ThreadPoolExecutor(max_workers=64) as pool:
            list(pool.map(one, range(1600)))
    finally:
        recorder.close()
    assert all(seen_committed) and len(seen_committed) == 64
    assert log.count() - before == 1600 == recorder.rows
    assert recorder.commits < 1600 / 2, recorder.commits  # grouped, not one per request


def test_recorder_group_commit_with_many_threads(tmp_path: Path) -> None:
    log = PredictionLog(f"sqlite:///{tmp_path / 'p.db'}").create()
    try:
        many_threads_share_commits(PredictionRecorder(log), log)
    finally:
        log.dispose()


def test_recorder_from_asyncio(tmp_path: Path) -> None:
    log = PredictionLog(f"sqlite:///{tmp_path / 'p.db'}").create()
    recorder = PredictionRecorder(log)

    async def main() -> None:
        await asyncio.gather(
            *(recorder.arecord([flight_row(i, request_id=f"a-{i}")]) for i in range(500))
        )

    try:
        asyncio.run(main())
        assert log.count("flight_delay") == 500 and recorder.commits < 250
    finally:
        recorder.close()
        log.dispose()


def test_a_failing_log_fails_the_caller(tmp_path: Path) -> None:
    """A log that cannot commit (here: another writer holds SQLite's lock) is an error,
    within the wait budget; once the lock is gone the queued rows are committed."""
    path = tmp_path / "p.db"
    log = PredictionLog(f"sqlite:///{path}").create()
    recorder = PredictionRecorder(log, timeout_s=0.5)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the write lock, as another process would hold it
    try:
        start = time.monotonic()
        with pytest.raises(predictions.PredictionLogError, match=r"did not commit within 0\.5"):
            recorder.record([flight_row(1)])
        with pytest.raises(predictions.PredictionLogError, match="did not commit"):
            asyncio.run(recorder.arecord([flight_row(2)]))
        assert time.monotonic() - start < 5
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert recorder.record([flight_row(3)], timeout_s=60) == 1
    recorder.close()
    # at least once: the rows of the requests that gave up were still written
    assert log.count("flight_delay") == 3

    broken = PredictionRecorder(PredictionLog(f"sqlite:///{tmp_path / 'none.db'}"))
    with pytest.raises(predictions.PredictionLogError, match="no such table"):
        broken.record([flight_row(1)])  # never created: every waiter gets the error
    broken.close()
    with pytest.raises(predictions.PredictionLogError, match="closed"):
        broken.record([flight_row(1)])
    log.dispose()


def _writer_process(url: str, worker: int, n: int, ready, go) -> None:
    """One BentoML-like worker: its own engine and recorder, 16 threads logging."""
    log = PredictionLog(url).create()  # all create at once, as workers starting together
    recorder = PredictionRecorder(log)
    ready.wait()
    go.wait()

    def one(i: int) -> None:
        recorder.record([flight_row(i % 24, request_id=f"p{worker}-{i}")])

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(one, range(n)))
    recorder.close()
    log.dispose()


def test_several_processes_write_one_sqlite_file(tmp_path: Path) -> None:
    """Worker processes sharing the SQLite file: WAL + busy timeout, no lost row."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    # fork starts quicker than spawn; each process makes its own engine and recorder
    context = multiprocessing.get_context("fork")
    workers, n = 4, 600
    ready = context.Barrier(workers + 1)
    go = context.Event()
    procs = [
        context.Process(target=_writer_process, args=(url, w, n, ready, go)) for w in range(workers)
    ]
    for proc in procs:
        proc.start()
    ready.wait(timeout=120)
    go.set()
    for proc in procs:
        proc.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * workers
    log = PredictionLog(url)
    frame = log.read("flight_delay")
    log.dispose()
    assert len(frame) == workers * n
    assert set(frame["request_id"]) == {f"p{w}-{i}" for w in range(workers) for i in range(n)}


def test_close_commits_what_is_queued(tmp_path: Path) -> None:
    log = PredictionLog(f"sqlite:///{tmp_path / 'p.db'}").create()
    recorder = PredictionRecorder(log)
    futures = [recorder.submit([flight_row(i)]) for i in range(100)]
    closer = threading.Thread(target=recorder.close)
    closer.start()
    closer.join(30)
    assert all(f.result(0) == 1 for f in futures)
    assert log.count() == 100
    log.dispose()
