"""The validation gate: a GX checkpoint per batch, quarantine for batches that fail.

The committed GX project (``Settings.expectations_dir``: ``great_expectations.yml``) is
only read. The run-time context is built from that file with ``FLEET_GX_DIR`` set to
``Settings.gx_dir``, so validation results and Data Docs land under ``$FLEET_HOME/gx``
and a run never writes into the repository. Each dataset's suite is derived from its
catalog spec (``fleet.suites``) into an in-memory store; the datasource, validation
definitions and checkpoints are in-memory run-time objects too.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from fleet import catalog, suites, validation_page
from fleet.catalog import Dataset
from fleet.settings import TELEMETRY_OFF, Settings

GX_CONFIG = "great_expectations.yml"
DATASOURCE = "fleet"
_IN_MEMORY = {"class_name": "InMemoryStoreBackend"}
_RESULT_FORMAT = {"result_format": "SUMMARY", "partial_unexpected_count": 5}
_MAX_FAILURES_SHOWN = 12

# GX objects are not thread-safe; one validation at a time per process.
_LOCK = threading.RLock()
_CONTEXTS: dict[tuple[Any, ...], Any] = {}
_MAX_CONTEXTS = 4


@dataclass
class ValidationOutcome:
    dataset: str
    batch: str
    success: bool
    # human-readable: expectation type, column, observed value / unexpected share
    failures: list[str]
    result_path: Path  # validation result JSON under $FLEET_HOME/gx/
    data_docs: Path | None  # Data Docs index.html
    page: Path | None = None  # this batch's own page (fleet.validation_page), opens offline


class ValidationFailed(RuntimeError):
    """A batch failed its suite and was quarantined; the message says what to do next."""

    def __init__(self, outcome: ValidationOutcome, quarantine_path: Path | None) -> None:
        self.outcome = outcome
        self.quarantine_path = quarantine_path
        super().__init__(self._message())

    def _message(self) -> str:
        o = self.outcome
        lines = [f"{o.dataset} batch {o.batch!r} failed validation ({len(o.failures)} failed):"]
        lines += [f"  - {f}" for f in o.failures[:_MAX_FAILURES_SHOWN]]
        if len(o.failures) > _MAX_FAILURES_SHOWN:
            lines.append(f"  ... and {len(o.failures) - _MAX_FAILURES_SHOWN} more")
        lines.append(f"Report: {o.page or 'not written'}")
        lines.append(f"Data Docs: {o.data_docs or 'not built'}")
        lines.append(f"Validation result: {o.result_path}")
        if self.quarantine_path is not None:
            lines.append(f"Quarantined in: {self.quarantine_path}")
        lines.append(
            "Next: fix the source or the transform and re-run ETL for that range; if the "
            f"data is right and the expectation is wrong, tune catalog/datasets/{o.dataset}.yaml "
            "(the suite is derived from it). Nothing downstream used this batch."
        )
        return "\n".join(lines)


def _project_config(settings: Settings) -> dict[str, Any]:
    import yaml

    path = settings.expectations_dir / GX_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"no Great Expectations project at {path}")
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    stores = config["stores"]
    # Read-only at run time: suites come from the committed files, the rest is per run.
    for name in ("expectations_store", "checkpoint_store", "validation_definition_store"):
        stores[name]["store_backend"] = dict(_IN_MEMORY)
    config["fluent_datasources"] = {}
    return config


def _build_context(settings: Settings) -> Any:
    for key, value in TELEMETRY_OFF.items():
        os.environ.setdefault(key, value)
    import great_expectations as gx
    from great_expectations.data_context.types.base import DataContextConfig

    settings.gx_dir.mkdir(parents=True, exist_ok=True)
    context = gx.get_context(
        mode="ephemeral",
        project_config=DataContextConfig(**_project_config(settings)),
        runtime_environment={"FLEET_GX_DIR": str(settings.gx_dir)},
    )
    source = context.data_sources.add_pandas(DATASOURCE)
    for dataset in catalog.datasets().values():
        suite = context.suites.add(suites.build_suite(dataset))
        batch_def = source.add_dataframe_asset(dataset.name).add_batch_definition_whole_dataframe(
            "batch"
        )
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=dataset.name, data=batch_def, suite=suite)
        )
        context.checkpoints.add(
            gx.Checkpoint(
                name=dataset.name,
                validation_definitions=[definition],
                actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs")],
                result_format=_RESULT_FORMAT,
            )
        )
    return context


def _context(settings: Settings) -> Any:
    """The run-time context for these settings, built once per process and reused."""
    key = (
        settings.expectations_dir.resolve(),
        settings.gx_dir.resolve(),
        id(catalog.current()),  # another (or reloaded) catalog means other suites
    )
    context = _CONTEXTS.get(key)
    if context is None:
        context = _build_context(settings)
        if len(_CONTEXTS) >= _MAX_CONTEXTS:
            _CONTEXTS.pop(next(iter(_CONTEXTS)))
        _CONTEXTS[key] = context
    return context


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", name).strip("_") or "batch"


def _exception_message(info: Any) -> str | None:
    if not info:
        return None
    if "raised_exception" in info:  # one exception
        return info.get("exception_message") if info.get("raised_exception") else None
    for value in info.values():  # keyed by metric
        if isinstance(value, dict) and value.get("raised_exception"):
            return value.get("exception_message")
    return None


def _pct(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f}%"


def describe_failure(type_: str, kwargs: dict[str, Any], result: dict[str, Any]) -> str:
    """One readable line for one failed expectation."""
    column = kwargs.get("column")
    where = f"{type_} on column {column!r}" if column else type_
    observed = result.get("observed_value")
    details = result.get("details") or {}
    if type_ == "expect_column_to_exist":
        return f"{where}: column {column!r} is missing"
    if type_ == "expect_table_columns_to_match_set":
        mismatch = details.get("mismatched") or {}
        return (
            f"{where}: missing {mismatch.get('missing', [])}, "
            f"unexpected {mismatch.get('unexpected', [])}"
        )
    if type_ == "expect_table_row_count_to_be_between":
        return f"{where}: {observed} rows, expected at least {kwargs.get('min_value')}"
    if type_ == "expect_column_values_to_be_in_type_list" and observed is not None:
        return f"{where}: dtype {observed}, expected one of {kwargs.get('type_list')}"
    if "unexpected_percent" in result and result.get("unexpected_percent") is not None:
        mostly = kwargs.get("mostly", 1.0)
        examples = result.get("partial_unexpected_list") or []
        limits = ""
        if "min_value" in kwargs or "max_value" in kwargs:
            limits = f" outside [{kwargs.get('min_value')}, {kwargs.get('max_value')}]"
        elif "value_set" in kwargs:
            limits = " not in the allowed set"
        elif "type_list" in kwargs:
            limits = f" not of a type in {kwargs['type_list']}"
        return (
            f"{where}: {_pct(result.get('unexpected_percent'))} of rows{limits} "
            f"(allowed {_pct((1 - mostly) * 100)}), e.g. {examples[:5]}"
        )
    bounds = ""
    if "min_value" in kwargs or "max_value" in kwargs:
        bounds = f", expected between {kwargs.get('min_value')} and {kwargs.get('max_value')}"
    if isinstance(observed, float):
        observed = round(observed, 2)
    return f"{where}: observed {observed}{bounds}"


def _failures(result: Any, frame_columns: Sequence[str]) -> list[str]:
    missing = set()
    lines: list[str] = []
    for r in result.results:
        if r.success:
            continue
        cfg = r.expectation_config
        kwargs = dict(cfg.kwargs)
        column = kwargs.get("column")
        if column is not None and column not in frame_columns:
            # one line per missing column, not one per expectation that could not run
            if column not in missing:
                missing.add(column)
                lines.append(f"expect_column_to_exist on column {column!r}: column is missing")
            continue
        error = _exception_message(r.exception_info)
        if error:
            where = f"{cfg.type} on column {column!r}" if column else cfg.type
            lines.append(f"{where}: could not be evaluated ({error})")
            continue
        lines.append(describe_failure(cfg.type, kwargs, dict(r.result or {})))
    return lines


def _result_path(context: Any, key: Any, settings: Settings, suite: str) -> Path:
    backend = context.validation_results_store.store_backend
    try:
        # GX's filesystem layout of the results store (suite/run/time/batch.json)
        rel = backend._convert_key_to_filepath(key.to_tuple())
        path = Path(backend.full_base_directory) / rel
        if path.is_file():
            return path
    except (AttributeError, TypeError):
        pass
    found = sorted(
        (settings.gx_dir / "validations" / suite).rglob("*.json"),
        key=lambda p: p.stat().st_mtime,
    )
    if not found:
        raise FileNotFoundError(f"GX wrote no validation result under {settings.gx_dir}")
    return found[-1]


def validate_batch(
    settings: Settings, dataset: Dataset, frame: pd.DataFrame, batch: str
) -> ValidationOutcome:
    """Run the dataset's GX checkpoint on ``frame``; results and Data Docs under gx_dir."""
    from great_expectations.core.run_identifier import RunIdentifier

    with _LOCK:
        context = _context(settings)
        checkpoint = context.checkpoints.get(dataset.name)
        run_id = RunIdentifier(run_name=_safe(batch), run_time=datetime.now(UTC))
        result = checkpoint.run(
            batch_parameters={"dataframe": frame},
            expectation_parameters=suites.suite_parameters(dataset, frame),
            run_id=run_id,
        )
        key, suite_result = next(iter(result.run_results.items()))
        result_path = _result_path(context, key, settings, suites.suite_name(dataset))
    page = validation_page.write_page(result_path, dataset.name, batch)
    docs = settings.data_docs_index
    return ValidationOutcome(
        dataset=dataset.name,
        batch=batch,
        success=bool(result.success),
        failures=[] if result.success else _failures(suite_result, list(frame.columns)),
        result_path=result_path,
        data_docs=docs if docs.is_file() else None,
        page=page,
    )


def _write_frame(frame: pd.DataFrame, target: Path) -> Path:
    try:
        path = target / "batch.parquet"
        frame.to_parquet(path, index=False)
        return path
    except (ValueError, TypeError, ImportError, ArithmeticError) as exc:
        # a badly broken batch (mixed types in a column) may not fit Parquet: keep it anyway
        (target / "batch.parquet").unlink(missing_ok=True)
        path = target / "batch.csv"
        frame.to_csv(path, index=False)
        (target / "parquet-error.txt").write_text(f"{exc}\n", encoding="utf-8")
        return path


def _move_sources(source_paths: Sequence[Path], target: Path) -> list[tuple[Path, Path]]:
    moved = []
    for src in source_paths:
        src = Path(src)
        if not src.exists():
            continue
        # files keep their partition folder (date=.../part.parquet) so names cannot clash
        dest = target / "source" / (src.name if src.is_dir() else f"{src.parent.name}/{src.name}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(src), str(dest))
        moved.append((src, dest))
    return moved


def quarantine_batch(
    settings: Settings,
    outcome: ValidationOutcome,
    frame: pd.DataFrame,
    source_paths: Sequence[Path] = (),
) -> Path:
    """Keep a failed batch out of the lake: data, result and README in one new folder.

    ``source_paths`` (e.g. the batch's lake partitions) are moved in, so nothing
    downstream can read them. Returns ``$FLEET_HOME/quarantine/<dataset>/<batch>-<ts>/``.
    """
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    target = settings.quarantine_dir / outcome.dataset / f"{_safe(outcome.batch)}-{stamp}"
    target.mkdir(parents=True, exist_ok=False)
    data_path = _write_frame(frame, target)
    result_copy = target / "validation_result.json"
    if outcome.result_path.is_file():
        shutil.copy2(outcome.result_path, result_copy)
    if outcome.page is not None and outcome.page.is_file():
        shutil.copy2(outcome.page, target / "report.html")
    moved = _move_sources(source_paths, target)
    summary = {
        "dataset": outcome.dataset,
        "batch": outcome.batch,
        "quarantined_at": stamp,
        "rows": len(frame),
        "failures": outcome.failures,
        "validation_result": str(outcome.result_path),
        "data_docs": str(outcome.data_docs) if outcome.data_docs else None,
        "moved": {str(src): str(dest) for src, dest in moved},
    }
    (target / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    lines = [
        f"# Quarantined {outcome.dataset} batch `{outcome.batch}`",
        "",
        f"{len(frame)} rows failed validation at {stamp}; no training saw them.",
        "",
        "## Failed expectations",
        *[f"- {f}" for f in outcome.failures],
        "",
        "## Files",
        f"- data: `{data_path.name}`",
        f"- validation result: `{result_copy.name}` (original: {outcome.result_path})",
        "- report (opens offline): `report.html`",
        f"- Data Docs: {outcome.data_docs or 'not built'}",
        *[f"- moved here: {src} -> `{dest.relative_to(target)}`" for src, dest in moved],
        "",
        "## Next",
        "Fix the source or the transform and re-run the ETL for this range (the moved",
        "partitions are missing from the lake, so an incremental run rebuilds them). If the",
        "data is right and an expectation is wrong, tune",
        f"`catalog/datasets/{outcome.dataset}.yaml` (the suite is derived from it).",
        "",
    ]
    (target / "README.md").write_text("\n".join(lines), encoding="utf-8")
    return target


_ISO_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?$")


def _all_iso_datetimes(column: pd.Series) -> bool:
    values = column.dropna()
    if column.dtype != object or values.empty:
        return False
    return bool(values.map(lambda v: isinstance(v, str) and bool(_ISO_DATETIME.match(v))).all())


class BatchFileError(ValueError):
    """An incoming file that cannot be read as a batch: the message says why and what to do."""


DELIMITERS = {";": "semicolons", "\t": "tabs", "|": "pipes"}


def _delimiter_hint(path: Path, frame: pd.DataFrame) -> None:
    """One column whose name holds another delimiter: the file is not comma-separated."""
    if len(frame.columns) != 1:
        return
    header = str(frame.columns[0])
    for mark, name in DELIMITERS.items():
        if mark in header:
            raise BatchFileError(
                f"{path}: read as one column {header[:60]!r}; the file looks separated by "
                f"{name}: save it comma-separated (or as Parquet) and try again"
            )


def load_batch_file(path: Path) -> pd.DataFrame:
    """An incoming batch from Parquet or CSV. CSV has no types: ISO timestamps are parsed,
    everything else is left as pandas reads it (so numbers sent as text stay text).

    A file that cannot be read (a folder, empty, corrupt, another delimiter) raises
    ``BatchFileError`` naming it; a missing one ``FileNotFoundError``.
    """
    import pyarrow as pa

    path = Path(path)
    if path.is_dir():
        raise BatchFileError(f"{path} is a folder: give one Parquet (.parquet) or CSV (.csv) file")
    if not path.is_file():
        raise FileNotFoundError(f"no such batch file: {path}")
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".pq", ".csv"):
        raise BatchFileError(
            f"cannot read {path.name}: unsupported file type {suffix or '(none)'!r}; "
            "give a Parquet (.parquet) or CSV (.csv) file"
        )
    if path.stat().st_size == 0:
        raise BatchFileError(f"{path} is empty (0 bytes): nothing to validate")
    try:
        if suffix != ".csv":
            return pd.read_parquet(path)
        frame = pd.read_csv(path)
    except (pa.ArrowException, OSError, ValueError, pd.errors.ParserError) as exc:
        kind = "CSV" if suffix == ".csv" else "Parquet"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BatchFileError(f"{path} is not a readable {kind} file: {first}") from exc
    _delimiter_hint(path, frame)
    for name in frame.columns:
        if _all_iso_datetimes(frame[name]):
            frame[name] = pd.to_datetime(frame[name], errors="coerce")
    return frame
