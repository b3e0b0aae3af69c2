"""`fleet bench window` on three live weeks of January-February flights."""

from __future__ import annotations

import itertools
import json
import math
from datetime import date, timedelta

import pytest

from bench import window
from fleet.catalog import get_model
from fleet.settings import Settings

START, END = date(2013, 1, 29), date(2013, 2, 18)  # three whole weeks


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> window.WindowBench:
    out = tmp_path_factory.mktemp("window")
    lines: list[str] = []
    result = window.run_window_bench(
        "arrival_delay", (2, 3), START, END, retrain_every=1, sample=200, out_dir=out,
        say=lines.append,
    )  # fmt: skip
    assert any("2 weeks: closed loop" in line for line in lines)
    return result


def test_live_weeks_keep_whole_weeks_only() -> None:
    weeks = window.live_weeks(date(2013, 3, 5), date(2013, 3, 24))
    assert weeks == [(date(2013, 3, 5), date(2013, 3, 12)), (date(2013, 3, 12), date(2013, 3, 19))]
    assert window.live_weeks(date(2013, 3, 5), date(2013, 3, 10)) == []


def test_frozen_is_the_bootstrap_model_scored_on_each_week(bench: window.WindowBench) -> None:
    spec = get_model("arrival_delay").model_copy(update=dict(train_weeks=3))
    frame = window.load_rows(spec, date(2013, 1, 1), END)
    frozen, _ = window.train_until(spec, frame, START)
    arm = next(a for a in bench.arms if a.train_weeks == 3)
    assert [w.week for w in arm.weeks] == ["2013-01-29", "2013-02-05", "2013-02-12"]
    for week in arm.weeks:
        first = date.fromisoformat(week.week)
        rows = window.rows_between(spec, frame, first, first + timedelta(days=7))
        assert week.frozen == pytest.approx(window.metric_on(spec, frozen, rows))
        assert len(rows) > 200  # the sampled score really is a sample
    # week one is served by the bootstrap champion in both arms
    assert arm.weeks[0].closed_loop == arm.weeks[0].frozen


def test_the_champion_moves_only_on_recorded_promotions(bench: window.WindowBench) -> None:
    for arm in bench.arms:
        served = [w.champion_until for w in arm.weeks]
        moved = [b for a, b in itertools.pairwise(served) if a != b]
        assert moved == arm.promotions[: len(moved)]
        for week in arm.weeks:
            if week.champion_until == START.isoformat():
                assert week.closed_loop == week.frozen
                assert week.closed_loop_sampled == week.frozen_sampled
            else:
                assert week.closed_loop != week.frozen


def test_gain_has_the_metric_direction(bench: window.WindowBench) -> None:
    assert bench.metric == "mae" and not bench.greater_is_better
    for arm, row in zip(bench.arms, bench.rows(), strict=True):
        closed, frozen = arm.mean("closed_loop"), arm.mean("frozen")
        assert not math.isnan(closed)
        assert row["gain"] == pytest.approx(frozen - closed, abs=1e-3)


def test_results_are_written(bench: window.WindowBench) -> None:
    assert bench.json_path is not None and bench.markdown_path is not None
    data = json.loads(bench.json_path.read_text())
    assert [m["train_weeks"] for m in data["means"]] == [2, 3]
    assert data["retrain_every"] == 1 and data["sample"] == 200
    text = bench.markdown_path.read_text()
    assert "| 3 |" in text and "gain" in text


def test_a_range_without_a_whole_week_is_refused() -> None:
    with pytest.raises(ValueError, match="no whole week"):
        window.run_window_bench("arrival_delay", (3,), START, START + timedelta(days=5))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "nope"], "unknown model"),
        (["--train-weeks", "8,x"], "give integers"),
        (["--start", "2013-03-05", "--end", "2013-03-08"], "no whole week"),
    ],
)
def test_cli_refuses_bad_options(settings: Settings, args: list[str], message: str) -> None:
    from typer.testing import CliRunner

    from fleet.cli import app

    result = CliRunner().invoke(app, ["bench", "window", *args])
    assert result.exit_code == 2
    assert message in result.output
