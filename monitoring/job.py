"""One drift job end to end, as a plain function: frames -> Evidently -> shadow test ->
policy -> history.

``flows/monitor.py`` wraps :func:`run_monitor` (and adds the event, the artifact and the
temporary-mode retrain); the replay calls it directly, one flow run per model per step
would cost about a second each.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import sqlalchemy as sa

from fleet.catalog import get_model
from fleet.predictions import as_utc
from fleet.settings import Settings
from monitoring import cbpe, drift, frames, index, policy, shadow
from monitoring.claims import Claims
from monitoring.frames import MonitorError
from monitoring.history import MonitorHistory
from monitoring.policy import TriggerDecision
from monitoring.summary import DriftSummary

if TYPE_CHECKING:
    from fleet.catalog import ModelSpec
    from fleet.registry import ChampionInfo

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

    Writes the report, runs the shadow test of the model's ``@challenger`` (promoting or
    rejecting it, and moving a running fleet that serves the model to what the
    registry then says), applies the spec's policy at ``now`` (default: the window's
    end, so cooldowns run on the data's clock, simulated or not), claims the trigger
    when it fires, records the run and rewrites the index.
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
    monitored = len(drift.judged_columns(spec))
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
        champion_se=_float_tag(champion.tags.get("candidate_se")),
        excluded_columns=[c for c, j in spec.drift.features.items() if j == "exclude"],
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
        summary.quality_se = measured.quality_se
        summary.watched_drifted = [c.column for c in measured.columns
                                   if c.drifted and not c.counts]  # fmt: skip
        summary.report_path = str(measured.report_path)
        summary.column_scores = {c.column: round(c.score, 6) for c in measured.columns}
        summary.seconds = measured.seconds

    if spec.task == "classification" and len(current) and reference.holdout is not None:
        found = label_free_estimate(settings, spec, champion, reference.holdout, current)
        if found is not None:
            summary.estimated_quality, summary.estimated_se = found.value, found.se
            summary.estimate_note = found.text()

    verdict = shadow.run_shadow_gate(settings, model)
    if verdict is not None:
        summary.challenger_version = verdict.challenger
        summary.shadow_action, summary.shadow_note = verdict.action, verdict.text()
        if verdict.action != "wait":
            from fleet.topology import follow_registry

            summary.shadow_note += f"; serving: {follow_registry(settings, model)}"

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
            quality_se=summary.quality_se,
            champion_se=summary.champion_se,
            estimate=summary.estimated_quality,
            estimate_se=summary.estimated_se,
        )
        if decision.fire and summary.shadow_action == "promote":
            # the window judged the champion just replaced: the new one is judged next run
            decision = TriggerDecision(
                False,
                f"{decision.reason}, but the challenger was just promoted in its place",
                decision.drift,
                decision.quality_drop,
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


def label_free_estimate(
    settings: Settings, spec: ModelSpec, champion: ChampionInfo, holdout: Any, current: Any
) -> cbpe.PerformanceEstimate | None:
    """CBPE of the champion on the window's served probabilities, calibrated on the
    champion's own holdout."""
    from fleet import training
    from fleet.registry import load_version

    if len(holdout) == 0:
        return None
    model = load_version(settings, spec.name, champion.version)
    X_hold, y_hold = training.training_frame(spec, holdout)
    reference = training.predict(spec, model, X_hold).probability
    truth = np.asarray([str(v) for v in y_hold]) == str(spec.labels[-1])
    served = current[drift.PROBABILITY].astype(float).to_numpy()
    return cbpe.estimate(spec.promotion.metric, reference, truth, served)


def _float_tag(value: str | None) -> float | None:
    try:
        return None if value in (None, "", "none") else float(value)
    except ValueError:
        return None


def _pm(value: float | None, se: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" + (f" ± {se:.4f} (SE)" if se is not None else "")


def decision_lines(summary: DriftSummary, decision: TriggerDecision) -> tuple[str, list[str], bool]:
    """The report's opening: the decision, each signal with its value and threshold, the
    drifted, watched and excluded columns."""
    spec = get_model(summary.model)
    labelled = summary.quality is not None
    quality = _pm(summary.quality, summary.quality_se) if labelled else "no labels yet"
    drifted = ", ".join(summary.drifted_columns) or "none"
    lines = [
        f"why: {decision.reason}",
        f"drift share {summary.drift_share:.2f} of {summary.monitored_columns} judged columns "
        f"(fires at {spec.drift.share_threshold:.2f}); drifted: {drifted}",
        f"{summary.metric} on {summary.rows_labelled} labelled rows: {quality} "
        f"(champion v{summary.champion_version}: "
        f"{_pm(summary.champion_score, summary.champion_se)}); fires when the drop's lower "
        f"bound at {spec.drift.confidence:.0%} exceeds {spec.drift.quality_drop}",
    ]
    if summary.estimated_quality is not None or summary.estimate_note:
        lines.append(f"without labels: {summary.estimate_note}")
    if summary.watched_drifted:
        lines.append(f"watched (never fire alone), moved: {', '.join(summary.watched_drifted)}")
    if summary.excluded_columns:
        lines.append(f"not judged (calendar): {', '.join(summary.excluded_columns)}")
    if summary.shadow_note:
        lines.append(summary.shadow_note)
    lines.append(f"window {summary.window_label}: {summary.rows_current} rows")
    return f"{summary.model}: {decision.label}", lines, decision.fire


def parse_when(value: str, flag: str = "") -> datetime:
    """An ISO date or datetime; naive values are UTC."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{flag or 'value'} {value!r} is not an ISO date or datetime") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed
