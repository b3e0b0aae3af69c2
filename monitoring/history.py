"""Monitor history in the fleet's state database: one row per drift job.

``monitor_runs`` holds each job's summary, decision and report path; the index page is
rendered from it. The trigger claims (one firing per cooldown, at least once) are
``monitoring/claims.py``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from fleet.predictions import as_utc, utcnow
from fleet.results import JSONType, create_tables, make_engine
from monitoring.policy import TriggerDecision
from monitoring.summary import DriftSummary


class Base(DeclarativeBase):
    pass


class MonitorRunRow(Base):
    __tablename__ = "monitor_runs"
    __table_args__ = (sa.Index("ix_monitor_runs_model_decided", "model", "decided_at"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(sa.String(64))
    ran_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))  # wall clock
    decided_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))  # policy clock
    window_start: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    window_end: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    rows_current: Mapped[int] = mapped_column(sa.Integer)
    rows_labelled: Mapped[int] = mapped_column(sa.Integer)
    drift_share: Mapped[float] = mapped_column(sa.Float)
    drifted_columns: Mapped[list[str]] = mapped_column(JSONType)
    metric: Mapped[str] = mapped_column(sa.String(32))
    quality: Mapped[float | None] = mapped_column(sa.Float, nullable=True)
    champion_version: Mapped[int] = mapped_column(sa.Integer)
    champion_score: Mapped[float | None] = mapped_column(sa.Float, nullable=True)
    fired: Mapped[bool] = mapped_column(sa.Boolean)
    reason: Mapped[str] = mapped_column(sa.Text)
    report_path: Mapped[str] = mapped_column(sa.Text)
    summary: Mapped[dict[str, Any]] = mapped_column(JSONType)


class RetrainOutcomeRow(Base):
    """What the retraining of a firing ended as; the index shows it beside the run."""

    __tablename__ = "retrain_outcomes"

    firing: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    model: Mapped[str] = mapped_column(sa.String(64))
    status: Mapped[str] = mapped_column(sa.String(16))  # promoted, kept, failed, skipped
    version: Mapped[str | None] = mapped_column(sa.String(32), nullable=True)
    finished_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))


@dataclass(frozen=True)
class MonitorRun:
    """One recorded drift job, as the index shows it."""

    id: int
    model: str
    ran_at: datetime
    decided_at: datetime
    window_start: datetime
    window_end: datetime
    rows_current: int
    rows_labelled: int
    drift_share: float
    drifted_columns: list[str]
    metric: str
    quality: float | None
    champion_version: int
    champion_score: float | None
    fired: bool
    reason: str
    report_path: str
    firing: str | None = None  # the firing it claimed, when it fired
    outcome: str | None = None  # its retraining: "promoted v5", "kept v6", "failed", ...
    shadow: str = ""  # the challenger's shadow test this run, if any


def _finite(value: float | None) -> float | None:
    return None if value is None or value != value else float(value)


class MonitorHistory:
    """The two monitor tables; ``create()`` makes them if missing."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)

    def create(self) -> MonitorHistory:
        create_tables(Base.metadata, self.engine)  # other monitors may be creating them too
        return self

    def dispose(self) -> None:
        self.engine.dispose()

    def record(self, summary: DriftSummary, decision: TriggerDecision, decided_at: datetime) -> int:
        """Store one run; returns its id."""
        row = {
            "model": summary.model,
            "ran_at": utcnow(),
            "decided_at": as_utc(decided_at),
            "window_start": as_utc(summary.window_start),
            "window_end": as_utc(summary.window_end),
            "rows_current": summary.rows_current,
            "rows_labelled": summary.rows_labelled,
            "drift_share": summary.drift_share,
            "drifted_columns": list(summary.drifted_columns),
            "metric": summary.metric,
            "quality": _finite(summary.quality),
            "champion_version": summary.champion_version,
            "champion_score": _finite(summary.champion_score),
            "fired": decision.fire,
            "reason": decision.reason,
            "report_path": summary.report_path,
            # the firing in the free-form summary: no new column for older databases
            "summary": {**summary.payload(), "firing": decision.firing},
        }
        with self.engine.begin() as conn:
            result = conn.execute(sa.insert(MonitorRunRow).returning(MonitorRunRow.id), [row])
            return int(result.scalar_one())

    def runs(self, model: str | None = None, limit: int | None = None) -> list[MonitorRun]:
        """Recorded runs, newest decision first."""
        query = sa.select(MonitorRunRow).order_by(
            MonitorRunRow.decided_at.desc(), MonitorRunRow.id.desc()
        )
        if model is not None:
            query = query.where(MonitorRunRow.model == model)
        if limit is not None:
            query = query.limit(limit)
        with Session(self.engine) as session:
            rows = session.scalars(query).all()
        out = []
        for r in rows:
            out.append(
                MonitorRun(
                    id=r.id,
                    model=r.model,
                    ran_at=as_utc(r.ran_at),
                    decided_at=as_utc(r.decided_at),
                    window_start=as_utc(r.window_start),
                    window_end=as_utc(r.window_end),
                    rows_current=r.rows_current,
                    rows_labelled=r.rows_labelled,
                    drift_share=r.drift_share,
                    drifted_columns=list(r.drifted_columns or []),
                    metric=r.metric,
                    quality=r.quality,
                    champion_version=r.champion_version,
                    champion_score=r.champion_score,
                    fired=r.fired,
                    reason=r.reason,
                    report_path=r.report_path,
                    firing=(r.summary or {}).get("firing"),
                    shadow=(r.summary or {}).get("shadow_note") or "",
                )
            )
        outcomes = self._outcomes({run.firing for run in out if run.firing})
        return [
            dataclasses.replace(run, outcome=outcomes[run.firing])
            if run.firing in outcomes else run
            for run in out
        ]  # fmt: skip

    def record_outcome(self, firing: str, model: str, status: str, version: str | None) -> None:
        """The retraining of ``firing`` ended as ``status`` (a repeat replaces it)."""
        row = {"firing": firing, "model": model, "status": status, "version": version,
               "finished_at": utcnow()}  # fmt: skip
        with self.engine.begin() as conn:
            conn.execute(sa.delete(RetrainOutcomeRow).where(RetrainOutcomeRow.firing == firing))
            conn.execute(sa.insert(RetrainOutcomeRow), [row])

    def _outcomes(self, firings: set[str]) -> dict[str, str]:
        if not firings:
            return {}
        query = sa.select(RetrainOutcomeRow).where(RetrainOutcomeRow.firing.in_(firings))
        with Session(self.engine) as session:
            return {
                r.firing: f"{r.status} v{r.version}" if r.version else r.status
                for r in session.scalars(query)
            }
