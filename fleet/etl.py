"""ETL logic: a dataset's reader -> catalog-shaped rows -> daily partitions. No orchestration.

Each dataset names a reader in its spec (``fleet.readers``); whatever it returns is
conformed here to exactly the catalog's columns and dtypes, then cut into one partition
per day of the dataset's timestamp. Decisions worth knowing:

- A day with no rows still gets a partition (an empty file with the full schema), so
  "no file" always means "not built yet" and incremental runs stay idempotent.
- Rows are sorted by timestamp then key, so a rebuild writes identical files.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from fleet import lake
from fleet.catalog import Dataset, datasets, get_dataset

_KIND_DTYPES = {
    "id": "string",
    "categorical": "string",
    "text": "string",
    "numeric": "float64",
    "datetime": "datetime64[ns]",
}


def catalog_dtypes(dataset: Dataset) -> dict[str, str]:
    """The pandas dtype of each column, derived from the catalog kinds.

    Integer columns that may be null (``late``) use the nullable ``Int64``.
    """
    dtypes = {}
    for col in dataset.columns:
        if col.kind == "integer":
            dtypes[col.name] = "Int64" if col.null_share > 0 else "int64"
        else:
            dtypes[col.name] = _KIND_DTYPES[col.kind]
    return dtypes


def conform(frame: pd.DataFrame, dataset: Dataset) -> pd.DataFrame:
    """Exactly the catalog's columns, in its order, with its dtypes."""
    missing = [c for c in dataset.column_names if c not in frame.columns]
    if missing:
        raise KeyError(
            f"{dataset.name}: the reader gave no column(s) {missing} "
            f"(it gave {list(frame.columns)})"
        )
    return frame[dataset.column_names].astype(catalog_dtypes(dataset)).reset_index(drop=True)


def null_out_of_range(frame: pd.DataFrame, columns: Iterable[str], dataset: Dataset) -> None:
    """Set values outside each column's catalog range to null, in place.

    For physically impossible sensor readings (a 1,048 mph wind): such a value is a
    broken reading, not data, so it becomes null (the models impute) rather than an
    extreme the models would learn from or the gate would reject the whole batch for.
    """
    for name in columns:
        col = dataset.column(name)
        values = pd.to_numeric(frame[name], errors="coerce")
        bad = pd.Series(False, index=frame.index)
        if col.minimum is not None:
            bad |= values < col.minimum
        if col.maximum is not None:
            bad |= values > col.maximum
        frame.loc[bad, name] = np.nan


def coverage(dataset: Dataset, start: date | None, end: date | None) -> tuple[date, date]:
    """[start, end] filled from the dataset's first_day/last_day; a clear error otherwise."""
    start = start or dataset.first_day
    end = end or dataset.last_day
    if start is None or end is None:
        raise ValueError(
            f"{dataset.name}: its spec sets no first_day/last_day, so give --start and --end"
        )
    return start, end


def check_range(dataset: Dataset, start: date, end: date) -> None:
    """Refuse a range the dataset's source cannot have (outside first_day..last_day)."""
    if end < start:
        raise ValueError(f"end {end} is before start {start}")
    first, last = dataset.first_day, dataset.last_day
    if (last is not None and start > last) or (first is not None and end < first):
        raise ValueError(
            f"no {dataset.name} data in {start}..{end}: the source covers "
            f"{first or '(open)'}..{last or '(open)'}"
        )


def plan_days(
    lake_dir: Path, dataset: str, start: date, end: date, force: bool = False
) -> tuple[list[date], list[date]]:
    """(days to build, days skipped because their partition exists) for the range."""
    wanted = lake.days(start, end)
    if force:
        return wanted, []
    present = lake.existing_days(lake_dir, dataset)
    return [d for d in wanted if d not in present], [d for d in wanted if d in present]


def build_partitions(
    dataset: Dataset, table: pd.DataFrame, days: Iterable[date]
) -> dict[date, pd.DataFrame]:
    """Daily frames of ``table`` for the given days, by the day of ``dataset.timestamp``.

    Rows are sorted by timestamp then key, so a rebuild writes identical files. A day
    without rows gets an empty frame with the full schema (see module docstring).
    """
    wanted = sorted(set(days))
    if not wanted:
        return {}
    day = table[dataset.timestamp].dt.normalize()
    keep = day.isin(pd.to_datetime(wanted))
    sub = table.loc[keep].assign(_day=day[keep].dt.date)
    sub = sub.sort_values([dataset.timestamp, dataset.key], kind="stable")
    groups = {
        d: g.drop(columns="_day").reset_index(drop=True) for d, g in sub.groupby("_day", sort=True)
    }
    empty = table.iloc[0:0].reset_index(drop=True)
    return {d: groups.get(d, empty) for d in wanted}


def read_rows(dataset: Dataset, first: date, last: date) -> pd.DataFrame:
    """The dataset's rows of days ``first..last`` from its reader, conformed to the catalog."""
    from fleet import readers

    rows = readers.read(dataset, first, last)
    table = conform(rows, dataset)
    dup = table[dataset.key].duplicated(keep=False)
    if dup.any():
        examples = table.loc[dup, dataset.key].unique()[:5].tolist()
        raise ValueError(
            f"{dataset.name}: key {dataset.key!r} not unique for {int(dup.sum())} rows, "
            f"e.g. {examples}"
        )
    return table


def read_days(dataset: Dataset, days: Iterable[date]) -> dict[date, pd.DataFrame]:
    """The daily partitions of the given days, read through the dataset's reader."""
    days = sorted(set(days))
    if not days:
        return {}
    return build_partitions(dataset, read_rows(dataset, days[0], days[-1]), days)


def batch_name(dataset: str, days: Iterable[date]) -> str:
    """Name of the validation batch formed by one run's new partitions."""
    ds = sorted(days)
    return f"etl-{dataset}-{ds[0].isoformat()}_{ds[-1].isoformat()}"


def concat_partitions(dataset: Dataset, partitions: Mapping[date, pd.DataFrame]) -> pd.DataFrame:
    """All partitions as one frame (the validation batch), schema kept when empty."""
    frames = [partitions[d] for d in sorted(partitions)]
    if not frames:
        return conform(pd.DataFrame(columns=dataset.column_names), dataset)
    return pd.concat(frames, ignore_index=True)


def window_start(dataset: Dataset, start: date) -> date:
    """``start``, cut to the dataset's first day: a window never reaches before the data."""
    return max(start, dataset.first_day) if dataset.first_day else start


@dataclass
class DatasetLoad:
    """What one ETL run did for one dataset."""

    dataset: str
    built: list[date] = field(default_factory=list)
    skipped: list[date] = field(default_factory=list)  # partitions already present
    rows: int = 0
    paths: list[Path] = field(default_factory=list)
    batch: str | None = None


@dataclass
class EtlReport:
    """Per-dataset outcome of an ETL run."""

    start: date | None
    end: date | None
    loads: dict[str, DatasetLoad] = field(default_factory=dict)

    @property
    def rows_written(self) -> int:
        return sum(load.rows for load in self.loads.values())

    def summary(self) -> str:
        """One line: per dataset, days built / already present and rows written."""
        parts = [
            f"{name}: {len(load.built)} day(s) built, {len(load.skipped)} already present, "
            f"{load.rows:,} rows written"
            for name, load in self.loads.items()
        ]
        span = f" {self.start}..{self.end}" if self.start and self.end else ""
        return f"ETL{span}: " + "; ".join(parts)


def resolve_datasets(names: Iterable[str] | None) -> list[Dataset]:
    """Catalog datasets by name (all when ``names`` is None), unknown names rejected."""
    if names is None:
        return list(datasets().values())
    return [get_dataset(n) for n in names]


def days_between(first: date, after: date) -> list[date]:
    """The days of the half-open range ``[first, after)``."""
    return lake.days(first, after - timedelta(days=1))
