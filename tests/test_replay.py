"""The replay: its plain parts, then a short closed loop end to end on real services."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import pandas as pd
import pytest

from fleet import etl, lake, processes, routing, serving
from fleet.catalog import get_dataset, get_model, models
from fleet.predictions import PredictionLog
from fleet.replay import ReplayConfig, ReplayError, gateway_bodies
from fleet.settings import Settings
from flows.replay import step_days

MODELS = models()


def test_weeks_cover_the_range_once_and_end_short() -> None:
    cfg = ReplayConfig(start=date(2013, 3, 5), end=date(2013, 3, 20))
    weeks = cfg.weeks()
    assert weeks == [
        (date(2013, 3, 5), date(2013, 3, 12)),
        (date(2013, 3, 12), date(2013, 3, 19)),
        (date(2013, 3, 19), date(2013, 3, 21)),
    ]
    quick = ReplayConfig.quick()
    assert quick.end == date(2013, 6, 3) and quick.sample == 300
    assert len(quick.weeks()) == 14
    assert quick.topology == "mono" and ReplayConfig().topology == "micro"


def test_bad_configs_and_steps_are_refused() -> None:
    with pytest.raises(ReplayError, match="bootstrap"):
        ReplayConfig(start=date(2013, 1, 3))
    with pytest.raises(ReplayError, match="end"):
        ReplayConfig(start=date(2013, 3, 5), end=date(2013, 3, 1))
    assert step_days("week") == 7 and step_days("day") == 1 and step_days("10d") == 10
    with pytest.raises(ReplayError, match="step"):
        step_days("fortnight")


def test_gateway_bodies_carry_key_event_time_and_valid_records(flights_q1) -> None:
    flights = get_dataset("flights")
    days = lake.days(date(2013, 3, 4), date(2013, 3, 4))
    rows = etl.concat_partitions(flights, etl.build_partitions(flights, flights_q1, days))
    bodies = gateway_bodies(flights, rows.head(50), tuple(MODELS))
    assert len(bodies) == 50
    # the gateway's flight record: every feature of every flight model
    record_type = serving.input_model(*routing.input_features("flight"))
    for body, (_, row) in zip(bodies, rows.head(50).iterrows(), strict=True):
        assert body["request_id"] == str(row["flight_id"])
        assert body["models"] == ["arrival_delay", "flight_delay"]  # catalog order
        stamp = datetime.fromisoformat(body["event_time"])
        assert stamp.tzinfo is not None and stamp.date() == date(2013, 3, 4)
        record_type.model_validate(body["flight"])  # JSON types the service accepts


@pytest.mark.integration
def test_short_replay_end_to_end(
    settings: Settings, prefect_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bootstrap, one week of traffic through a mono fleet, labels, drift jobs, reports."""
    from flows.replay import replay_flow

    monkeypatch.setenv("FLEET_GATEWAY_PORT", str(processes.free_port()))
    summary = replay_flow(
        start="2013-02-26", end="2013-03-04", quick=True, topology_name="mono",
        per_week=500,
    )  # fmt: skip
    [week] = summary["weeks"]
    assert week["errors"] == 0
    assert week["sent"]["flights"] == 500 and week["sent"]["reviews"] > 50

    log = PredictionLog(settings.predictions_db_url)
    start, end = datetime(2013, 2, 26, tzinfo=UTC), datetime(2013, 3, 5, tzinfo=UTC)
    for name in MODELS:
        row = week["models"][name]
        sent = week["sent"][get_model(name).dataset.name]
        assert log.count(name, start, end) == row["rows"] == sent, name
        assert row["served_version"] == "1"
        assert 0 < row["labelled"] <= row["rows"]
        assert row["closed_loop"] is not None and row["frozen"] is not None
        # nothing was retrained before the week's traffic: served == frozen champion
        assert row["closed_loop"] == pytest.approx(row["frozen"], abs=1e-4), name
        # the scheduled arm starts from the same champion: same rows, same score
        assert row["scheduled"] == pytest.approx(row["frozen"], abs=1e-4), name
        assert row["scheduled_retrain"] in ("promoted", "kept"), name
        assert row["decision"]
    frame = log.read("flight_delay", start, end)
    assert frame["request_id"].is_unique and set(frame["version"]) == {"1"}
    log.dispose()

    data = json.loads((settings.reports_dir / "replay.json").read_text())
    headline = data["headline_model"]
    assert data["closed_loop"]["mean_metric"] == week["models"][headline]["closed_loop"]
    assert set(data) >= {"closed_loop", "frozen", "promotions", "weeks", "arms"}
    assert set(data["arms"]) == {"closed_loop", "scheduled", "frozen"}
    for name in MODELS:
        scheduled = data["arms"]["scheduled"][name]
        assert set(scheduled) == {"mean_metric", "retrains", "promotions", "train_seconds"}
        assert scheduled["retrains"] == 1 and scheduled["train_seconds"] > 0
        assert data["arms"]["frozen"][name]["retrains"] == 0
        closed = data["arms"]["closed_loop"][name]
        assert closed["mean_metric"] == data["models"][name]["closed_loop"]
        assert closed["retrains"] == data["models"][name]["retrainings"]
    page = (settings.reports_dir / "replay.html").read_text()
    assert "data:image/png;base64," in page and "2013-02-26" in page
    assert "scheduled: retrains / promotions / fitting" in page
    assert (settings.reports_dir / "index.html").is_file()
    assert processes.read_pid_files(settings) == []  # the replay stopped what it started


def test_served_and_frozen_agree_on_the_same_model(flights_q1) -> None:
    """The served metric (from logged answers) equals scoring the model in-process."""
    from fleet import training
    from fleet.replay import served_and_frozen

    spec = get_model("flight_delay")
    days = lake.days(date(2013, 1, 7), date(2013, 1, 20))
    rows = etl.concat_partitions(spec.dataset, etl.build_partitions(spec.dataset, flights_q1, days))
    rows = rows[rows[spec.target].notna()].reset_index(drop=True)
    X, y = training.training_frame(spec, rows)
    model = training.fit(spec, X, y)
    answers = pd.DataFrame(serving.predict(spec, model, X)).add_prefix("prediction_")
    labelled = pd.concat([rows[[*spec.features, spec.target]], answers], axis=1)
    served, frozen = served_and_frozen(spec, labelled, model)
    assert served is not None and served == pytest.approx(frozen, abs=1e-9)


def test_state_root_is_reset_only_when_a_replay_made_it(settings: Settings) -> None:
    from fleet.replay import MARKER, prepare_state_root

    (settings.lake_dir / "flights").mkdir(parents=True)
    with pytest.raises(ReplayError, match="no replay made"):
        prepare_state_root(settings)
    (settings.root / MARKER).write_text("")
    assert "lake" in prepare_state_root(settings)
    assert not settings.lake_dir.exists()
    assert prepare_state_root(settings) == []  # nothing left to reset
