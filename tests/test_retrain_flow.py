"""The retrain flow for real: temporary Prefect server, MLflow on SQLite, real flights.

It trains on the window ending at the newest labelled day in the lake, and a second
retraining of the same model while one holds the ``retrain-<model>`` slot is skipped.
"""

from __future__ import annotations

from datetime import date

import pandas as pd
import pytest
from prefect.concurrency.sync import concurrency

from fleet import registry
from fleet.settings import Settings
from flows.retrain import ensure_concurrency_limits, limit_name, retrain_flow
from tests.serving_fixtures import fill_lake

pytestmark = pytest.mark.integration


def _versions(settings: Settings) -> int:
    return len(registry.client(settings).search_model_versions("name = 'flight_delay'"))


def test_retrain_uses_latest_labels_and_runs_one_at_a_time(
    settings: Settings, prefect_server, flights_q1: pd.DataFrame
) -> None:
    fill_lake(settings, "flights", flights_q1, date(2013, 1, 1), date(2013, 2, 25))
    first = retrain_flow(model="flight_delay", reason="test")
    assert first.status == "promoted", first.message
    assert "not served here" in first.message
    champion = registry.champion_info(settings, "flight_delay")
    # default ``until``: the day after the newest partition, so the window ends Feb 25
    assert champion.window.days == (date(2013, 1, 1), date(2013, 2, 25))

    assert limit_name("flight_delay") in ensure_concurrency_limits(["flight_delay"])
    with concurrency(limit_name("flight_delay"), occupy=1, strict=True):
        blocked = retrain_flow(model="flight_delay")
    assert blocked.status == "skipped", blocked.message
    assert "another retraining of flight_delay is running" in blocked.message
    assert _versions(settings) == 1
