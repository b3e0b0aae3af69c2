"""The gateway's result store: one row per combined result, through SQLAlchemy 2.x.

SQLite under ``$FLEET_HOME/serving/results.db`` by default, PostgreSQL (or any SQLAlchemy
URL) through ``settings.results_db_url``. Tables are created on start. The gateway
writes through :class:`ResultWriter`, which commits the rows of concurrent requests in
one transaction (group commit): one SQLite commit per request would cap the gateway at
the disk's fsync rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from fleet.routing import CombinedResult

JSONType = sa.JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    pass


class ResultRow(Base):
    """A combined gateway result."""

    __tablename__ = "gateway_results"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(sa.String(128), index=True)
    received_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), index=True)
    inputs: Mapped[dict[str, Any]] = mapped_column(JSONType)
    outputs: Mapped[dict[str, Any]] = mapped_column(JSONType)  # model -> prediction
    versions: Mapped[dict[str, str]] = mapped_column(JSONType)  # model -> version
    errors: Mapped[dict[str, str]] = mapped_column(JSONType)  # model -> message
    models: Mapped[str] = mapped_column(sa.String(512))  # comma-separated, requested
    latency_ms: Mapped[float] = mapped_column(sa.Float)


@dataclass(frozen=True)
class StoredResult:
    request_id: str
    received_at: datetime
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    versions: dict[str, str]
    errors: dict[str, str]
    models: list[str]
    latency_ms: float


def _row(result: CombinedResult) -> dict[str, Any]:
    return {
        "request_id": result.request_id,
        "received_at": result.received_at,
        "inputs": result.inputs,
        "outputs": {m: r["prediction"] for m, r in result.results.items()},
        "versions": result.versions,
        "errors": result.errors,
        "models": ",".join(result.requested),
        "latency_ms": float(result.latency_ms),
    }


def _stored(row: ResultRow) -> StoredResult:
    return StoredResult(
        request_id=row.request_id,
        received_at=row.received_at,
        inputs=row.inputs,
        outputs=row.outputs,
        versions=row.versions,
        errors=row.errors,
        models=[m for m in row.models.split(",") if m],
        latency_ms=row.latency_ms,
    )


def make_engine(url: str) -> sa.Engine:
    """An engine for ``url``; SQLite gets its folder, WAL and a busy timeout."""
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            # WAL lets readers (tests, `fleet` queries) run while the gateway writes
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True)


def create_tables(metadata: sa.MetaData, engine: sa.Engine, attempts: int = 8) -> None:
    """``create_all``, converging when other processes or threads create the same tables.

    Each pass checks what exists and creates the rest, so a pass that lost a race (its
    CREATE found the table made since its check) is simply run again. One retry was not
    enough: with four creators on a fresh SQLite file, 7 runs in 200 still failed, and
    ``fleet train --all`` (two models at a time) failed a fresh ``make run`` that way.
    """
    for attempt in range(attempts):
        try:
            metadata.create_all(engine)
            return
        except sa.exc.DBAPIError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.02 * (attempt + 1))


def insert_missing(engine: sa.Engine, table: Any, values: dict[str, Any], key: str) -> None:
    """Insert the row ``values`` unless one with the same primary ``key`` exists (race-safe)."""
    dialect = engine.dialect.name
    if dialect in ("sqlite", "postgresql"):
        if dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:
            from sqlalchemy.dialects.postgresql import insert
        stmt = insert(table).values(**values).on_conflict_do_nothing(index_elements=[key])
        with engine.begin() as conn:
            conn.execute(stmt)
        return
    try:  # other databases: the primary key refuses the second insert
        with engine.begin() as conn:
            conn.execute(sa.insert(table).values(**values))
    except sa.exc.IntegrityError:
        pass


class ResultStore:
    """Combined results in a SQL database; ``create()`` makes the table if missing."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)

    def create(self) -> ResultStore:
        create_tables(Base.metadata, self.engine)
        return self

    def save(self, results: Sequence[CombinedResult]) -> int:
        """Insert results in one transaction; returns how many."""
        if not results:
            return 0
        with self.engine.begin() as conn:
            conn.execute(sa.insert(ResultRow), [_row(r) for r in results])
        return len(results)

    def get(self, request_id: str) -> StoredResult | None:
        """The latest result stored under ``request_id``."""
        query = (
            sa.select(ResultRow)
            .where(ResultRow.request_id == request_id)
            .order_by(ResultRow.id.desc())
            .limit(1)
        )
        with sa.orm.Session(self.engine) as session:
            row = session.scalars(query).first()
            return _stored(row) if row is not None else None

    def recent(self, limit: int = 100, with_errors: bool | None = None) -> list[StoredResult]:
        """The last ``limit`` results, newest first; optionally only with/without errors."""
        query = sa.select(ResultRow).order_by(ResultRow.id.desc()).limit(limit)
        with sa.orm.Session(self.engine) as session:
            rows = [_stored(r) for r in session.scalars(query)]
        if with_errors is not None:
            rows = [r for r in rows if bool(r.errors) == with_errors]
        return rows

    def count(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(ResultRow)).scalar_one()

    def dispose(self) -> None:
        self.engine.dispose()

    @property
    def display_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)


class ResultWriter:
    """Group commit for an asyncio server: concurrent ``write`` calls share a transaction.

    One background task drains the queue and inserts everything pending in one
    transaction on a worker thread, so the event loop never blocks on the database.
    ``write`` returns once its row is committed (or raises the store's error).
    """

    def __init__(self, store: ResultStore, max_batch: int = 256) -> None:
        self.store = store
        self.max_batch = max_batch
        self._queue: asyncio.Queue[tuple[CombinedResult, asyncio.Future[None]]] | None = None
        self._task: asyncio.Task[None] | None = None

    def _ensure_started(self) -> asyncio.Queue[tuple[CombinedResult, asyncio.Future[None]]]:
        if self._queue is None or self._task is None or self._task.done():
            self._queue = asyncio.Queue()
            self._task = asyncio.get_running_loop().create_task(self._run())
        return self._queue

    async def write(self, result: CombinedResult) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._ensure_started().put((result, future))
        await future

    async def _run(self) -> None:
        assert self._queue is not None
        queue = self._queue
        while True:
            batch = [await queue.get()]
            while len(batch) < self.max_batch and not queue.empty():
                batch.append(queue.get_nowait())
            try:
                await asyncio.to_thread(self.store.save, [r for r, _ in batch])
            except Exception as exc:  # every waiter learns the store failed
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
            else:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_result(None)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None
        self._queue = None
