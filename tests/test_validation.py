"""The GX gate on real ETL output: clean batches pass, each realistic fault is blocked.

Every fault test validates the clean batch too, so a suite that rejects everything (or
nothing) fails the test. The batch is one winter week of real flights, the hard case
for the °C/°F fault (°C winter values sit inside the °F physical range).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fleet import etl, lake, sources, suites
from fleet.catalog import Dataset, datasets, get_dataset
from fleet.settings import REPO_ROOT, Settings
from fleet.validation import (
    ValidationFailed,
    ValidationOutcome,
    load_batch_file,
    quarantine_batch,
    validate_batch,
)

DATASETS = datasets()
FLIGHTS = get_dataset("flights")
REVIEWS = get_dataset("reviews")

WEEK = [date(2013, 1, d) for d in range(7, 14)]


@pytest.fixture(scope="module")
def clean_flights() -> pd.DataFrame:
    raw = sources.load_flights()
    days = pd.to_datetime(raw[["year", "month", "day"]]).dt.date
    return sources.transform_flights(raw[days.isin(WEEK)], sources.load_weather())


@pytest.fixture(scope="module")
def clean_reviews() -> pd.DataFrame:
    table = sources.transform_reviews(sources.load_reviews())
    return table.sort_values("received_at").head(300).reset_index(drop=True)


def _repo_expectations_state() -> dict[str, float]:
    root = REPO_ROOT / "expectations"
    return {str(p.relative_to(root)): p.stat().st_mtime for p in root.rglob("*") if p.is_file()}


def _lake_partitions(settings: Settings, dataset: Dataset, frame: pd.DataFrame) -> list[Path]:
    parts = etl.build_partitions(dataset, frame, WEEK) if len(frame) else {}
    return [lake.write_partition(settings.lake_dir, dataset.name, d, f) for d, f in parts.items()]


def _assert_blocked(
    settings: Settings,
    clean: pd.DataFrame,
    corrupt: pd.DataFrame,
    expectation: str,
    column: str | None,
    dataset: Dataset = FLIGHTS,
) -> ValidationOutcome:
    """Clean passes; corrupt fails naming ``expectation`` on ``column``; quarantine works."""
    ok = validate_batch(settings, dataset, clean, "clean")
    assert ok.success, ok.failures
    assert ok.failures == []

    bad = validate_batch(settings, dataset, corrupt, "corrupt")
    assert not bad.success
    named = [f for f in bad.failures if expectation in f and (column is None or repr(column) in f)]
    assert named, f"no failure names {expectation} on {column}: {bad.failures}"
    assert bad.result_path.is_file()
    assert bad.result_path.is_relative_to(settings.gx_dir)
    assert bad.data_docs == settings.data_docs_index and bad.data_docs.is_file()

    # the batch's lake partitions move into quarantine with the data and the result
    sources_written = _lake_partitions(settings, dataset, clean)
    qdir = quarantine_batch(settings, bad, corrupt, source_paths=sources_written)
    assert qdir.is_relative_to(settings.quarantine_dir / dataset.name)
    assert (qdir / "validation_result.json").read_bytes() == bad.result_path.read_bytes()
    kept = qdir / "batch.parquet" if (qdir / "batch.parquet").exists() else qdir / "batch.csv"
    assert len(pd.read_parquet(kept) if kept.suffix == ".parquet" else pd.read_csv(kept)) == len(
        corrupt
    )
    assert expectation in (qdir / "README.md").read_text()
    for path in sources_written:
        assert not path.exists()
        assert (qdir / "source" / path.parent.name / path.name).is_file()
    assert lake.existing_days(settings.lake_dir, dataset.name) == set()

    message = str(ValidationFailed(bad, qdir))
    assert expectation in message and str(qdir) in message
    assert str(settings.data_docs_index) in message
    return bad


def test_committed_suites_equal_generated() -> None:
    """Catalog and committed suites cannot drift: regenerate with expectations/generate.py."""
    for dataset in DATASETS.values():
        committed = suites.load_suite_dict(REPO_ROOT / "expectations", dataset)
        assert committed == suites.suite_dict(dataset), (
            f"expectations/expectations/{dataset.name}.json is stale: run "
            "`python expectations/generate.py`"
        )


def test_suite_is_derived_from_catalog() -> None:
    suite = suites.suite_dict(FLIGHTS)
    by = {}
    for exp in suite["expectations"]:
        by.setdefault((exp["type"], exp["kwargs"].get("column")), []).append(exp["kwargs"])
    for col in FLIGHTS.columns:
        assert ("expect_column_to_exist", col.name) in by
    # null_share 0.35 in the catalog
    assert by[("expect_column_values_to_not_be_null", "pressure")][0]["mostly"] == 0.65
    assert by[("expect_column_values_to_be_in_set", "dest")][0]["mostly"] == 0.98
    assert by[("expect_column_values_to_be_between", "distance")][0]["min_value"] == 1
    assert by[("expect_column_values_to_be_in_set", "late")][0]["value_set"] == [0, 1]
    assert ("expect_column_values_to_be_unique", "flight_id") in by
    row_count = by[("expect_table_row_count_to_be_between", None)][0]
    assert row_count["min_value"] == FLIGHTS.min_rows
    lengths = suites.suite_dict(REVIEWS)["expectations"]
    assert any(e["type"] == "expect_column_value_lengths_to_be_between" for e in lengths)


def test_mean_bounds_follow_the_batch_months(clean_flights: pd.DataFrame) -> None:
    params = suites.suite_parameters(FLIGHTS, clean_flights)
    temp = FLIGHTS.column("temp")
    january = temp.monthly_mean[0]
    assert params == {
        "temp_mean_min": january - temp.mean_tolerance[0],
        "temp_mean_max": january + temp.mean_tolerance[1],
    }
    # no usable timestamps: the whole year's span, never stricter
    wide = suites.suite_parameters(FLIGHTS, clean_flights.drop(columns="scheduled_departure"))
    assert wide["temp_mean_min"] < params["temp_mean_min"]
    assert wide["temp_mean_max"] > params["temp_mean_max"]


def test_clean_batches_pass_and_outputs_stay_out_of_the_repo(
    settings: Settings, clean_flights: pd.DataFrame, clean_reviews: pd.DataFrame
) -> None:
    before = _repo_expectations_state()
    for dataset, frame in ((FLIGHTS, clean_flights), (REVIEWS, clean_reviews)):
        outcome = validate_batch(settings, dataset, frame, f"clean-{dataset.name}")
        assert outcome.success, outcome.failures
        assert outcome.result_path.is_relative_to(settings.gx_dir / "validations")
        assert outcome.data_docs == settings.data_docs_index
    assert settings.data_docs_index.is_file()
    assert _repo_expectations_state() == before


def test_missing_column_is_blocked(settings: Settings, clean_flights: pd.DataFrame) -> None:
    _assert_blocked(
        settings,
        clean_flights,
        clean_flights.drop(columns="distance"),
        "expect_column_to_exist",
        "distance",
    )


def test_renamed_column_is_blocked(settings: Settings, clean_flights: pd.DataFrame) -> None:
    bad = _assert_blocked(
        settings,
        clean_flights,
        clean_flights.rename(columns={"temp": "temperature"}),
        "expect_table_columns_to_match_set",
        None,
    )
    assert any("'temperature'" in f and "'temp'" in f for f in bad.failures)


def test_numeric_column_as_strings_is_blocked(
    settings: Settings, clean_flights: pd.DataFrame
) -> None:
    _assert_blocked(
        settings,
        clean_flights,
        clean_flights.assign(distance=clean_flights["distance"].astype(str)),
        "expect_column_values_to_be_in_type_list",
        "distance",
    )


def test_nulls_beyond_allowed_share_are_blocked(
    settings: Settings, clean_flights: pd.DataFrame
) -> None:
    corrupt = clean_flights.copy()
    # a weather feed outage for a fifth of the week; the catalog tolerates 5 %
    corrupt.loc[: len(corrupt) // 5, "temp"] = np.nan
    _assert_blocked(settings, clean_flights, corrupt, "expect_column_values_to_not_be_null", "temp")


def test_celsius_temperatures_are_blocked(settings: Settings, clean_flights: pd.DataFrame) -> None:
    def to_celsius(s: pd.Series) -> pd.Series:
        return (s - 32) * 5 / 9

    corrupt = clean_flights.assign(
        temp=to_celsius(clean_flights["temp"]), dewp=to_celsius(clean_flights["dewp"])
    )
    bad = _assert_blocked(
        settings, clean_flights, corrupt, "expect_column_mean_to_be_between", "temp"
    )
    # why the mean check exists: in winter every °C value is inside the °F physical range
    assert not any("expect_column_values_to_be_between" in f for f in bad.failures)


def test_negative_distances_are_blocked(settings: Settings, clean_flights: pd.DataFrame) -> None:
    corrupt = clean_flights.copy()
    corrupt.loc[corrupt.index[::20], "distance"] *= -1  # a sign bug on 5 % of rows
    _assert_blocked(
        settings, clean_flights, corrupt, "expect_column_values_to_be_between", "distance"
    )


def test_unknown_categories_beyond_share_are_blocked(
    settings: Settings, clean_flights: pd.DataFrame
) -> None:
    carrier = FLIGHTS.column("carrier")

    def with_unknown(share: float) -> pd.DataFrame:
        out = clean_flights.copy()
        n = int(len(out) * share)
        out.loc[out.index[:n], "carrier"] = "ZZ"
        return out

    # within the catalog's tolerance: a new carrier on a few flights is fine
    within = validate_batch(settings, FLIGHTS, with_unknown(carrier.unknown_share / 2), "new")
    assert within.success, within.failures
    _assert_blocked(
        settings,
        clean_flights,
        with_unknown(carrier.unknown_share * 10),
        "expect_column_values_to_be_in_set",
        "carrier",
    )


def test_empty_batch_is_blocked(settings: Settings, clean_flights: pd.DataFrame) -> None:
    bad = _assert_blocked(
        settings,
        clean_flights,
        clean_flights.iloc[0:0],
        "expect_table_row_count_to_be_between",
        None,
    )
    assert any("0 rows" in f for f in bad.failures)


def test_empty_review_text_is_blocked(settings: Settings, clean_reviews: pd.DataFrame) -> None:
    corrupt = clean_reviews.copy()
    corrupt.loc[corrupt.index[:30], "review"] = ""
    _assert_blocked(
        settings,
        clean_reviews,
        corrupt,
        "expect_column_value_lengths_to_be_between",
        "review",
        dataset=REVIEWS,
    )


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_incoming_files_round_trip(
    settings: Settings, clean_flights: pd.DataFrame, tmp_path: Path, suffix: str
) -> None:
    path = tmp_path / f"incoming{suffix}"
    writers: dict[str, Callable[[Path], None]] = {
        ".parquet": lambda p: clean_flights.to_parquet(p, index=False),
        ".csv": lambda p: clean_flights.to_csv(p, index=False),
    }
    writers[suffix](path)
    frame = load_batch_file(path)
    assert list(frame.columns) == FLIGHTS.column_names
    assert validate_batch(settings, FLIGHTS, frame, path.name).success
    broken = frame.assign(distance=frame["distance"].astype(str) + " mi")
    assert not validate_batch(settings, FLIGHTS, broken, path.name).success


def test_unsupported_or_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    other = tmp_path / "batch.xlsx"
    other.write_bytes(b"not a spreadsheet")
    with pytest.raises(ValueError, match=r"Parquet .*CSV"):
        load_batch_file(other)
    with pytest.raises(FileNotFoundError, match="no such batch file"):
        load_batch_file(tmp_path / "absent.parquet")
