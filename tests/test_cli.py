"""The `fleet` CLI as a user meets it: exit codes, messages, where outputs went."""

from __future__ import annotations

import subprocess
from datetime import date
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from fleet.cli import app
from fleet.settings import REPO_ROOT, Settings
from tests.faults import FLIGHT_FAULTS, Fault

runner = CliRunner()
WEEK = [date(2013, 2, d) for d in range(4, 11)]


@pytest.fixture(scope="module")
def week_of_flights(flights_q1: pd.DataFrame) -> pd.DataFrame:
    day = flights_q1["scheduled_departure"].dt.date
    return flights_q1[day.isin(WEEK)].reset_index(drop=True)


def test_help_is_fast_and_lists_the_commands() -> None:
    fleet = REPO_ROOT / ".venv" / "bin" / "fleet"
    done = subprocess.run([fleet, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for command in ("etl", "validate", "train", "models", "rollback", "bench"):
        assert command in done.stdout


def test_clean_file_passes(settings: Settings, tmp_path: Path, week_of_flights) -> None:
    path = tmp_path / "incoming.parquet"
    week_of_flights.to_parquet(path)
    result = runner.invoke(app, ["validate", "flights", "--file", str(path)])
    assert result.exit_code == 0, result.output
    assert "passed" in result.output
    assert not settings.quarantine_dir.exists()


# a CSV carries no types, so "numbers as strings" only exists in typed files
CASES = [(f, ".parquet") for f in FLIGHT_FAULTS] + [
    (f, ".csv") for f in FLIGHT_FAULTS if f.name in ("celsius", "unknown-categories")
]


@pytest.mark.parametrize(
    ("fault", "suffix"), CASES, ids=[f"{f.name}{suffix}" for f, suffix in CASES]
)
def test_each_fault_is_rejected_and_quarantined(
    settings: Settings, tmp_path: Path, week_of_flights, fault: Fault, suffix: str
) -> None:
    path = tmp_path / f"incoming{suffix}"
    bad = fault.corrupt(week_of_flights)
    if suffix == ".csv":
        bad.to_csv(path, index=False)
    else:
        bad.to_parquet(path)
    result = runner.invoke(app, ["validate", "flights", "--file", str(path)])
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())  # rich wraps long lines
    assert "failed" in text
    assert fault.expectation in text
    assert "quarantined to:" in text
    quarantined = list((settings.quarantine_dir / "flights").iterdir())
    assert len(quarantined) == 1
    assert (quarantined[0] / "validation_result.json").is_file()


def test_unknown_dataset_and_missing_file_are_usage_errors(settings: Settings, tmp_path) -> None:
    result = runner.invoke(app, ["validate", "flight", "--file", str(tmp_path / "x.csv")])
    assert result.exit_code == 2
    assert "flights" in result.output  # names what exists
    result = runner.invoke(app, ["validate", "flights", "--file", str(tmp_path / "none.csv")])
    assert result.exit_code == 2
    assert "no such file" in result.output


def test_train_needs_a_model_or_all(settings: Settings) -> None:
    result = runner.invoke(app, ["train"])
    assert result.exit_code == 2
    assert "--all" in result.output
    result = runner.invoke(app, ["train", "no_such_model"])
    assert result.exit_code == 2
    assert "flight_delay" in result.output
