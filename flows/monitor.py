"""Monitor flow: one model's drift job, its report, the trigger decision and what follows.

The logic is :func:`monitoring.job.run_monitor`; this flow adds what needs Prefect: a
markdown artifact with the summary and a link to the report, the event
``fleet.model.drift-detected`` when the policy fires (a deployment trigger in
prefect.yaml turns it into a retrain flow run), and, in temporary mode (no
``PREFECT_API_URL``: no server, so no automations), the retrain flow run started here
so the loop still closes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prefect import flow, get_run_logger

from fleet.settings import Settings, get_settings, prepare_environment
from monitoring.policy import TriggerDecision
from monitoring.summary import DriftSummary

EVENT = "fleet.model.drift-detected"


@dataclass
class MonitorOutcome:
    summary: DriftSummary
    decision: TriggerDecision
    event_emitted: bool = False
    retrain: Any = None  # flows.retrain's ModelOutcome when this run retrained (temporary mode)


def resource_id(model: str) -> str:
    return f"fleet.model.{model}"


def event_payload(summary: DriftSummary, decision: TriggerDecision) -> dict[str, Any]:
    """What the event carries: the model, the metrics and the report path."""
    data = summary.payload()
    return {
        "model": summary.model,
        "reason": decision.reason,
        "window_start": data["window_start"],
        "window_end": data["window_end"],
        "drift_share": summary.drift_share,
        "drifted_columns": list(summary.drifted_columns),
        "metric": summary.metric,
        "quality": data["quality"],
        "champion_version": summary.champion_version,
        "champion_score": data["champion_score"],
        "quality_drop": decision.quality_drop,
        "rows": summary.rows_current,
        "rows_labelled": summary.rows_labelled,
        "report_path": summary.report_path,
        "firing": decision.firing or "",
    }


# who retrains a firing: the deployment trigger (prefect.yaml matches this label) or the
# process that emitted the event itself (the replay, a command without a server)
RETRAIN_LABEL = "fleet.retrain"


def emit_drift_event(
    summary: DriftSummary, decision: TriggerDecision, retrain: str = "automation"
) -> None:
    """``fleet.model.drift-detected`` on ``fleet.model.<name>``, payload from the job.

    ``retrain``: ``automation`` (the ``retrain`` deployment's trigger starts the run) or
    ``inline`` (recorded for the timeline; the emitter retrains itself).
    """
    from prefect.events import emit_event

    sent = emit_event(
        event=EVENT,
        resource={
            "prefect.resource.id": resource_id(summary.model),
            "prefect.resource.name": summary.model,
            RETRAIN_LABEL: retrain,
        },
        payload=event_payload(summary, decision),
    )
    if sent is None:
        raise RuntimeError(f"{EVENT} for {summary.model} was not emitted (no events client)")


def temporary_mode() -> bool:
    """True when no Prefect server runs automations for this run (``fleet.prefect_api``)."""
    from fleet.prefect_api import temporary

    return temporary()


def artifact_markdown(summary: DriftSummary, decision: TriggerDecision, index: str) -> str:
    link = (
        f"[open the report]({_uri(summary.report_path)})"
        if summary.report_path
        else "no report (too few rows)"
    )
    lines = "\n".join(f"- {line}" for line in summary.text().splitlines())
    return (
        f"## Drift: {summary.model}\n\n{lines}\n\n"
        f"**decision: {decision.label}**: {decision.reason}\n\n"
        f"{link} · [all reports]({_uri(index)})\n"
    )


def _uri(path: str) -> str:
    from pathlib import Path

    return Path(path).resolve().as_uri()


@flow(name="monitor", flow_run_name="monitor-{model}")
def monitor_flow(model: str, start: str | None = None, end: str | None = None) -> MonitorOutcome:
    """Drift job for ``model`` over ``[start, end)`` (ISO; default: the last 7 logged days)."""
    from prefect.artifacts import create_markdown_artifact

    from monitoring.job import index_path, parse_when, run_monitor

    settings = get_settings()
    prepare_environment(settings)
    logger = get_run_logger()
    summary, decision = run_monitor(
        settings,
        model,
        parse_when(start, "start") if start else None,
        parse_when(end, "end") if end else None,
    )
    for line in summary.text().splitlines():
        logger.info(line)
    logger.info("decision: %s (%s)", decision.label, decision.reason)
    index = str(index_path(settings))
    create_markdown_artifact(
        key=f"drift-{model.replace('_', '-')}",
        markdown=artifact_markdown(summary, decision, index),
        description=f"drift summary of {model}, {summary.window_label}",
    )
    outcome = MonitorOutcome(summary, decision)
    if decision.fire:
        inline = temporary_mode()  # no server, so no automation: the loop closes here
        try:
            emit_drift_event(summary, decision, "inline" if inline else "automation")
        except Exception:
            if not inline:  # nobody will handle the firing: the next monitor fires again
                _release(settings, model, decision.firing)
                raise
            logger.warning("the drift event was not recorded; retraining anyway")
        else:
            outcome.event_emitted = True
            logger.info("emitted %s for %s", EVENT, resource_id(model))
        if inline:
            from flows.retrain import retrain_flow

            logger.info("temporary mode: no server to run automations; retraining here")
            outcome.retrain = retrain_flow(
                model=model, reason=decision.reason, firing=decision.firing or ""
            )
            logger.info("retrain: %s (%s)", outcome.retrain.status, outcome.retrain.message)
    return outcome


def _release(settings: Settings, model: str, firing: str | None) -> None:
    from monitoring.claims import Claims

    if firing:
        claims = Claims(settings.state_db_url).create()
        try:
            claims.release(model, firing)
        finally:
            claims.dispose()
