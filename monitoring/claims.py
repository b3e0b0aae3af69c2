"""Retraining triggers claimed at least once, one firing at a time, in the state database.

One row per model in ``retrain_claims``. A firing goes through three steps, each a
single conditional ``UPDATE`` (atomic on SQLite and PostgreSQL, see
``monitoring/history.py``):

1. :meth:`Claims.claim`: a monitor whose policy fires takes a *pending* firing (an id),
   unless one is already pending or the model is in its cooldown. Nothing else changes:
   the cooldown has not started.
2. :meth:`Claims.accept`: the retrain run that handles the firing (started by the
   deployment trigger, or in-line) takes it over; only then does the cooldown start
   (``last_fired_at`` = the firing's time). A second run handed the same firing (the
   event delivered twice, a run started in-line and by the automation) finds it taken
   and skips: one retraining per firing.
3. :meth:`Claims.fail`: a retraining that failed hands the cooldown back (the previous
   ``last_fired_at``), so the next firing retrains. :meth:`Claims.release` drops a
   pending firing that could not be delivered (the event was not emitted).

A pending firing that no run accepts within ``lost_after`` (the event lost, no worker)
no longer blocks: the next monitor may fire again. So a firing is retrained at least
once, unless it failed and a later one takes over. Times: ``now``/``last_fired_at`` are
the policy's clock (the data's, simulated in the replay); ``pending_since`` is the wall
clock, since losing a run happens in real time.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from fleet.predictions import as_utc, utcnow
from fleet.results import create_tables, insert_missing, make_engine

LOST_AFTER = timedelta(hours=1)


class Base(DeclarativeBase):
    pass


class ClaimRow(Base):
    __tablename__ = "retrain_claims"

    model: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    last_fired_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    previous_fired_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    accepted_firing: Mapped[str | None] = mapped_column(sa.String(64))
    pending_firing: Mapped[str | None] = mapped_column(sa.String(64))
    pending_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    pending_since: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))


@dataclass(frozen=True)
class ClaimState:
    model: str
    last_fired_at: datetime | None
    pending_firing: str | None
    pending_since: datetime | None


class Claims:
    """The claims table of one database; ``create()`` makes it if missing."""

    def __init__(self, url: str, lost_after: timedelta = LOST_AFTER) -> None:
        self.engine = make_engine(url)
        self.lost_after = lost_after

    def create(self) -> Claims:
        create_tables(Base.metadata, self.engine)
        return self

    def dispose(self) -> None:
        self.engine.dispose()

    def _update(self, query: sa.Update) -> bool:
        with self.engine.begin() as conn:
            return conn.execute(query).rowcount == 1

    def state(self, model: str) -> ClaimState:
        query = sa.select(ClaimRow).where(ClaimRow.model == model)
        with self.engine.connect() as conn:
            row = conn.execute(query).mappings().one_or_none()
        if row is None:
            return ClaimState(model, None, None, None)

        def utc(value: datetime | None) -> datetime | None:
            return None if value is None else as_utc(value)

        return ClaimState(
            model, utc(row["last_fired_at"]), row["pending_firing"], utc(row["pending_since"])
        )

    def last_fired(self, model: str) -> datetime | None:
        """When the cooldown started: the time of the last accepted firing."""
        return self.state(model).last_fired_at

    def claim(self, model: str, now: datetime, cooldown: timedelta) -> str | None:
        """A pending firing at ``now`` (its id), or None: one pending, or in cooldown."""
        now = as_utc(now)
        insert_missing(self.engine, ClaimRow, {"model": model}, "model")
        firing = uuid.uuid4().hex
        wall = utcnow()
        query = (
            sa.update(ClaimRow)
            .where(
                ClaimRow.model == model,
                sa.or_(
                    ClaimRow.pending_firing.is_(None),
                    ClaimRow.pending_since < wall - self.lost_after,
                ),
                sa.or_(ClaimRow.last_fired_at.is_(None), ClaimRow.last_fired_at <= now - cooldown),
            )
            .values(pending_firing=firing, pending_at=now, pending_since=wall)
        )
        return firing if self._update(query) else None

    def accept(self, model: str, firing: str) -> bool:
        """The run handling ``firing`` takes it: the cooldown starts. False: taken already."""
        query = (
            sa.update(ClaimRow)
            .where(ClaimRow.model == model, ClaimRow.pending_firing == firing)
            .values(
                previous_fired_at=ClaimRow.last_fired_at,
                last_fired_at=ClaimRow.pending_at,
                accepted_firing=firing,
                pending_firing=None,
                pending_since=None,
            )
        )
        return self._update(query)

    def release(self, model: str, firing: str) -> bool:
        """Drop a pending firing nobody will handle (its event could not be sent)."""
        query = (
            sa.update(ClaimRow)
            .where(ClaimRow.model == model, ClaimRow.pending_firing == firing)
            .values(pending_firing=None, pending_since=None)
        )
        return self._update(query)

    def fail(self, model: str, firing: str) -> bool:
        """The accepted firing's retraining failed: its cooldown is handed back."""
        query = (
            sa.update(ClaimRow)
            .where(ClaimRow.model == model, ClaimRow.accepted_firing == firing)
            .values(last_fired_at=ClaimRow.previous_fired_at, accepted_firing=None)
        )
        return self._update(query)
