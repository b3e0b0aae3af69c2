"""Retrain flow: one model, on the window ending at its latest labelled data.

Started by a drift monitor (through the deployment trigger on
``fleet.model.drift-detected``, or directly in temporary mode), by the replay, or by
hand. At most one retraining per model runs at a time: the flow holds the Prefect
global concurrency limit ``retrain-<model>`` (limit 1, created explicitly, because
``concurrency()`` silently skips a limit that does not exist unless ``strict``). A
retraining that finds the slot taken does not queue behind it: the running one already
trains on the newest labels, so the second ends as ``skipped``. (Two that start at the
same instant both see a free slot; the limit then runs them one after the other.)

Challenger and champion are scored on the same most recent holdout by the champion
gate of ``fleet.registry``; when the champion moves and the fleet is being served, the
serving side moves to it without downtime (``fleet.topology.reload_champions``).
"""

from __future__ import annotations

from datetime import date

from prefect import flow, get_run_logger
from prefect.concurrency.sync import concurrency

from fleet import pipeline
from fleet.catalog import get_model, model_names
from fleet.pipeline import ModelOutcome
from fleet.settings import Settings, get_settings, prepare_environment
from flows.train import train_model


def limit_name(model: str) -> str:
    return f"retrain-{model}"


def ensure_concurrency_limits(models: list[str] | None = None) -> list[str]:
    """Create (or reset to 1) the per-model retraining limits on the Prefect API."""
    from prefect.client.orchestration import get_client

    names = [limit_name(get_model(m).name) for m in (models or model_names())]
    with get_client(sync_client=True) as client:
        for name in names:
            client.upsert_global_concurrency_limit_by_name(name, limit=1)
    return names


def retraining_running(model: str) -> bool:
    """Whether the model's retraining slot is taken right now."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(limit_name(model))
    return limit.active_slots >= limit.limit


def reload_serving(settings: Settings, model: str) -> str:
    """Move a running fleet to the new champion; a note on what happened."""
    from fleet import processes, topology

    try:
        served = topology.served_models(settings)
    except processes.ProcessError:  # no fleet is running here
        served = []
    if model not in served:
        return "not served here"
    try:
        swaps = topology.reload_champions(settings)
    except processes.ProcessError as exc:
        return f"serving kept the previous version: {exc}"
    moved = [s for s in swaps if s.model == model]
    return f"serving moved to {moved[0].new_tag}" if moved else "serving already current"


@flow(name="retrain", flow_run_name="retrain-{model}")
def retrain_flow(
    model: str, until: str | None = None, reason: str = "", wait_s: float = 600.0
) -> ModelOutcome:
    """Retrain ``model`` on the window ending at ``until`` (default: the latest labels).

    Ends as ``skipped`` when another retraining of the model is running, or when the
    slot is still taken after ``wait_s`` seconds.
    """
    settings = get_settings()
    prepare_environment(settings)
    logger = get_run_logger()
    spec = get_model(model)
    end = date.fromisoformat(until) if until else pipeline.default_until(settings, spec)
    logger.info("retraining %s up to %s%s", spec.name, end, f" ({reason})" if reason else "")
    ensure_concurrency_limits([spec.name])
    skipped = ModelOutcome(
        model=spec.name,
        status="skipped",
        metric=spec.promotion.metric,
        message=f"another retraining of {spec.name} is running; this one is skipped",
    )
    if retraining_running(spec.name):
        logger.warning(skipped.message)
        return skipped
    try:
        with concurrency(limit_name(spec.name), occupy=1, timeout_seconds=wait_s, strict=True):
            outcome = train_model(settings, spec.name, end)
            if outcome.status == "promoted":
                note = reload_serving(settings, spec.name)
                outcome.message = f"{outcome.message}; {note}" if outcome.message else note
    except TimeoutError:
        logger.warning(skipped.message)
        return skipped
    logger.info("%s: %s (%s)", spec.name, outcome.status, outcome.message)
    return outcome
