"""`fleet bench pipeline`: stage times for one model and what Prefect adds on top.

Both variants do the same work on the same state root: rebuild the model's window in
the lake from a cold extract, validate the ETL batch, gate the training window, train,
register and run the champion gate. "direct" calls the plain functions in order;
"flow" runs ``train_fleet_flow`` against a Prefect server that a warm-up run already
started. The ratio of their medians is the orchestration overhead.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

from fleet import etl, lake, pipeline, sources, training
from fleet.catalog import get_model
from fleet.settings import REPO_ROOT, Settings

RESULTS_DIR = REPO_ROOT / "bench" / "results"
TARGET_OVERHEAD = 1.15
TARGET_END_TO_END_S = 60.0


@dataclass
class PipelineBench:
    model: str
    until: str
    repeats: int
    direct_s: list[float] = field(default_factory=list)
    flow_s: list[float] = field(default_factory=list)
    stages_s: dict[str, list[float]] = field(default_factory=dict)
    machine: dict[str, str] = field(default_factory=dict)
    json_path: Path | None = None
    markdown_path: Path | None = None

    @property
    def overhead_ratio(self) -> float:
        return statistics.median(self.flow_s) / statistics.median(self.direct_s)

    def summary(self) -> dict[str, object]:
        data = asdict(self)
        data.pop("json_path")
        data.pop("markdown_path")
        data["median_direct_s"] = round(statistics.median(self.direct_s), 3)
        data["median_flow_s"] = round(statistics.median(self.flow_s), 3)
        data["overhead_ratio"] = round(self.overhead_ratio, 3)
        data["stage_median_s"] = {
            k: round(statistics.median(v), 3) for k, v in self.stages_s.items()
        }
        data["targets"] = {
            "overhead_ratio_max": TARGET_OVERHEAD,
            "end_to_end_s_max": TARGET_END_TO_END_S,
            "overhead_met": self.overhead_ratio <= TARGET_OVERHEAD,
            "end_to_end_met": statistics.median(self.flow_s) <= TARGET_END_TO_END_S,
        }
        return data

    def markdown(self) -> str:
        s = self.summary()
        lines = [
            f"## Pipeline benchmark: {self.model}, window ending {self.until}",
            "",
            f"{self.repeats} timed runs per variant after one warm-up each; medians.",
            "",
            "| stage (direct calls) | median s |",
            "| --- | ---: |",
            *(f"| {k} | {v:.3f} |" for k, v in s["stage_median_s"].items()),
            "",
            "| variant | median s | runs |",
            "| --- | ---: | --- |",
            f"| direct function calls (baseline) | {s['median_direct_s']:.3f} | "
            + ", ".join(f"{x:.2f}" for x in self.direct_s)
            + " |",
            f"| Prefect flow, warm server | {s['median_flow_s']:.3f} | "
            + ", ".join(f"{x:.2f}" for x in self.flow_s)
            + " |",
            "",
            f"Overhead ratio flow / direct: **{s['overhead_ratio']:.3f}** "
            f"(target <= {TARGET_OVERHEAD}: {'met' if s['targets']['overhead_met'] else 'MISSED'})",
            "",
            f"One model end to end through the flow: **{s['median_flow_s']:.1f} s** "
            f"(target <= {TARGET_END_TO_END_S:.0f} s: "
            f"{'met' if s['targets']['end_to_end_met'] else 'MISSED'})",
            "",
            f"Machine: {self.machine.get('cpus')} CPUs, Python {self.machine.get('python')}, "
            f"run {self.machine.get('when')}",
        ]
        return "\n".join(lines)


@contextmanager
def _bench_root(settings: Settings) -> Iterator[Settings]:
    """A state root of its own, so bench versions never reach the user's registry."""
    root = settings.root / "bench" / f"pipeline-{datetime.now(UTC):%Y%m%dT%H%M%S}"
    saved = {k: os.environ.get(k) for k in ("FLEET_HOME", "MLFLOW_TRACKING_URI")}
    os.environ["FLEET_HOME"] = str(root)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    bench_settings = Settings()
    os.environ["MLFLOW_TRACKING_URI"] = bench_settings.tracking_uri
    root.mkdir(parents=True, exist_ok=True)
    try:
        yield bench_settings
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _cold(settings: Settings, dataset: str) -> None:
    """Same starting point for every run: no partitions, no cached raw tables."""
    shutil.rmtree(settings.lake_dir / dataset, ignore_errors=True)
    sources.clear_cache()


def run_direct(settings: Settings, model: str, until: date) -> dict[str, float]:
    """The flow's work as plain calls, timed per stage."""
    from fleet import registry
    from fleet.validation import validate_batch

    spec = get_model(model)
    window = training.training_window(spec, until)
    stages: dict[str, float] = {}

    def timed(stage: str, fn: Callable[[], object]) -> object:
        t0 = time.perf_counter()
        out = fn()
        stages[stage] = time.perf_counter() - t0
        return out

    first, last = window.days
    todo, _ = etl.plan_days(settings.lake_dir, spec.dataset.name, first, last, force=False)
    parts = timed("etl.read", lambda: etl.read_days(spec.dataset, todo))
    batch = etl.concat_partitions(spec.dataset, parts)
    outcome = timed(
        "etl.validate",
        lambda: validate_batch(
            settings, spec.dataset, batch, etl.batch_name(spec.dataset.name, todo)
        ),
    )
    if not outcome.success:
        raise RuntimeError(f"bench batch failed validation: {outcome.failures}")
    timed("etl.load", lambda: lake.load_partitions(settings.lake_dir, spec.dataset.name, parts))
    frame, partitions = timed("gate.read", lambda: pipeline.read_window(settings, spec, window))
    timed("gate.validate", lambda: pipeline.gate(settings, spec, window, partitions))
    result = timed(
        "train+register",
        lambda: registry.train_and_promote(settings, spec, until, frame=frame),
    )
    for stage, seconds in result.timings.items():
        stages[f"  {stage}"] = seconds
    return stages


def run_pipeline_bench(
    settings: Settings, model: str, until: date, repeats: int, out_dir: Path = RESULTS_DIR
) -> PipelineBench:
    """Alternate direct and flow runs (warm-up first) and write JSON + markdown."""
    from flows.train import train_fleet_flow

    spec = get_model(model)
    bench = PipelineBench(model=model, until=until.isoformat(), repeats=repeats)
    bench.machine = {
        "cpus": str(os.cpu_count()),
        "python": ".".join(map(str, __import__("sys").version_info[:3])),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    with _bench_root(settings) as bs:
        # warm-ups: imports, the MLflow schema, the GX context and the Prefect server
        _cold(bs, spec.dataset.name)
        run_direct(bs, model, until)
        _cold(bs, spec.dataset.name)
        train_fleet_flow(models=[model], until=until)
        for _ in range(repeats):
            _cold(bs, spec.dataset.name)
            t0 = time.perf_counter()
            stages = run_direct(bs, model, until)
            bench.direct_s.append(round(time.perf_counter() - t0, 3))
            for stage, seconds in stages.items():
                bench.stages_s.setdefault(stage, []).append(round(seconds, 3))
            _cold(bs, spec.dataset.name)
            t0 = time.perf_counter()
            outcome = train_fleet_flow(models=[model], until=until)[0]
            bench.flow_s.append(round(time.perf_counter() - t0, 3))
            if outcome.status == "failed":
                raise RuntimeError(f"flow run failed: {outcome.message}")
    out_dir.mkdir(parents=True, exist_ok=True)
    bench.json_path = out_dir / "pipeline.json"
    bench.markdown_path = out_dir / "pipeline.md"
    bench.json_path.write_text(json.dumps(bench.summary(), indent=2) + "\n")
    bench.markdown_path.write_text(bench.markdown() + "\n")
    return bench
