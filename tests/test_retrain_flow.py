"""The retrain flow for real: temporary Prefect server, MLflow on SQLite, real flights.

It trains on the window ending at the newest labelled day in the lake, and a second
retraining of the same model while another process holds its training lease is skipped.
"""

from __future__ import annotations

from datetime import date

import pandas as pd
import pytest

from fleet import locks, registry
from fleet.settings import Settings
from flows.retrain import retrain_flow
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

    with locks.hold(settings.state_db_url, "train-flight_delay", note="another retraining"):
        blocked = retrain_flow(model="flight_delay")
    assert blocked.status == "skipped", blocked.message
    assert "another retraining of flight_delay is running" in blocked.message
    assert _versions(settings) == 1
