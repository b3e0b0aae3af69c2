"""One model's lifecycle step, composed once from the plain functions: window -> lake ->
GX gate -> train -> register -> champion gate (:func:`train_one`).

``flows/train.py`` (and through it the retrain flow and the replay) wraps it; the
pipeline benchmark calls the same steps directly to measure what the orchestration
itself costs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import pandas as pd

from fleet import lake, training
from fleet.catalog import ModelSpec
from fleet.settings import Settings


@dataclass
class ModelOutcome:
    """What training one model ended in: one row of ``fleet train``'s table."""

    model: str
    status: str  # promoted | challenger (kept, shadowing the champion) | kept | failed | skipped
    metric: str
    version: str | None = None
    candidate_score: float | None = None
    champion_before: str | None = None
    champion_after: str | None = None
    message: str = ""
    timings: dict[str, float] = field(default_factory=dict)


def default_until(settings: Settings, spec: ModelSpec) -> date:
    """The day after the newest partition of the model's dataset in the lake."""
    present = lake.existing_days(settings.lake_dir, spec.dataset.name)
    if not present:
        raise ValueError(
            f"{spec.name}: the lake has no {spec.dataset.name} partitions; "
            "run `fleet etl` or pass --until"
        )
    return max(present) + timedelta(days=1)


def read_window(
    settings: Settings, spec: ModelSpec, window: training.Window
) -> tuple[pd.DataFrame, list[Path]]:
    """The window's rows and the exact partition files they came from."""
    partitions = training.window_partitions(settings.lake_dir, spec, window)
    first, last = window.days
    expected = len(lake.days(first, last))
    if len(partitions) < expected:
        raise ValueError(
            f"{spec.name}: {len(partitions)} of {expected} {spec.dataset.name} partitions "
            f"present for {first}..{last}; run `fleet etl --start {first} --end {last}`"
        )
    return lake.read_partitions(partitions), partitions


def gate(
    settings: Settings, spec: ModelSpec, window: training.Window, partitions: list[Path]
) -> int:
    """Validate the window's partitions that have not passed the gate as they are now.

    Partitions loaded by the ETL passed as part of their batch; one rewritten since
    (or never validated) is checked on its own, so a bad week cannot hide inside a
    long window. Failing partitions leave the lake for quarantine with the result;
    ``fleet etl`` rebuilds them from the source. Returns how many were validated.
    """
    from fleet.validation import ValidationFailed, quarantine_batch, validate_batch

    name = spec.dataset.name
    pending = lake.unvalidated(settings.lake_dir, name, partitions)
    if not pending:
        return 0
    frame = lake.read_partitions(pending)
    first, last = window.days
    outcome = validate_batch(settings, spec.dataset, frame, f"train-{spec.name}-{first}_{last}")
    if not outcome.success:
        where = quarantine_batch(settings, outcome, frame, source_paths=pending)
        raise ValidationFailed(outcome, where)
    lake.mark_validated(settings.lake_dir, name, pending)
    return len(pending)


def outcome_of(result: object) -> ModelOutcome:
    """Summarise a ``registry.TrainResult`` for the table and the flow's return value."""
    decision = result.decision
    return ModelOutcome(
        model=decision.model_name,
        status="promoted" if decision.promoted else "challenger" if decision.challenger else "kept",
        metric=decision.metric,
        version=str(decision.version),
        candidate_score=decision.candidate_score,
        champion_before=_str(decision.champion_before),
        champion_after=_str(decision.champion_after),
        message=decision.reason,
        timings=dict(result.timings),
    )


def failed(spec: ModelSpec, error: BaseException) -> ModelOutcome:
    return ModelOutcome(
        model=spec.name, status="failed", metric=spec.promotion.metric, message=str(error)
    )


def _str(value: int | None) -> str | None:
    return None if value is None else str(value)


# how long a scheduled or manual training waits for another training of the same model
TRAIN_WAIT_S = 3600.0


def train_one(
    settings: Settings,
    spec: ModelSpec,
    until: date,
    wait_s: float = TRAIN_WAIT_S,
    log: Callable[[str], None] = print,
) -> ModelOutcome:
    """Gate the window, then train, register and run the champion gate for one model.

    Holds the model's training lease (``fleet.locks``): trainings of one model run one at
    a time whichever process starts them. ``skipped`` when the lease stays taken for
    ``wait_s`` seconds (0: do not wait); ``failed`` (with the reason) when a step fails,
    so that one model's failure is its row in a table, not the end of a run.
    """
    from fleet import locks, registry

    window = training.training_window(spec, until)
    try:
        with locks.hold(
            settings.state_db_url, f"train-{spec.name}", timeout_s=wait_s,
            note=f"training {spec.name} up to {until}",
        ):  # fmt: skip
            frame, partitions = read_window(settings, spec, window)
            checked = gate(settings, spec, window, partitions)
            log(
                f"{spec.name}: window {window} passed the gate "
                f"({checked} of {len(partitions)} partitions needed validation)"
            )
            result = outcome_of(registry.train_and_promote(settings, spec, until, frame=frame))
    except locks.LeaseBusy as exc:
        log(f"{spec.name}: skipped, {exc}")
        return ModelOutcome(spec.name, "skipped", spec.promotion.metric, message=str(exc))
    except Exception as exc:
        log(f"{spec.name} failed: {exc}")
        return failed(spec, exc)
    log(
        f"{spec.name}: version {result.version} {result.status} "
        f"({result.metric} {result.candidate_score:.4f})"
    )
    return result
