"""Leases in the fleet's state database: one holder per name, on SQLite and PostgreSQL.

A lease is a row of ``fleet_leases``. Taking it is one conditional ``UPDATE ... WHERE
holder IS NULL OR expires_at < now``: of two processes asking at once exactly one sees
its update match the row (SQLite serialises writers; PostgreSQL makes the second
``UPDATE`` wait for the first's row lock and re-check the condition against the
committed row). A holder renews its lease while it works (:class:`Lease` runs a
heartbeat thread); a holder that dies stops renewing, and its lease expires after
``ttl_s``, so a crash never blocks a model for longer than that. Every process that can
move a model's ``@champion``, or retrain it, takes the same lease, wherever it runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from fleet.predictions import as_utc, utcnow
from fleet.results import create_tables, insert_missing, make_engine

logger = logging.getLogger("fleet.locks")

DEFAULT_TTL_S = 60.0


class Base(DeclarativeBase):
    pass


class LeaseRow(Base):
    __tablename__ = "fleet_leases"

    name: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    holder: Mapped[str | None] = mapped_column(sa.String(256), nullable=True)
    acquired_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    note: Mapped[str] = mapped_column(sa.Text, default="")


class LeaseBusy(TimeoutError):
    """Another holder has the lease; the message names it and since when."""


@dataclass(frozen=True)
class HolderInfo:
    name: str
    holder: str | None
    acquired_at: datetime | None
    expires_at: datetime | None
    note: str

    def live(self, now: datetime | None = None) -> bool:
        now = now or utcnow()
        return self.holder is not None and self.expires_at is not None and self.expires_at > now


def holder_id() -> str:
    """This process on this machine, unique per call (two leases in one process differ)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Leases:
    """The lease table of one database; ``create()`` makes it if missing."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)

    def create(self) -> Leases:
        create_tables(Base.metadata, self.engine)
        return self

    def dispose(self) -> None:
        self.engine.dispose()

    def _ensure_row(self, name: str) -> None:
        insert_missing(self.engine, LeaseRow, {"name": name, "holder": None, "note": ""}, "name")

    def try_acquire(self, name: str, holder: str, ttl_s: float, note: str = "") -> bool:
        """Take ``name`` for ``holder`` unless someone else holds a live lease on it."""
        self._ensure_row(name)
        now = utcnow()
        query = (
            sa.update(LeaseRow)
            .where(
                LeaseRow.name == name,
                sa.or_(
                    LeaseRow.holder.is_(None),
                    LeaseRow.holder == holder,
                    LeaseRow.expires_at < now,
                ),
            )
            .values(
                holder=holder,
                acquired_at=now,
                expires_at=now + timedelta(seconds=ttl_s),
                note=note,
            )
        )
        with self.engine.begin() as conn:
            return conn.execute(query).rowcount == 1

    def renew(self, name: str, holder: str, ttl_s: float) -> bool:
        """Push the expiry out; False when the lease is no longer this holder's."""
        query = (
            sa.update(LeaseRow)
            .where(LeaseRow.name == name, LeaseRow.holder == holder)
            .values(expires_at=utcnow() + timedelta(seconds=ttl_s))
        )
        with self.engine.begin() as conn:
            return conn.execute(query).rowcount == 1

    def release(self, name: str, holder: str) -> bool:
        query = (
            sa.update(LeaseRow)
            .where(LeaseRow.name == name, LeaseRow.holder == holder)
            .values(holder=None, expires_at=None)
        )
        with self.engine.begin() as conn:
            return conn.execute(query).rowcount == 1

    def info(self, name: str) -> HolderInfo | None:
        query = sa.select(LeaseRow).where(LeaseRow.name == name)
        with self.engine.connect() as conn:
            row = conn.execute(query).mappings().one_or_none()
        if row is None:
            return None
        return HolderInfo(
            name=row["name"],
            holder=row["holder"],
            acquired_at=as_utc(row["acquired_at"]) if row["acquired_at"] else None,
            expires_at=as_utc(row["expires_at"]) if row["expires_at"] else None,
            note=row["note"] or "",
        )


class Lease:
    """One held lease with a heartbeat; use :func:`hold` to take it."""

    def __init__(self, leases: Leases, name: str, holder: str, ttl_s: float) -> None:
        self.leases = leases
        self.name = name
        self.holder = holder
        self.ttl_s = ttl_s
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name=f"lease-{name}", daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                if not self.leases.renew(self.name, self.holder, self.ttl_s):
                    logger.error("lease %s was lost (expired and taken by another)", self.name)
                    self.lost.set()
                    return
            except sa.exc.SQLAlchemyError as exc:  # a blip: try again next beat
                logger.warning("lease %s not renewed: %s", self.name, exc)

    def check(self) -> None:
        """Raise if the lease was lost: an expired holder must not write."""
        if self.lost.is_set():
            raise LeaseBusy(f"lease {self.name} was lost while held; nothing was written")

    def release(self) -> None:
        self._stop.set()
        self._beat.join(timeout=5)
        self.leases.release(self.name, self.holder)


@contextlib.contextmanager
def hold(
    url: str,
    name: str,
    timeout_s: float = 600.0,
    ttl_s: float = DEFAULT_TTL_S,
    note: str = "",
    poll_s: float = 0.2,
) -> Iterator[Lease]:
    """Hold lease ``name`` for the block, waiting up to ``timeout_s`` for it.

    Raises :class:`LeaseBusy` naming the holder when it stays taken (``timeout_s=0``:
    do not wait).
    """
    leases = Leases(url).create()
    holder = holder_id()
    deadline = time.monotonic() + timeout_s
    try:
        while not leases.try_acquire(name, holder, ttl_s, note):
            if time.monotonic() >= deadline:
                current = leases.info(name)
                who = f" by {current.holder} since {current.acquired_at:%Y-%m-%d %H:%M:%S}" if (
                    current and current.holder and current.acquired_at
                ) else ""  # fmt: skip
                what = f" ({current.note})" if current and current.note else ""
                raise LeaseBusy(f"{name} is held{who}{what}")
            time.sleep(poll_s)
        lease = Lease(leases, name, holder, ttl_s)
        try:
            yield lease
        finally:
            lease.release()
    finally:
        leases.dispose()
