"""ETL flow: read -> GX gate -> load daily partitions. Thin shell over fleet.etl.

Idempotent and incremental: only days without a partition are built (all with
``force``); a run's new partitions form one validation batch per dataset, and a batch
that fails is quarantined and never reaches the lake.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from fleet import etl, lake
from fleet.catalog import get_dataset
from fleet.settings import Settings, get_settings, prepare_environment

# Frames are passed in memory; hashing them for Prefect's cache keys would cost more
# than the work itself, and an ETL step must re-run anyway.


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE, task_run_name="read-{name}")
def read(name: str, days: list[date]) -> dict[date, pd.DataFrame]:
    """The dataset's reader (its spec's ``reader``), cut into daily partitions."""
    dataset = get_dataset(name)
    partitions = etl.read_days(dataset, days)
    rows = sum(len(f) for f in partitions.values())
    empty = sum(1 for f in partitions.values() if f.empty)
    get_run_logger().info(
        "read %s with %s: %d day(s), %s rows, %d day(s) without rows",
        name, dataset.reader.name, len(partitions), f"{rows:,}", empty,
    )  # fmt: skip
    return partitions


@task(cache_policy=NO_CACHE, task_run_name="validate-{batch}")
def validate(settings: Settings, name: str, frame: pd.DataFrame, batch: str) -> None:
    """The GX gate: a failing batch is quarantined with its result and the run fails."""
    # imported here: great_expectations takes seconds to import
    from fleet.validation import ValidationFailed, quarantine_batch, validate_batch

    logger = get_run_logger()
    outcome = validate_batch(settings, get_dataset(name), frame, batch)
    if outcome.success:
        logger.info("batch %s passed validation (%s rows)", batch, f"{len(frame):,}")
        return
    # no source paths: quarantine_batch *moves* them, and the raw files live inside the
    # installed packages; the batch was never loaded, so the lake has nothing to move
    quarantine = quarantine_batch(settings, outcome, frame)
    logger.error("batch %s failed validation; quarantined at %s", batch, quarantine)
    raise ValidationFailed(outcome, quarantine)


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE, task_run_name="load-{name}")
def load(lake_dir: Path, name: str, partitions: dict[date, pd.DataFrame]) -> list[Path]:
    # writes are atomic per file and a rewrite is identical, so a retry is safe
    paths = lake.load_partitions(lake_dir, name, partitions)
    get_run_logger().info("loaded %d partition(s) of %s under %s", len(paths), name, lake_dir)
    return paths


@flow(name="etl", log_prints=False)
def etl_flow(
    start: date | None = None,
    end: date | None = None,
    datasets: list[str] | None = None,
    force: bool = False,
) -> etl.EtlReport:
    """Build the daily partitions of [start, end] for the datasets (default: every day
    each dataset's spec covers, first_day..last_day)."""
    settings = get_settings()
    prepare_environment(settings)
    logger = get_run_logger()
    specs = etl.resolve_datasets(datasets)
    for spec in specs:
        etl.check_range(spec, *etl.coverage(spec, start, end))
    report = etl.EtlReport(start=start, end=end)

    failures: list[Exception] = []
    for spec in specs:
        first, last = etl.coverage(spec, start, end)
        todo, present = etl.plan_days(settings.lake_dir, spec.name, first, last, force)
        done = etl.DatasetLoad(dataset=spec.name, skipped=present)
        report.loads[spec.name] = done
        if not todo:
            logger.info(
                "%s: all %d partition(s) present, nothing to build", spec.name, len(present)
            )
            continue
        logger.info(
            "%s: building %d day(s), %d already present%s",
            spec.name,
            len(todo),
            len(present),
            " (forced)" if force else "",
        )
        # datasets are independent: a failing one must not block the others' partitions
        try:
            partitions = read(spec.name, todo)
            batch = etl.batch_name(spec.name, todo)
            validate(settings, spec.name, etl.concat_partitions(spec, partitions), batch)
            done.paths = load(settings.lake_dir, spec.name, partitions)
        except Exception as exc:
            logger.error("%s failed: %s", spec.name, exc)
            failures.append(exc)
            continue
        done.built = sorted(partitions)
        done.rows = sum(len(f) for f in partitions.values())
        done.batch = batch

    logger.info("%s", report.summary())
    if failures:
        raise failures[0]  # e.g. ValidationFailed: names failures, Data Docs, quarantine
    return report
