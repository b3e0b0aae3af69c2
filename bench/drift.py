"""`fleet bench drift`: one drift job's time and peak memory by window size, with and
without sampling.

The model is flight_delay. Reference: its training window ending 2013-02-26, cut at the
first day of data to eight weeks of real flights (January to February 2013), from the
lake of a bench state root, built by the ETL if absent. Current: real summer flights
(June to August, a real seasonal shift) resampled with a fixed seed to 10k, 100k and 1M
rows, with the label and answers attached so the quality part runs too (random answers:
the bench times the job, not the model).

Each case runs in a fresh subprocess, so its peak RSS is its own and nothing is warm
from an earlier case; the Evidently import is timed apart from the job. The job is
``monitoring.drift.measure``: sampling, the Evidently drift and quality runs and the
HTML report written to disk.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from fleet import etl, lake, sources, training
from fleet.catalog import get_dataset, get_model
from fleet.settings import REPO_ROOT, Settings

RESULTS_DIR = REPO_ROOT / "bench" / "results"
MODEL = "flight_delay"
SIZES = (10_000, 100_000, 1_000_000)
REFERENCE_UNTIL = date(2013, 2, 26)  # the window is Jan 1 .. Feb 25, eight weeks
SUMMER = (date(2013, 6, 1), date(2013, 8, 31))
TARGET_S = 10.0  # one sampled job on 100k rows
SEED = 2013


@dataclass
class Case:
    rows: int
    sampled: bool
    max_rows: int | None
    ok: bool = True
    job_s: float | None = None
    import_s: float | None = None
    peak_rss_mb: float | None = None
    rss_before_job_mb: float | None = None
    drift_share: float | None = None
    drifted_columns: int | None = None
    stages_s: dict[str, float] = field(default_factory=dict)
    error: str = ""


@dataclass
class DriftBench:
    model: str
    reference_rows: int
    max_rows: int
    cases: list[Case] = field(default_factory=list)
    machine: dict[str, str] = field(default_factory=dict)
    json_path: Path | None = None
    markdown_path: Path | None = None

    def target(self) -> dict[str, object]:
        hits = [c for c in self.cases if c.sampled and c.rows == 100_000 and c.ok]
        seconds = hits[0].job_s if hits else None
        return {
            "sampled_100k_s_max": TARGET_S,
            "sampled_100k_s": seconds,
            "met": None if seconds is None else seconds <= TARGET_S,
        }

    def summary(self) -> dict[str, object]:
        data = asdict(self)
        data.pop("json_path")
        data.pop("markdown_path")
        data["target"] = self.target()
        return data

    def markdown(self) -> str:
        lines = [
            f"## Drift job benchmark: {self.model}",
            "",
            f"Reference: {self.reference_rows} real training rows (2013-01-01..2013-02-25). "
            "Current: real June-August flights resampled to each size. Sampling draws at "
            f"most {self.max_rows} rows per side (fixed seed). One fresh process per case; "
            "the job is sampling + Evidently drift and quality + the HTML report. RSS before "
            "the job holds the imports and both frames; the peak is the process's during the "
            "job (Linux VmHWM, reset just before it).",
            "",
            "| current rows | sampling | job s | peak RSS in job MB | RSS before job MB "
            "| drift share | drifted |",
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for c in self.cases:
            mode = f"<= {c.max_rows}" if c.sampled else "none"
            if not c.ok:
                lines.append(f"| {c.rows} | {mode} | failed: {c.error[:80]} | | | | |")
                continue
            lines.append(
                f"| {c.rows} | {mode} | {c.job_s:.2f} | {c.peak_rss_mb:.0f} | "
                f"{c.rss_before_job_mb:.0f} | {c.drift_share:.2f} | {c.drifted_columns} |"
            )
        target = self.target()
        verdict = (
            "not measured" if target["met"] is None else ("met" if target["met"] else "MISSED")
        )
        imports = [c.import_s for c in self.cases if c.import_s is not None]
        lines += [
            "",
            f"Target: a sampled job on 100k rows in at most {TARGET_S:.0f} s: **{verdict}**.",
            "",
            f"Evidently import per process (not in the job time): "
            f"{min(imports):.1f}-{max(imports):.1f} s."
            if imports
            else "",
            "",
            f"Machine: {self.machine.get('cpus')} CPUs, Python {self.machine.get('python')}, "
            f"run {self.machine.get('when')}",
        ]
        return "\n".join(lines)


def _status_mb(field: str) -> float | None:
    """VmRSS / VmHWM of this process from /proc (Linux), in MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Restart the kernel's peak-RSS count, so the job's peak is not the import's."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_mb() -> float:
    hwm = _status_mb("VmHWM")
    # ru_maxrss (KiB on Linux) cannot be reset: the whole process's peak
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def prepare(settings: Settings, sizes: tuple[int, ...]) -> tuple[Path, dict[int, Path]]:
    """Reference and current Parquet files under ``$FLEET_HOME/bench/drift`` (built if absent)."""
    spec = get_model(MODEL)
    work = settings.root / "bench" / "drift"
    # a lake of its own: bench partitions never reach the user's lake unvalidated
    lake_dir = work / "lake"
    window = training.training_window(spec, REFERENCE_UNTIL)
    wanted = lake.days(*window.days) + lake.days(*SUMMER)
    missing = [d for d in wanted if not lake.partition_path(lake_dir, "flights", d).exists()]
    if missing:
        raw = sources.load_flights()
        months = sorted({d.month for d in missing})
        table = sources.transform_flights(raw[raw["month"].isin(months)], sources.load_weather())
        for day, frame in etl.build_partitions(get_dataset("flights"), table, missing).items():
            lake.write_partition(lake_dir, "flights", day, frame)
    reference_path = work / "reference.parquet"
    if not reference_path.exists():
        frame = lake.read_partitions(training.window_partitions(lake_dir, spec, window))
        train, _ = training.split_by_window(spec, frame, window)
        train[train[spec.target].notna()].to_parquet(reference_path, index=False)
    pool = lake.read_partitions(lake.partitions_in(lake_dir, "flights", *SUMMER))
    currents = {}
    for rows in sizes:
        path = work / f"current-{rows}.parquet"
        if not path.exists():
            rng = np.random.default_rng(SEED)
            picked = pool.iloc[rng.integers(0, len(pool), size=rows)].reset_index(drop=True)
            prob = rng.random(rows)
            picked["prediction_probability"] = prob
            picked["prediction_label"] = np.where(prob > 0.5, "1", "0")
            picked.to_parquet(path, index=False)
        currents[rows] = path
    return reference_path, currents


def run_case(reference: Path, current: Path, max_rows: int | None, report: Path) -> dict:
    """One job in this process; returns the measurements (called in the child)."""
    t0 = time.perf_counter()
    import evidently.metrics
    import evidently.presets  # noqa: F401

    from monitoring import drift

    import_s = time.perf_counter() - t0
    spec = get_model(MODEL)
    ref = pd.read_parquet(reference)
    cur = pd.read_parquet(current)
    before = _status_mb("VmRSS") or _peak_mb()
    _reset_peak()
    t0 = time.perf_counter()
    found = drift.measure(spec, ref, cur, report, max_rows=max_rows)
    job_s = time.perf_counter() - t0
    return {
        "job_s": round(job_s, 3),
        "import_s": round(import_s, 3),
        "peak_rss_mb": round(_peak_mb(), 1),
        "rss_before_job_mb": round(before, 1),
        "drift_share": found.drift_share,
        "drifted_columns": len(found.drifted_columns),
        "stages_s": found.seconds,
    }


def run_drift_bench(
    settings: Settings,
    sizes: tuple[int, ...] = SIZES,
    max_rows: int = 10_000,
    out_dir: Path = RESULTS_DIR,
    timeout_s: float = 1800.0,
    say: Callable[[str], None] = print,
) -> DriftBench:
    """Every size with and without sampling, one subprocess each; JSON + markdown."""
    reference, currents = prepare(settings, sizes)
    bench = DriftBench(MODEL, len(pd.read_parquet(reference, columns=["flight_id"])), max_rows)
    bench.machine = {
        "cpus": str(os.cpu_count()),
        "python": ".".join(map(str, sys.version_info[:3])),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    reports = settings.root / "bench" / "drift" / "reports"
    for rows in sizes:
        for sampled in (True, False):
            case = Case(rows=rows, sampled=sampled, max_rows=max_rows if sampled else None)
            say(f"drift job: {rows} rows, {'sampled' if sampled else 'unsampled'} ...")
            args = {
                "reference": str(reference),
                "current": str(currents[rows]),
                "max_rows": case.max_rows,
                "report": str(reports / f"{rows}-{'sampled' if sampled else 'full'}.html"),
            }
            cmd = [sys.executable, "-m", "bench.drift", json.dumps(args)]
            try:
                done = subprocess.run(
                    cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s
                )
                if done.returncode != 0:
                    raise RuntimeError(done.stderr.strip().splitlines()[-1])
                for key, value in json.loads(done.stdout.strip().splitlines()[-1]).items():
                    setattr(case, key, value)
            except (RuntimeError, subprocess.TimeoutExpired, IndexError) as exc:
                case.ok, case.error = False, str(exc) or type(exc).__name__
            bench.cases.append(case)
            if case.ok:
                say(f"  {case.job_s:.2f} s, peak RSS {case.peak_rss_mb:.0f} MB")
            else:
                say(f"  failed: {case.error}")
    out_dir.mkdir(parents=True, exist_ok=True)
    bench.json_path = out_dir / "drift.json"
    bench.markdown_path = out_dir / "drift.md"
    bench.json_path.write_text(json.dumps(bench.summary(), indent=2) + "\n")
    bench.markdown_path.write_text(bench.markdown() + "\n")
    return bench


if __name__ == "__main__":  # one case, in a child process (see run_drift_bench)
    from fleet.settings import TELEMETRY_OFF

    for _key, _value in TELEMETRY_OFF.items():
        os.environ.setdefault(_key, _value)
    spec_args = json.loads(sys.argv[1])
    result = run_case(
        Path(spec_args["reference"]),
        Path(spec_args["current"]),
        spec_args["max_rows"],
        Path(spec_args["report"]),
    )
    print(json.dumps(result))
