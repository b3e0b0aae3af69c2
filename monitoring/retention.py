"""Retention: the prediction log, the gateway's results and the drift reports, pruned.

Nothing is pruned unless asked: ``fleet prune --older-than 30d`` (or
``FLEET_RETENTION_DAYS`` as its default). Age is when a row was written (``logged_at``,
``received_at``, a drift job's ``ran_at``), not the event time a caller sent: retention
is about storage, and replayed 2013 traffic written today is today's. A monitor's
report file goes with its row; the report index is rewritten.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from fleet.predictions import PredictionLog, PredictionRow, utcnow
from fleet.results import ResultRow, ResultStore
from fleet.settings import Settings

_AGE = re.compile(r"^(?P<n>\d+)(?P<unit>[dhw])$")
_UNITS = {"d": "days", "h": "hours", "w": "weeks"}


def parse_age(text: str) -> timedelta:
    """``30d``, ``12h`` or ``4w``; ValueError naming the format otherwise."""
    match = _AGE.match(text.strip())
    if not match or int(match["n"]) == 0:
        raise ValueError(f"{text!r} is not an age: give a number and d, h or w, e.g. 30d")
    return timedelta(**{_UNITS[match["unit"]]: int(match["n"])})


@dataclass(frozen=True)
class Pruned:
    cutoff: datetime
    predictions: int
    results: int
    monitor_runs: int
    reports: int
    dry_run: bool

    def summary(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        return (
            f"older than {self.cutoff:%Y-%m-%d %H:%M} UTC: {verb} {self.predictions:,} logged "
            f"predictions, {self.results:,} gateway results, {self.monitor_runs:,} drift job "
            f"records and {self.reports:,} report files"
        )


def _delete(engine: sa.Engine, table: type, column: sa.Column, cutoff: datetime, dry: bool) -> int:
    where = column < cutoff
    with engine.begin() as conn:
        if dry:
            return int(conn.execute(sa.select(sa.func.count()).select_from(table).where(where))
                       .scalar_one())  # fmt: skip
        return conn.execute(sa.delete(table).where(where)).rowcount


def prune(settings: Settings, older_than: timedelta, dry_run: bool = False) -> Pruned:
    """Delete what was written more than ``older_than`` ago (count it with ``dry_run``)."""
    from monitoring.history import MonitorHistory, MonitorRunRow
    from monitoring.index import write_index
    from monitoring.job import index_path

    cutoff = utcnow() - older_than
    log = PredictionLog(settings.predictions_db_url).create()
    store = ResultStore(settings.results_db_url).create()
    history = MonitorHistory(settings.state_db_url).create()
    try:
        predictions = _delete(log.engine, PredictionRow, PredictionRow.logged_at, cutoff, dry_run)
        results = _delete(store.engine, ResultRow, ResultRow.received_at, cutoff, dry_run)
        paths = sa.select(MonitorRunRow.report_path)
        with history.engine.connect() as conn:
            old = set(conn.execute(paths.where(MonitorRunRow.ran_at < cutoff)).scalars())
            # a report a newer job rewrote (same window) stays
            new = set(conn.execute(paths.where(MonitorRunRow.ran_at >= cutoff)).scalars())
        runs = _delete(history.engine, MonitorRunRow, MonitorRunRow.ran_at, cutoff, dry_run)
        files = [Path(p) for p in sorted(old - new) if p and Path(p).is_file()]
        if not dry_run:
            for path in files:
                path.unlink(missing_ok=True)
            write_index(history.runs(), index_path(settings))
    finally:
        log.dispose()
        store.dispose()
        history.dispose()
    return Pruned(cutoff, predictions, results, runs, len(files), dry_run)
