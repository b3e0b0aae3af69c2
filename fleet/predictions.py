"""The prediction log: every prediction served, one row per record, through SQLAlchemy.

SQLite under ``$FLEET_HOME/serving/predictions.db`` by default; PostgreSQL (or any
SQLAlchemy URL) through ``FLEET_PREDICTIONS_URL``. The drift monitors read it back by
model and time window as a frame with one column per feature.

Two clocks per row: ``logged_at`` is when the service answered, ``event_time`` is when
the event happened in the caller's clock (the gateway's ``event_time``, the replay's
simulated 2013). Windows are taken on ``event_time``. ``request_id`` is the join key for
ground truth that arrives later: callers send the record's business key (a flight id)
as the request id, and labels are joined on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from fleet import catalog
from fleet.results import JSONType, create_tables, make_engine

logger = logging.getLogger("fleet.predictions")


class Base(DeclarativeBase):
    pass


class PredictionRow(Base):
    __tablename__ = "predictions"
    __table_args__ = (sa.Index("ix_predictions_model_event_time", "model", "event_time"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    logged_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    event_time: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    request_id: Mapped[str] = mapped_column(sa.String(128), index=True)
    model: Mapped[str] = mapped_column(sa.String(64))
    version: Mapped[str] = mapped_column(sa.String(32))
    features: Mapped[dict[str, Any]] = mapped_column(JSONType)
    prediction: Mapped[dict[str, Any]] = mapped_column(JSONType)
    # a @challenger's mirrored answer, never returned to the caller (monitoring.shadow)
    shadow: Mapped[bool] = mapped_column(sa.Boolean, default=False, server_default=sa.false())


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """Naive datetimes are taken as UTC (SQLite hands them back naive)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True)
class LoggedPrediction:
    """One record's prediction as served."""

    model: str
    version: str
    request_id: str
    features: dict[str, Any]
    prediction: dict[str, Any]
    event_time: datetime | None = None
    logged_at: datetime = field(default_factory=utcnow)
    shadow: bool = False  # a challenger's mirrored answer (see PredictionRow.shadow)

    def row(self) -> dict[str, Any]:
        return {
            "logged_at": as_utc(self.logged_at),
            "event_time": as_utc(self.event_time or self.logged_at),
            "request_id": self.request_id,
            "model": self.model,
            "version": self.version,
            "features": self.features,
            "prediction": self.prediction,
            "shadow": self.shadow,
        }


SHADOW_COLUMN = "shadow BOOLEAN NOT NULL DEFAULT false"  # added to logs made before it
META_COLUMNS = ["logged_at", "event_time", "request_id", "model", "version"]


class PredictionLog:
    """The prediction log table; ``create()`` makes it if missing."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)

    def create(self) -> PredictionLog:
        # several workers start at once, each creating the table if missing
        create_tables(Base.metadata, self.engine)
        self._add_shadow_column()
        return self

    def _add_shadow_column(self) -> None:
        """A log made before challengers existed gets the ``shadow`` column (all false)."""
        columns = {c["name"] for c in sa.inspect(self.engine).get_columns("predictions")}
        if "shadow" in columns:
            return
        try:
            with self.engine.begin() as conn:
                conn.execute(sa.text(f"ALTER TABLE predictions ADD COLUMN {SHADOW_COLUMN}"))
        except sa.exc.DBAPIError:  # another worker added it meanwhile
            columns = {c["name"] for c in sa.inspect(self.engine).get_columns("predictions")}
            if "shadow" not in columns:
                raise

    @property
    def display_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def write(self, predictions: Sequence[LoggedPrediction]) -> int:
        """Insert in one transaction; returns how many rows."""
        if not predictions:
            return 0
        with self.engine.begin() as conn:
            conn.execute(sa.insert(PredictionRow), [p.row() for p in predictions])
        return len(predictions)

    def _where(
        self,
        model: str | None,
        start: datetime | None,
        end: datetime | None,
        shadow: bool | None = False,
        version: str | None = None,
    ) -> list[sa.ColumnElement[bool]]:
        clauses: list[sa.ColumnElement[bool]] = []
        if model is not None:
            clauses.append(PredictionRow.model == model)
        if shadow is not None:
            clauses.append(PredictionRow.shadow == shadow)
        if version is not None:
            clauses.append(PredictionRow.version == version)
        if start is not None:
            clauses.append(PredictionRow.event_time >= as_utc(start))
        if end is not None:
            clauses.append(PredictionRow.event_time < as_utc(end))
        return clauses

    def count(
        self,
        model: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        shadow: bool | None = False,
    ) -> int:
        """Rows answered to callers (``shadow=True``: a challenger's; None: both)."""
        query = sa.select(sa.func.count()).select_from(PredictionRow)
        query = query.where(*self._where(model, start, end, shadow))
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def read(
        self,
        model: str,
        start: datetime | None = None,
        end: datetime | None = None,
        limit: int | None = None,
        shadow: bool = False,
        version: str | None = None,
    ) -> pd.DataFrame:
        """Rows of ``model`` with ``start <= event_time < end``, oldest first: the answers
        callers got, or with ``shadow`` a challenger's mirrored ones (of ``version``).

        Columns: ``logged_at, event_time, request_id, model, version``, one column per
        logged feature, and the prediction's fields prefixed ``prediction_`` (for
        example ``prediction_label``, ``prediction_probability``, ``prediction_value``).
        """
        query = (
            sa.select(PredictionRow)
            .where(*self._where(model, start, end, shadow, version))
            .order_by(PredictionRow.event_time, PredictionRow.id)
        )
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        if not rows:
            return pd.DataFrame(columns=META_COLUMNS)
        meta = pd.DataFrame([{c: r[c] for c in META_COLUMNS} for r in rows])
        for col in ("logged_at", "event_time"):
            meta[col] = pd.to_datetime(meta[col], utc=True)
        features = pd.DataFrame([r["features"] for r in rows])
        # PostgreSQL's JSONB does not keep key order: the catalog's order, as in training
        spec = catalog.models().get(model)
        if spec is not None:
            known = [c for c in spec.features if c in features.columns]
            features = features[known + [c for c in features.columns if c not in known]]
        answers = pd.DataFrame([r["prediction"] for r in rows]).add_prefix("prediction_")
        return pd.concat([meta, features, answers], axis=1)

    def dispose(self) -> None:
        self.engine.dispose()


# --- request metadata -----------------------------------------------------------------

REQUEST_ID_HEADER = "X-Request-ID"
EVENT_TIME_HEADER = "X-Fleet-Event-Time"
MAX_REQUEST_ID = 128  # the column's width


def new_request_id() -> str:
    return uuid.uuid4().hex


def parse_event_time(text: str | None) -> datetime | None:
    """An ISO 8601 datetime (naive = UTC) from a header; None when absent or blank.

    Raises ``ValueError`` naming the expected form when it is not a datetime.
    """
    if text is None or not text.strip():
        return None
    try:
        return as_utc(datetime.fromisoformat(text.strip()))
    except ValueError:
        raise ValueError(
            f"{EVENT_TIME_HEADER} must be an ISO 8601 datetime such as "
            f"2013-03-04T12:00:00+00:00, not {text!r}"
        ) from None


def request_id_of(header: str | None) -> str:
    """The request id a caller sent (trimmed), or a new one; refuses over-long ids."""
    value = (header or "").strip()
    if len(value) > MAX_REQUEST_ID:
        raise ValueError(f"{REQUEST_ID_HEADER} is longer than {MAX_REQUEST_ID} characters")
    return value or new_request_id()


def batch_request_ids(request_id: str, n: int) -> list[str]:
    """One id per record of a batch: a comma-separated list of exactly ``n`` ids is taken
    as the records' own ids (their business keys); any other id gets ``:<index>``."""
    parts = [p.strip() for p in request_id.split(",")]
    if n > 1 and len(parts) == n and all(parts):
        return parts
    return [f"{request_id}:{i}" for i in range(n)]


# --- group commit ---------------------------------------------------------------------


class PredictionLogError(RuntimeError):
    """Predictions could not be logged: the request must not be answered as served."""


@dataclass
class _Pending:
    rows: list[LoggedPrediction]
    done: Future[int]


_STOP = object()


class PredictionRecorder:
    """Group commit into a :class:`PredictionLog`, for threads and for asyncio alike.

    One writer thread takes everything queued and inserts it in ONE transaction; each
    caller waits until its rows are committed (:meth:`record` blocks a thread,
    :meth:`arecord` awaits), so an answer is only sent once its log row is durable.
    Concurrent requests share a commit: one commit per request would cap a service at
    the database's commit rate, and SQLite has a single writer across processes.

    A commit that fails because another process holds SQLite's write lock past the busy
    timeout (``database is locked``) is retried until ``retry_s`` has passed; any other
    failure is handed to every waiter of that transaction as :class:`PredictionLogError`.
    A waiter that gives up after ``timeout_s`` fails its request; its rows may still be
    committed later, so the log holds every answered prediction and, rarely, one whose
    request failed (at least once, never lost).
    """

    def __init__(
        self,
        log: PredictionLog,
        max_rows: int = 2000,
        timeout_s: float = 10.0,
        retry_s: float = 30.0,
    ) -> None:
        self.log = log
        self.max_rows = max_rows
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self.commits = 0  # transactions committed; rows / commits is the grouping
        self.rows = 0
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, rows: Sequence[LoggedPrediction]) -> Future[int]:
        """Queue ``rows`` for the next transaction; the future resolves once committed."""
        done: Future[int] = Future()
        if not rows:
            done.set_result(0)
            return done
        with self._lock:
            if self._closed:
                raise PredictionLogError("the prediction recorder is closed")
            if self._thread is None or not self._thread.is_alive():
                # started on first use: a BentoML worker is its own process, so the
                # thread belongs to the process that logs
                self._thread = threading.Thread(
                    target=self._run, name="prediction-log-writer", daemon=True
                )
                self._thread.start()
            self._queue.put(_Pending(list(rows), done))
        return done

    def record(self, rows: Sequence[LoggedPrediction], timeout_s: float | None = None) -> int:
        """Log ``rows``, blocking until committed; raises :class:`PredictionLogError`."""
        timeout = self.timeout_s if timeout_s is None else timeout_s
        try:
            return self.submit(rows).result(timeout)
        except FutureTimeout:
            raise PredictionLogError(
                f"prediction log {self.log.display_url} did not commit within {timeout} s"
            ) from None

    async def arecord(
        self, rows: Sequence[LoggedPrediction], timeout_s: float | None = None
    ) -> int:
        """:meth:`record` for asyncio code: the event loop never waits on the database."""
        timeout = self.timeout_s if timeout_s is None else timeout_s
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.wrap_future(self.submit(rows))
        except TimeoutError:
            raise PredictionLogError(
                f"prediction log {self.log.display_url} did not commit within {timeout} s"
            ) from None

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            count = len(first.rows)
            stop = False
            while count < self.max_rows:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    stop = True
                    break
                batch.append(more)
                count += len(more.rows)
            self._commit(batch)
            if stop:
                return

    def _commit(self, batch: list[_Pending]) -> None:
        rows = [row for pending in batch for row in pending.rows]
        deadline = time.monotonic() + self.retry_s
        pause = 0.05
        while True:
            try:
                self.log.write(rows)
            except sa.exc.OperationalError as exc:
                if "locked" in str(exc.orig) and time.monotonic() + pause < deadline:
                    logger.warning("prediction log busy, retrying: %s", exc.orig)
                    time.sleep(pause)
                    pause = min(pause * 2, 1.0)
                    continue
                self._fail(batch, exc)
                return
            except Exception as exc:
                self._fail(batch, exc)
                return
            break
        self.commits += 1
        self.rows += len(rows)
        for pending in batch:
            with contextlib.suppress(InvalidStateError):  # a waiter that gave up
                pending.done.set_result(len(pending.rows))

    def _fail(self, batch: list[_Pending], exc: BaseException) -> None:
        logger.error("prediction log %s: %d rows not written: %s",
                     self.log.display_url, sum(len(p.rows) for p in batch), exc)  # fmt: skip
        error = PredictionLogError(f"prediction log {self.log.display_url}: {exc}")
        for pending in batch:
            with contextlib.suppress(InvalidStateError):
                pending.done.set_exception(error)

    def close(self, timeout_s: float = 30.0) -> None:
        """Commit what is queued, then stop the writer thread."""
        with self._lock:
            self._closed = True
            thread = self._thread
            if thread is not None:
                self._queue.put(_STOP)
        if thread is not None:
            thread.join(timeout_s)
