"""What a long command shows a person: one line per step and a progress bar, while
Prefect's per-task logs go to a file.

Flows report progress on the ``fleet.progress`` logger (:func:`step`); a deployment's
run shows those lines in Prefect's UI like any other log, and the ``fleet`` CLI draws
them (:func:`console_progress`). :func:`quiet_prefect` moves Prefect's console output
to ``$FLEET_HOME/logs/flows.log`` (warnings and errors stay on the terminal).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fleet.settings import Settings

LOGGER = "fleet.progress"
_logger = logging.getLogger(LOGGER)
_logger.propagate = False  # shown once, by the CLI's handler, not by Prefect's console too
_logger.setLevel(logging.INFO)
FORMAT = "%(asctime)s %(levelname)-7s %(name)s - %(message)s"


def step(done: int, total: int, line: str) -> None:
    """Step ``done`` of ``total`` finished; ``line`` says what it did."""
    _logger.info(line, extra={"fleet_step": done, "fleet_steps": total})


def note(line: str) -> None:
    """A line worth a person's attention that is not a step."""
    _logger.info(line)


def flows_log(settings: Settings) -> Path:
    return settings.root / "logs" / "flows.log"


def _not_run_logs(record: logging.LogRecord) -> bool:
    """Flow and task run lines (errors with tracebacks included) and Prefect's own
    warnings (its log and event workers draining at exit, e.g.) belong in the file: the
    command says what failed in a line of its own."""
    if record.name.startswith(("prefect.flow_runs", "prefect.task_runs")):
        return False
    from_prefect = f"{os.sep}prefect{os.sep}" in record.pathname
    return not (from_prefect and record.levelno < logging.ERROR)


@contextlib.contextmanager
def quiet_prefect(settings: Settings) -> Iterator[Path]:
    """Prefect's INFO lines (flow and task runs) to ``flows.log``, not the terminal."""
    import prefect.logging.configuration  # noqa: F401 (Prefect sets its handlers on import)

    path = flows_log(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    to_file = logging.FileHandler(path, encoding="utf-8")
    to_file.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    consoles = [h for h in root.handlers if type(h).__name__ == "PrefectConsoleHandler"]
    levels = [h.level for h in consoles]
    for handler in consoles:
        handler.setLevel(logging.WARNING)
        handler.addFilter(_not_run_logs)
    # MLflow prints its INFO lines (database set-up, registrations) on a handler of its own
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # for an import still to come
    mlflow_logger = logging.getLogger("mlflow")
    mlflow_level = mlflow_logger.level
    mlflow_logger.setLevel(logging.WARNING)
    root.addHandler(to_file)
    _logger.addHandler(to_file)
    try:
        yield path
    finally:
        for handler, level in zip(consoles, levels, strict=True):
            handler.setLevel(level)
            handler.removeFilter(_not_run_logs)
        mlflow_logger.setLevel(mlflow_level)
        root.removeHandler(to_file)
        _logger.removeHandler(to_file)
        to_file.close()


class _ConsoleProgress(logging.Handler):
    def __init__(self, progress: Any) -> None:
        super().__init__(logging.INFO)
        self.progress = progress
        self.task = progress.add_task("", total=None)

    def emit(self, record: logging.LogRecord) -> None:
        self.progress.console.print(record.getMessage(), soft_wrap=True, highlight=False)
        total = getattr(record, "fleet_steps", None)
        if total is not None:
            self.progress.update(self.task, completed=record.fleet_step, total=total)


@contextlib.contextmanager
def console_progress(console: Any, label: str) -> Iterator[None]:
    """Draw ``fleet.progress`` as lines above a bar on ``console`` while the block runs."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    columns = (f"[bold]{label}[/]", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        handler = _ConsoleProgress(progress)
        _logger.addHandler(handler)
        try:
            yield
        finally:
            _logger.removeHandler(handler)
