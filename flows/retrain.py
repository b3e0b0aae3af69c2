"""Retrain flow: one model, on the window ending at its latest labelled data.

Started by a drift monitor (through the deployment trigger on
``fleet.model.drift-detected``, or directly in temporary mode), by the replay, or by
hand (``fleet retrain``). Guarantees, whatever process starts it:

- **one at a time per model, for real**: training holds the lease ``train-<model>`` in
  the fleet's state database (``fleet.locks``), which every process reaches; a
  retraining that finds it held ends as ``skipped`` (the running one already trains on
  the newest labels);
- **at least once per firing, once only**: a run started for a firing (``firing``, the
  id the monitor claimed, ``monitoring.claims``) first accepts it: a firing already
  taken by another run is skipped, and a retraining that fails hands the cooldown back
  so the next firing retrains.

Challenger and champion are scored on the same most recent holdout by the champion
gate of ``fleet.registry`` (itself serialised per model); when the champion moves and
the model is being served here, serving moves to it without downtime
(``fleet.topology.reload_champions``, that model only).
"""

from __future__ import annotations

from datetime import date

from prefect import flow, get_run_logger

from fleet import pipeline
from fleet.catalog import get_model
from fleet.pipeline import ModelOutcome
from fleet.settings import Settings, get_settings, prepare_environment
from fleet.topology import follow_registry
from flows.train import train_model


def _skipped(spec_name: str, metric: str, message: str) -> ModelOutcome:
    return ModelOutcome(model=spec_name, status="skipped", metric=metric, message=message)


def record_outcome(settings: Settings, firing: str, model: str, outcome: ModelOutcome) -> None:
    """The drift index shows what the firing's retraining ended as."""
    from monitoring.history import MonitorHistory
    from monitoring.index import write_index
    from monitoring.job import index_path

    history = MonitorHistory(settings.state_db_url).create()
    try:
        history.record_outcome(firing, model, outcome.status, outcome.version)
        write_index(history.runs(), index_path(settings))
    finally:
        history.dispose()


@flow(name="retrain", flow_run_name="retrain-{model}")
def retrain_flow(
    model: str, until: str | None = None, reason: str = "", firing: str = ""
) -> ModelOutcome:
    """Retrain ``model`` on the window ending at ``until`` (default: the latest labels).

    ``firing``: the monitor's claimed firing this run handles (empty: a retraining by
    hand). Ends as ``skipped`` when the firing was already handled, or when another
    retraining of the model is running.
    """
    from monitoring.claims import Claims

    settings = get_settings()
    prepare_environment(settings)
    logger = get_run_logger()
    spec = get_model(model)
    metric = spec.promotion.metric
    claims = Claims(settings.state_db_url).create() if firing else None
    try:
        if claims is not None and not claims.accept(spec.name, firing):
            outcome = _skipped(spec.name, metric, f"firing {firing} was already handled")
            logger.warning(outcome.message)
            return outcome
        try:
            end = date.fromisoformat(until) if until else pipeline.default_until(settings, spec)
        except ValueError as exc:  # no labels yet: a failed retraining, said so
            outcome = pipeline.failed(spec, exc)
        else:
            logger.info(
                "retraining %s up to %s%s", spec.name, end, f" ({reason})" if reason else ""
            )
            outcome = train_model(settings, spec.name, end, wait_s=0.0)
        if outcome.status == "skipped":
            outcome.message = f"another retraining of {spec.name} is running: {outcome.message}"
        if outcome.status == "failed" and claims is not None:
            claims.fail(spec.name, firing)  # the next firing retrains
            outcome.message += "; the cooldown is handed back, the next firing retrains"
        if outcome.status in ("promoted", "challenger"):
            note = follow_registry(settings, spec.name)
            outcome.message = f"{outcome.message}; {note}" if outcome.message else note
        if firing:
            record_outcome(settings, firing, spec.name, outcome)
    finally:
        if claims is not None:
            claims.dispose()
    logger.info("%s: %s (%s)", spec.name, outcome.status, outcome.message)
    return outcome
