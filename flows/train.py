"""Training flow: ETL -> GX gate -> train -> evaluate -> register -> promote, per model.

Models train independently and concurrently (threads: scikit-learn and MLflow release
the GIL for the heavy parts); one model failing leaves the others' results intact.
"""

from __future__ import annotations

from datetime import date

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from fleet import pipeline, training
from fleet.catalog import get_model, model_names
from fleet.pipeline import ModelOutcome
from fleet.settings import Settings, get_settings, prepare_environment
from flows.etl import etl_flow


@task(cache_policy=NO_CACHE, task_run_name="train-{model}")
def train_model(
    settings: Settings, model: str, until: date, wait_s: float = pipeline.TRAIN_WAIT_S
) -> ModelOutcome:
    """Gate the window, then train, register and run the champion gate for one model
    (``fleet.pipeline.train_one``: one training of a model at a time, anywhere)."""
    return pipeline.train_one(settings, get_model(model), until, wait_s, get_run_logger().info)


@flow(name="train", task_runner=ThreadPoolTaskRunner(max_workers=2))
def train_fleet_flow(
    models: list[str] | None = None, until: date | None = None
) -> list[ModelOutcome]:
    """Train the named models (default: the whole catalog) on windows ending at ``until``.

    ``until`` defaults to the day after the newest partition in the lake.
    """
    settings = get_settings()
    prepare_environment(settings)
    specs = [get_model(name) for name in (models or model_names())]

    # one incremental ETL run per dataset covering every window that needs it
    ends = {s.name: until or pipeline.default_until(settings, s) for s in specs}
    spans: dict[str, tuple[date, date]] = {}
    for spec in specs:
        first, last = training.training_window(spec, ends[spec.name]).days
        lo, hi = spans.get(spec.dataset.name, (first, last))
        spans[spec.dataset.name] = (min(lo, first), max(hi, last))
    for dataset, (first, last) in spans.items():
        # the ETL's tasks run inside this flow run rather than as a subflow: each Prefect
        # 3.9 flow run costs ~1 s on exit (it joins a heartbeat thread sleeping in 1 s
        # steps), more than the incremental ETL itself usually takes
        etl_flow.fn(start=first, end=last, datasets=[dataset])

    futures = [train_model.submit(settings, s.name, ends[s.name]) for s in specs]
    outcomes = [f.result() for f in futures]
    failed = [o.model for o in outcomes if o.status == "failed"]
    get_run_logger().info(
        "trained %d model(s): %s",
        len(outcomes),
        ", ".join(f"{o.model} {o.status}" for o in outcomes),
    )
    if failed:
        get_run_logger().error("failed: %s", ", ".join(failed))
    return outcomes
