"""`fleet bench cli`: real processes timed against the interpreter's own start-up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.cli import COMMANDS, run_cli_bench


def test_the_cli_bench_times_real_commands_against_the_baseline(tmp_path: Path) -> None:
    quick = [c for c in COMMANDS if c[1] in (["--help"], ["train", "no_such_model"])]
    base, rows, markdown = run_cli_bench(tmp_path, repeat=1, say=lambda _: None, commands=quick)
    assert base > 0 and [r.command for r in rows] == [c[0] for c in quick]
    for row in rows:
        assert row.median_s > base  # a command cannot start faster than an empty interpreter
        assert row.ratio_to_baseline == pytest.approx(row.median_s / base, abs=0.06)
    saved = json.loads((tmp_path / "cli.json").read_text())
    assert len(saved["rows"]) == len(quick)
    assert "x baseline" in markdown.read_text()


def test_a_command_with_the_wrong_exit_code_is_an_error(tmp_path: Path) -> None:
    wrong = [("an argument error taken for a success", ["train", "no_such_model"], 1.0, 0)]
    with pytest.raises(RuntimeError, match="exited 2"):
        run_cli_bench(tmp_path, repeat=1, say=lambda _: None, commands=wrong)
