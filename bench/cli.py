"""``fleet bench cli``: how fast the ``fleet`` command answers, as installed.

Each command runs ``repeat`` times as a fresh process on a fresh state root (no Prefect
server, no stack), median wall time. The baseline in the same run is the floor every
command pays: the interpreter starting and importing nothing (``python -c pass``); the
ratio says how much of a command is ours. The no-op ``fleet etl`` is timed after a first
run built the lake, so it measures finding that there is nothing to do (it starts a
temporary Prefect server: no stack runs here).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from fleet.settings import REPO_ROOT, TELEMETRY_OFF

RESULTS_DIR = REPO_ROOT / "bench" / "results"
# (label, arguments, the target in seconds, expected exit code)
COMMANDS: list[tuple[str, list[str], float, int]] = [
    ("fleet --help", ["--help"], 1.0, 0),
    ("argument error (unknown model)", ["train", "no_such_model"], 1.5, 2),
    ("fleet catalog check", ["catalog", "check"], 3.0, 0),
    ("fleet status", ["status"], 3.0, 0),
    ("fleet models (empty registry)", ["models"], 3.0, 0),
    ("no-op fleet etl (temporary server)", ["etl"], 8.0, 0),
]


@dataclass
class CliRow:
    command: str
    median_s: float
    runs: list[float]
    target_s: float
    ratio_to_baseline: float

    @property
    def met(self) -> bool:
        return self.median_s <= self.target_s


def _timed(argv: list[str], env: dict[str, str], expect: int) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - t0
    if done.returncode != expect:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr[-500:]}")
    return seconds


def run_cli_bench(
    out_dir: Path = RESULTS_DIR,
    repeat: int = 5,
    say: Callable[[str], None] = print,
    commands: list[tuple[str, list[str], float, int]] = COMMANDS,
) -> tuple[float, list[CliRow], Path]:
    fleet = str(Path(sys.executable).parent / "fleet")
    with tempfile.TemporaryDirectory(prefix="fleet-bench-cli-") as home:
        env = {**os.environ, **TELEMETRY_OFF, "FLEET_HOME": home}
        env.pop("PREFECT_API_URL", None)
        base = statistics.median(
            _timed([sys.executable, "-c", "pass"], env, 0) for _ in range(repeat)
        )
        say(f"baseline python -c pass: {base:.3f} s")
        rows = []
        for label, args, target, expect in commands:
            if args == ["etl"]:
                say("building the lake once (not timed) ...")
                _timed([fleet, "etl"], env, 0)
            runs = [round(_timed([fleet, *args], env, expect), 3) for _ in range(repeat)]
            median = statistics.median(runs)
            rows.append(CliRow(label, round(median, 3), runs, target, round(median / base, 1)))
            say(f"{label}: {median:.2f} s (target {target} s)")
    out_dir.mkdir(parents=True, exist_ok=True)
    machine = {"cpus": os.cpu_count(), "python": platform.python_version()}
    payload = {"baseline_s": base, "rows": [asdict(r) for r in rows], "machine": machine}
    (out_dir / "cli.json").write_text(json.dumps(payload, indent=1))
    lines = [
        "# fleet bench cli",
        "",
        f"Median of {repeat} fresh processes each, fresh state root, no stack; baseline "
        f"`python -c pass` {base:.3f} s ({machine['cpus']} cores).",
        "",
        "| command | median s | x baseline | target s | met |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {r.command} | {r.median_s:.2f} | {r.ratio_to_baseline} | {r.target_s} | "
        f"{'yes' if r.met else 'no'} |"
        for r in rows
    ]
    markdown = out_dir / "cli.md"
    markdown.write_text("\n".join(lines) + "\n")
    return base, rows, markdown
