"""One drift job end to end, as a plain function: frames -> Evidently -> policy -> history.

``flows/monitor.py`` wraps :func:`run_monitor` (and adds the event, the artifact and the
temporary-mode retrain); the replay calls it directly, one flow run per model per step
would cost about a second each.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from fleet.catalog import get_model
from fleet.predictions import as_utc
from fleet.settings import Settings
from monitoring import drift, frames, index, policy
from monitoring.claims import Claims
from monitoring.frames import MonitorError
from monitoring.history import MonitorHistory
from monitoring.policy import TriggerDecision
from monitoring.summary import DriftSummary

DEFAULT_WINDOW = timedelta(days=7)
ASSETS = "assets"  # under the reports folder: the script and font every report links


def index_path(settings: Settings) -> Path:
    return settings.reports_dir / "index.html"


def report_path(settings: Settings, model: str, start: datetime, end: datetime) -> Path:
    """``$FLEET_HOME/reports/<model>/<start>_<end>.html`` (UTC, minutes)."""
    return settings.reports_dir / model / f"{start:%Y%m%dT%H%M}_{end:%Y%m%dT%H%M}.html"


def default_window(settings: Settings, model: str) -> tuple[datetime, datetime]:
    """The last 7 days of the model's logged ``event_time`` (the newest row included)."""
    from fleet.predictions import PredictionLog, PredictionRow

    log = PredictionLog(settings.predictions_db_url)
    try:
        log.create()
        query = sa.select(sa.func.max(PredictionRow.event_time)).where(PredictionRow.model == model)
        with log.engine.connect() as conn:
            newest = conn.execute(query).scalar_one_or_none()
    finally:
        log.dispose()
    if newest is None:
        raise MonitorError(
            f"{model}: the prediction log has no rows; serve the model (`fleet serve`) "
            "or run `fleet replay` first"
        )
    end = as_utc(newest) + timedelta(microseconds=1)
    return end - DEFAULT_WINDOW, end


def run_monitor(
    settings: Settings,
    model: str,
    start: datetime | None = None,
    end: datetime | None = None,
    now: datetime | None = None,
    max_rows: int | None = drift.DEFAULT_MAX_ROWS,
) -> tuple[DriftSummary, TriggerDecision]:
    """Drift job for ``model`` over ``[start, end)`` of logged event time.

    Writes the report, applies the spec's policy at ``now`` (default: the window's end,
    so cooldowns run on the data's clock, simulated or not), claims the trigger when it
    fires, records the run and rewrites the index.
    """
    from fleet.registry import champion_info

    spec = get_model(model)
    if start is None or end is None:
        d_start, d_end = default_window(settings, model)
        start, end = start or d_start, end or d_end
    start, end = as_utc(start), as_utc(end)
    if end <= start:
        raise MonitorError(f"{model}: window end {end} is not after its start {start}")
    now = as_utc(now) if now is not None else end

    champion = champion_info(settings, model)
    if champion is None:
        raise MonitorError(f"{model}: no @champion to monitor; run `fleet train {model}` first")
    reference = frames.reference_frame(settings, spec, champion)
    current = frames.current_frame(settings, spec, start, end)
    current = frames.join_labels(settings, spec, current, start, end)
    monitored = len(drift.column_methods(spec))
    summary = DriftSummary(
        model=model,
        window_start=start,
        window_end=end,
        rows_current=len(current),
        rows_reference=len(reference.frame),
        rows_labelled=int(current[spec.target].notna().sum()),
        drift_share=0.0,
        drifted_columns=[],
        monitored_columns=monitored,
        metric=spec.promotion.metric,
        quality=None,
        champion_version=champion.version,
        champion_score=champion.score,
        reference_window=f"{reference.first}..{reference.last}",
        reference_digest_matches=reference.digest_matches,
        report_path="",
        min_rows=spec.drift.min_rows,
    )
    # below the policy's minimum the job cannot fire: skip the Evidently run, record why
    if len(current) >= spec.drift.min_rows:
        path = report_path(settings, model, start, end)
        measured = drift.measure(
            spec, reference.frame, current, path, max_rows=max_rows,
            title=f"{model}: {summary.window_label} vs champion v{champion.version}'s "
            f"training rows {summary.reference_window}",
            assets=settings.reports_dir / ASSETS,
        )  # fmt: skip
        summary.drift_share = measured.drift_share
        summary.drifted_columns = measured.drifted_columns
        summary.quality = measured.quality
        summary.report_path = str(measured.report_path)
        summary.column_scores = {c.column: round(c.score, 6) for c in measured.columns}
        summary.seconds = measured.seconds

    history = MonitorHistory(settings.state_db_url).create()
    claims = Claims(settings.state_db_url).create()
    try:
        decision = policy.decide(
            spec.drift,
            spec.promotion,
            rows=summary.rows_current,
            labelled=summary.rows_labelled,
            drift_share=summary.drift_share,
            quality=summary.quality,
            champion_score=summary.champion_score,
            last_fired=claims.last_fired(model),
            now=now,
        )
        cooldown = timedelta(days=spec.drift.cooldown_days)
        firing = claims.claim(model, now, cooldown) if decision.fire else None
        if decision.fire and firing is None:
            decision = TriggerDecision(
                False,
                f"{decision.reason}, but another firing is pending or inside the cooldown",
                decision.drift,
                decision.quality_drop,
            )
        elif firing is not None:
            decision = dataclasses.replace(decision, firing=firing)
        if summary.report_path:
            drift.stamp_decision(Path(summary.report_path), *decision_lines(summary, decision))
        history.record(summary, decision, now)
        index.write_index(history.runs(), index_path(settings))
    finally:
        history.dispose()
        claims.dispose()
    return summary, decision


def decision_lines(summary: DriftSummary, decision: TriggerDecision) -> tuple[str, list[str], bool]:
    """The report's opening: the decision, the signals with their values and thresholds,
    the drifted columns."""
    spec = get_model(summary.model)
    quality = "no labels yet" if summary.quality is None else f"{summary.quality:.4f}"
    champion = "-" if summary.champion_score is None else f"{summary.champion_score:.4f}"
    drifted = ", ".join(summary.drifted_columns) or "none"
    lines = [
        f"why: {decision.reason}",
        f"drift share {summary.drift_share:.2f} of {summary.monitored_columns} columns "
        f"(fires at {spec.drift.share_threshold:.2f}); drifted: {drifted}",
        f"{summary.metric} on {summary.rows_labelled} labelled rows: {quality} "
        f"(champion v{summary.champion_version}: {champion})",
        f"window {summary.window_label}: {summary.rows_current} rows",
    ]
    return f"{summary.model}: {decision.label}", lines, decision.fire


def parse_when(value: str, flag: str = "") -> datetime:
    """An ISO date or datetime; naive values are UTC."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{flag or 'value'} {value!r} is not an ISO date or datetime") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed
