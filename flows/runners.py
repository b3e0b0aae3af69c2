"""The task runner of the training flow, chosen by ``FLEET_TASK_RUNNER``.

- ``threads`` (default): ``FLEET_TRAIN_WORKERS`` threads in the flow run's process.
- ``dask``: a local Dask cluster of ``FLEET_TRAIN_WORKERS`` worker processes, started
  for the flow run and closed after it (prefect-dask).
- ``tcp://host:8786`` (any Dask scheduler address): an existing Dask cluster, for
  training many models on many machines.

Use: ``train_fleet_flow.with_options(task_runner=training_runner(settings))``.
"""

from __future__ import annotations

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from fleet.settings import Settings

DASK_SCHEMES = ("tcp://", "tls://", "inproc://", "ucx://")


def training_runner(settings: Settings) -> TaskRunner:
    """The task runner ``settings.task_runner`` names; ValueError for anything else."""
    choice = settings.task_runner.strip()
    if choice == "threads":
        return ThreadPoolTaskRunner(max_workers=settings.train_workers)
    if choice != "dask" and not choice.startswith(DASK_SCHEMES):
        raise ValueError(
            f"FLEET_TASK_RUNNER={choice!r}: use threads, dask or a Dask scheduler address "
            "such as tcp://127.0.0.1:8786"
        )
    from prefect_dask import DaskTaskRunner

    if choice == "dask":
        return DaskTaskRunner(
            cluster_kwargs={
                "n_workers": settings.train_workers,
                "threads_per_worker": 1,
                "host": settings.serve_host,
                "dashboard_address": None,  # no web server nobody asked for
            }
        )
    return DaskTaskRunner(address=choice)
