"""Replay flow: 2013 streamed through the served fleet, the closed loop acting on drift.

The loop itself is ``fleet.replay``; this flow gives it Prefect-run steps (ETL in the
flow run, bootstrap training as concurrent tasks, each retraining as a ``retrain`` flow
run), serves the fleet for the replay's traffic, emits the drift events the monitors
decide, and writes ``replay.json`` / ``replay.html`` plus an artifact linking them.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from fleet import progress, topology
from fleet.replay import Replay, ReplayConfig, ReplayError
from fleet.settings import get_settings, prepare_environment
from flows.etl import etl_flow
from flows.monitor import emit_drift_event
from flows.retrain import retrain_flow
from flows.train import train_model
from monitoring import frames
from monitoring.job import run_monitor

STEPS = {"day": 1, "week": 7}


def read_log(settings: Any, spec: Any, start: Any, end: Any) -> tuple[Any, Any]:
    """A model's logged rows of ``[start, end)`` and the same joined with their labels."""
    logged = frames.current_frame(settings, spec, start, end)
    return logged, frames.join_labels(settings, spec, logged, start, end)


def step_days(step: str) -> int:
    """``week``, ``day`` or a number of days such as ``10d``."""
    if step in STEPS:
        return STEPS[step]
    if step.endswith("d") and step[:-1].isdigit() and int(step[:-1]) > 0:
        return int(step[:-1])
    raise ReplayError(f"step {step!r}: use week, day or a number of days such as 10d")


@flow(name="replay", task_runner=ThreadPoolTaskRunner(max_workers=2))
def replay_flow(
    start: str | None = None,
    end: str | None = None,
    step: str = "week",
    quick: bool = False,
    topology_name: str | None = None,
    per_week: int | None = None,
) -> dict[str, Any]:
    """Bootstrap before ``start``, then one step at a time up to ``end`` (ISO dates).

    ``quick``: March to May, at most 300 rows a week per dataset, served mono.
    ``per_week``: rows sent per step and dataset (default: all; quick: 300).
    ``topology_name``: micro or mono (default: micro, mono with ``quick``).
    """
    from fleet.replay_report import write_reports

    settings = get_settings()
    prepare_environment(settings)
    logger = get_run_logger()
    overrides: dict[str, Any] = {"step_days": step_days(step)}
    if topology_name:
        overrides["topology"] = topology_name
    if start:
        overrides["start"] = date.fromisoformat(start)
    if end:
        overrides["end"] = date.fromisoformat(end)
    if per_week is not None:
        overrides["sample"] = per_week
    config = ReplayConfig.quick(**overrides) if quick else ReplayConfig(**overrides)

    def train_all(until: date) -> list[Any]:
        futures = [train_model.submit(settings, name, until) for name in config.models]
        return [f.result() for f in futures]

    def retrain(model: str, until: date, reason: str, firing: str) -> Any:
        return retrain_flow(model=model, until=until.isoformat(), reason=reason, firing=firing)

    def on_fire(summary: Any, decision: Any) -> None:
        # the replay retrains in-line (it waits for the result): the event is for the
        # record, and labelled so that the `retrain` deployment's trigger leaves it alone
        try:
            emit_drift_event(summary, decision, retrain="inline")
        except RuntimeError as exc:
            logger.warning("%s", exc)

    def log(line: str) -> None:
        logger.info(line)
        progress.note(line)

    replay = Replay(
        settings=settings,
        config=config,
        etl=lambda first, last: etl_flow.fn(start=first, end=last),
        train_all=train_all,
        retrain=retrain,
        read_log=read_log,
        monitor=lambda s, model, start, end, now: run_monitor(s, model, start, end, now=now),
        log=log,
        on_fire=on_fire,
    )
    replay.bootstrap()
    log(f"serving the fleet ({config.topology}) for the replay's traffic")
    components, started_here = topology.start_fleet(settings, config.topology, list(config.models))
    gateway = next(c for c in components if c.name == topology.GATEWAY)
    try:
        weeks = list(config.weeks())
        for done, (first, after) in enumerate(weeks, start=1):
            week = replay.step(gateway.url, first, after)
            logger.info(week_line(week))
            progress.step(done, len(weeks), week_line(week))
    finally:
        if started_here:
            topology.stop_fleet(settings)
    summary = replay.summary()
    paths = write_reports(settings, summary)
    _artifact(summary, paths)
    return summary


def week_line(week: Any) -> str:
    parts = []
    for name, m in week.models.items():
        score = "-" if m.closed_loop is None else f"{m.closed_loop:.3f}"
        frozen = "-" if m.frozen is None else f"{m.frozen:.3f}"
        act = f" retrain:{m.retrain}" if m.retrain else ""
        act += f" challenger:{m.shadow}" if m.shadow else ""
        parts.append(f"{name} v{m.served_version} {m.metric} {score} (frozen {frozen}){act}")
    sent = sum(week.sent.values())
    return f"{week.start}: {sent} requests, {week.errors} errors, {week.seconds}s | " + "; ".join(
        parts
    )


def _artifact(summary: dict[str, Any], paths: dict[str, str]) -> None:
    from pathlib import Path

    from prefect.artifacts import create_markdown_artifact

    closed, frozen = summary["closed_loop"], summary["frozen"]
    lines = [
        "## Replay",
        f"- {summary['headline_model']} mean {closed['metric']}: closed loop "
        f"{closed['mean_metric']}, frozen {frozen['mean_metric']}",
        f"- promotions: {len(summary['promotions'])}, weeks: {len(summary['weeks'])}",
        f"- [replay report]({Path(paths['html']).resolve().as_uri()})",
    ]
    create_markdown_artifact(key="replay", markdown="\n".join(lines), description="replay")
