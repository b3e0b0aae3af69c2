"""The training flow for real: Prefect server, GX gate, MLflow on SQLite, real data.

One model is trained, then bad upstream loads land in the lake: each is blocked by the
gate, the bad partitions are quarantined, no version is registered and the champion
stays. The next run rebuilds the quarantined days from the source and trains again.
"""

from __future__ import annotations

from datetime import date

import pandas as pd
import pytest
from typer.testing import CliRunner

from fleet import lake, registry
from fleet.cli import app
from fleet.settings import Settings
from flows.etl import etl_flow
from flows.train import train_fleet_flow
from tests.faults import FLIGHT_FAULTS

pytestmark = pytest.mark.integration

UNTIL = date(2013, 2, 26)  # flight_delay's window is then Jan 1 .. Feb 25 (cut at the first day)
HOLDOUT = lake.days(date(2013, 2, 19), date(2013, 2, 25))
FLOW_NAMES = ("renamed-column", "numbers-as-strings", "celsius", "unknown-categories")
FLOW_FAULTS = [f for f in FLIGHT_FAULTS if f.name in FLOW_NAMES]


def _versions(settings: Settings) -> int:
    return len(registry.client(settings).search_model_versions("name = 'flight_delay'"))


def _corrupt_holdout(settings: Settings, corrupt) -> None:
    """A bad upstream load: the holdout week's partitions rewritten with a fault."""
    # the ETL first rebuilds whatever an earlier fault sent to quarantine
    etl_flow(start=date(2013, 1, 1), end=HOLDOUT[-1], datasets=["flights"])
    for day in HOLDOUT:
        path = lake.partition_path(settings.lake_dir, "flights", day)
        lake.write_partition(settings.lake_dir, "flights", day, corrupt(pd.read_parquet(path)))


def test_train_gate_quarantine_and_retrain(settings: Settings, prefect_server) -> None:
    [first] = train_fleet_flow(models=["flight_delay"], until=UNTIL)
    assert first.status == "promoted", first.message
    assert first.champion_after == first.version == "1"
    assert registry.champion_info(settings, "flight_delay").version == 1

    for fault in FLOW_FAULTS:
        _corrupt_holdout(settings, fault.corrupt)
        [blocked] = train_fleet_flow(models=["flight_delay"], until=UNTIL)
        assert blocked.status == "failed", fault.name
        assert fault.expectation in blocked.message, blocked.message
        assert str(settings.quarantine_dir / "flights") in blocked.message
        # the bad week left the lake with the result; nothing new was registered
        assert lake.partitions_in(settings.lake_dir, "flights", HOLDOUT[0], HOLDOUT[-1]) == []
        assert _versions(settings) == 1
        assert registry.champion_info(settings, "flight_delay").version == 1

    quarantined = sorted((settings.quarantine_dir / "flights").iterdir())
    assert len(quarantined) == len(FLOW_FAULTS)
    for batch in quarantined:
        assert (batch / "validation_result.json").is_file()
        assert len(list((batch / "source").glob("date=*/part.parquet"))) == len(HOLDOUT)

    # the ETL rebuilds what was quarantined from the source, so training goes on
    [again] = train_fleet_flow(models=["flight_delay"], until=UNTIL)
    # the rebuilt days are the source's own rows again: the same data gives the same model,
    # which does not beat itself by the margin
    assert again.status == "kept", again.message
    assert again.version == "2" and "against champion v1's" in again.message
    assert "does not clear the margin" in again.message

    result = CliRunner().invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    assert "flight_delay" in result.output
    rows = {row.model: row for row in registry.fleet_table(settings)}
    assert rows["flight_delay"].champion_version == 1
    assert rows["flight_delay"].versions == 2
    assert not rows["arrival_delay"].registered  # trained only flight_delay
