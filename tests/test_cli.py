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
    # the batch's own page, linked from the output: the failure on it, nothing fetched
    page = (quarantined[0] / "report.html").read_text()
    assert "report.html" in text and "FAILED" in page and fault.expectation in page
    assert "http://" not in page and "https://" not in page and "<script" not in page


def test_unknown_dataset_and_missing_file_are_usage_errors(settings: Settings, tmp_path) -> None:
    result = runner.invoke(app, ["validate", "flight", "--file", str(tmp_path / "x.csv")])
    assert result.exit_code == 2
    assert "flights" in result.output  # names what exists
    result = runner.invoke(app, ["validate", "flights", "--file", str(tmp_path / "none.csv")])
    assert result.exit_code == 2
    assert "no such file" in result.output


def _unreadable(tmp_path: Path, week_of_flights: pd.DataFrame) -> dict[str, tuple[Path, str]]:
    """Files a user might hand to `fleet validate`, and what the message must say."""
    folder = tmp_path / "a-folder.csv"
    folder.mkdir()
    empty_csv = tmp_path / "empty.csv"
    empty_csv.write_text("")
    empty_parquet = tmp_path / "empty.parquet"
    empty_parquet.write_bytes(b"")
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 this is not parquet")
    semicolons = tmp_path / "semicolons.csv"
    week_of_flights.head(20).to_csv(semicolons, sep=";", index=False)
    return {
        "folder": (folder, "is a folder"),
        "empty csv": (empty_csv, "is empty"),
        "empty parquet": (empty_parquet, "is empty"),
        "corrupt parquet": (corrupt, "not a readable Parquet file"),
        "semicolons": (semicolons, "separated by semicolons"),
    }


def test_unreadable_files_are_usage_errors_in_a_line_on_stderr(
    settings: Settings, tmp_path: Path, week_of_flights: pd.DataFrame
) -> None:
    for case, (path, says) in _unreadable(tmp_path, week_of_flights).items():
        result = runner.invoke(app, ["validate", "flights", "--file", str(path)])
        assert result.exit_code == 2, (case, result.output)
        assert result.stdout == "", case  # errors go to stderr
        lines = result.stderr.strip().splitlines()
        assert 1 <= len(lines) <= 2, (case, lines)
        text = " ".join(result.stderr.split())
        assert says in text and path.name in text, (case, text)
        assert "Traceback" not in text
    assert not settings.quarantine_dir.exists()  # unreadable is not "failed validation"


def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback(tmp_path: Path) -> None:
    fleet = REPO_ROOT / ".venv" / "bin" / "fleet"
    home = tmp_path / "home-is-a-file"
    home.write_text("not a folder")  # the state root cannot be made
    env = {"PATH": str(fleet.parent), "FLEET_HOME": str(home), "DO_NOT_TRACK": "1"}
    plain = subprocess.run([fleet, "models"], capture_output=True, text=True, env=env, timeout=120)
    assert plain.returncode == 1
    assert "Traceback" not in plain.stderr
    assert len(plain.stderr.strip().splitlines()) == 2, plain.stderr
    assert "--debug" in plain.stderr
    debug = subprocess.run(
        [fleet, "--debug", "models"], capture_output=True, text=True, env=env, timeout=120
    )
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr


def test_train_needs_a_model_or_all(settings: Settings) -> None:
    result = runner.invoke(app, ["train"])
    assert result.exit_code == 2
    assert "--all" in result.output
    result = runner.invoke(app, ["train", "no_such_model"])
    assert result.exit_code == 2
    assert "flight_delay" in result.output


def test_a_flow_command_is_quiet_and_its_failure_is_one_line(tmp_path: Path) -> None:
    fleet = REPO_ROOT / ".venv" / "bin" / "fleet"
    env = {"PATH": str(fleet.parent), "FLEET_HOME": str(tmp_path / "home"), "DO_NOT_TRACK": "1"}
    done = subprocess.run(
        [fleet, "train", "review_sentiment"], capture_output=True, text=True, env=env,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    # Prefect's run lines (the flow's error and its traceback among them) went to the file
    assert "Traceback" not in done.stdout + done.stderr
    assert " INFO " not in done.stdout + done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: review_sentiment: the lake has no reviews partitions; run `fleet etl` or pass "
        "--until"
    ]
    log = (tmp_path / "home" / "logs" / "flows.log").read_text()
    assert "Traceback" in log and "no reviews partitions" in log
