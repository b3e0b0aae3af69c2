"""`fleet bench topology`: micro against mono on this machine, then simulated beyond it.

1. **Measured.** The fleet's champions served twice, one topology after the other, on
   free loopback ports from a scratch root (``<root>/bench/topology``, sharing the
   registry): *micro* (gateway + one ``bentoml serve`` per model, workers from the
   specs) and *mono* (the gateway hosting every model). Mono gets as many workers as
   micro has worker processes in all (gateway included), so both run the same number of
   Python workers. Load comes from a separate closed-loop ``python -m bench.load``
   process per point (bounded in requests and time); an answer with any per-model error
   counts as an error. Per point: throughput, p50/p95/p99, errors, and the CPU of every
   component and of the load process (psutil), hence the cores used; after each
   topology, the memory of every component (RSS and PSS of its process tree).
2. **Calibration.** Per-model predict time in process (CPU per record), then single-kind
   runs: direct calls to each model service, and each request kind through each
   gateway. CPU per request per component comes from CPU accounting (robust to a busy
   machine); hop delays from the concurrency-1 latencies. ``fit_calibration`` turns
   them into a ``fleet.simulation.Calibration``.
3. **Validation.** The simulator replays every measured point (profile x topology x
   concurrency, closed loop, load generator on the same cores); relative errors of
   throughput, p50 and p99 are reported, their mean over throughput and p50 is the
   headline ``validation_error``.
4. **Beyond one machine.** Open-loop sweeps for 1..64 machines (per-model scaling for
   micro, whole-process replicas for mono), and, per traffic mix, every way of
   consolidating models into the gateway ranked by capacity within a p99 budget.

Writes ``bench/results/topology.{json,md}``, PNG plots under ``docs/topology/`` and the
generated section of ``docs/topology.md``.

By job: ``config`` (levels, budgets, paths), ``traffic`` (request kinds, profiles),
``measure`` (processes, CPU, memory, the served fleet), ``model`` (calibration fit,
validation, sweeps), ``report`` (markdown, plots, docs); this module runs them in order.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.topology.config import (
    BEGIN,
    CALIBRATION_LEVEL,
    DOCS_DIR,
    END,
    LEVELS,
    MACHINES,
    NET_S,
    P99_BUDGET_MS,
    PLOTS_SUBDIR,
    RESULTS_DIR,
    TOPOLOGIES,
    WAKE_PAUSES,
    Say,
)
from bench.topology.measure import Point, predict_cpu_s, serving, worker_counts
from bench.topology.model import (
    Observation,
    advice,
    findings,
    fit_calibration,
    fit_wake,
    hybrid_plan,
    observation,
    per_core,
    relative_error,
    repeatability,
    sweep,
    validate,
)
from bench.topology.report import TopologyBench, markdown, plot, write_docs_section
from bench.topology.traffic import body, mixed_bodies, profiles, request_classes
from fleet.catalog import get_model
from fleet.catalog import models as catalog_models
from fleet.settings import REPO_ROOT, Settings

# --- the whole run ----------------------------------------------------------------------


def scratch_settings(settings: Settings) -> Settings:
    """The bench's own state root (pid files, logs, stores) sharing the registry."""
    return Settings(
        home=settings.root / "bench" / "topology",
        MLFLOW_TRACKING_URI=settings.tracking_uri,
        results_url=None,
        predictions_url=None,
    )


def run_topology_bench(
    settings: Settings,
    requests: int = 600,
    levels: Sequence[int] = LEVELS,
    calibration_requests: int | None = None,
    machines: Sequence[int] = MACHINES,
    sim_requests: int = 1500,
    advice_machines: Sequence[int] = (1, 8),
    p99_budget_ms: float = P99_BUDGET_MS,
    time_bound_s: float = 60.0,
    out_dir: Path = RESULTS_DIR,
    docs_dir: Path | None = DOCS_DIR,
    say: Say = print,
    only_profiles: Sequence[str] | None = None,
    calibration_level: int | None = CALIBRATION_LEVEL,
    repeat: bool = True,
) -> TopologyBench:
    """Measure, calibrate, validate, simulate; write JSON, markdown, plots and the doc.

    ``repeat`` measures every profile point a second time, after the first pass, to
    report how far two measurements of one point differ. ``only_profiles`` and
    ``calibration_level=None`` (calibrate at one client only) are for smoke runs.
    """
    from bench.serve import ensure_champion, machine_facts, request_records
    from fleet import bento_store as store

    cal_n = calibration_requests or max(20, requests // 2)
    warmup = max(5, requests // 10)
    infos = {name: ensure_champion(settings, name, say) for name in catalog_models()}
    scratch = scratch_settings(settings)
    scratch.root.mkdir(parents=True, exist_ok=True)
    for db in ("results.db", "predictions.db"):  # bench traffic only, no need to keep it
        for path in scratch.serving_dir.glob(f"{db}*"):
            path.unlink()
    tags = {name: store.import_champion(scratch, name) for name in catalog_models()}
    records = {}
    for name in catalog_models():
        kind = get_model(name).dataset.record
        if kind not in records:
            records[kind] = request_records(settings, get_model(name), infos[name], n=500)

    say("predict time per model, in process (CPU per record, one thread)")
    predict_s = {}
    with store.model_store(scratch):
        for name, tag in tags.items():
            spec = get_model(name)
            loaded = store.load_model(tag)
            predict_s[name] = predict_cpu_s(spec, loaded.model, records[spec.dataset.record], 300)
    slowest = max(predict_s, key=lambda m: predict_s[m])
    mixes = profiles(slowest)
    if only_profiles:
        mixes = {k: v for k, v in mixes.items() if k in only_profiles}
    classes = request_classes()
    model_workers, micro_gw, mono_gw = worker_counts()
    cores = os.cpu_count() or 1
    bench = TopologyBench(
        requests=requests,
        levels=list(levels),
        workers={
            "micro": {
                "gateway": micro_gw,
                "models": model_workers,
                "total": micro_gw + sum(model_workers.values()),
            },
            "mono": {"total": mono_gw},
        },
        profiles=mixes,
        machine=machine_facts(),
        predict_ms={m: round(v * 1000, 4) for m, v in predict_s.items()},
    )
    ok_gateway = {"require": ["results"], "forbid": ["errors"]}
    direct: dict[str, Observation] = {}
    by_mode: dict[str, dict[str, Observation]] = {"micro": {}, "mono": {}}
    profile_points: list[Point] = []
    repeat_points: list[Point] = []

    def warmed_up(fleet: Any) -> str:
        """The gateway's URL, once the first requests, which pay for lazy imports and
        caches in every worker, are in (not measured) and the idle CPU is known."""
        gw = f"{fleet.gateway_url}/predict"
        warm = mixed_bodies({"flight": 1, "review_sentiment": 1}, records)
        count = min(20 * mono_gw, max(10, requests))
        fleet.run("warm-up", "gateway", gw, warm, 4, count, 0, time_bound_s, **ok_gateway)
        fleet.measure_idle()
        return gw

    def measured_row(point: Point) -> dict[str, Any]:
        return {
            **asdict(point.level),
            "cores_used": round(point.cores_used, 3),
            "cpu_ms_per_request": point.summary()["cpu_ms_per_request"],
        }

    for topology in TOPOLOGIES:
        say(f"starting {topology} (logs under {scratch.serving_dir / 'logs'})")
        with serving(scratch, topology, tags) as fleet:
            gw = warmed_up(fleet)

            def pair(
                target: str, url: str, bodies: list[Any], check: dict[str, list[str]], label: str
            ) -> tuple[Point, Point]:
                quiet = fleet.run(
                    label, target, url, bodies, 1, cal_n, warmup, time_bound_s, **check
                )
                runs = [quiet]
                if calibration_level is not None:
                    runs.append(
                        fleet.run(
                            label, target, url, bodies, calibration_level, cal_n, warmup,
                            time_bound_s, **check,
                        )
                    )  # fmt: skip
                bench.calibration_runs += [run.summary() for run in runs]
                return quiet, runs[-1]

            if topology == "micro":
                for name in catalog_models():
                    say(f"calibration: {name} service, direct")
                    rows = records[get_model(name).dataset.record]
                    answer = "prediction"
                    q, b = pair(
                        name,
                        f"{fleet.running[name].url}/predict",
                        [{"record": r} for r in rows],
                        {"require": [answer], "forbid": []},
                        f"calibration:{name}",
                    )
                    direct[name] = observation(q, b, name)
                probe = next(iter(catalog_models()))
                say(f"calibration: {probe} service, CPU per call after pauses (wake-ups)")
                rows = records[get_model(probe).dataset.record]
                curve = fleet.wake_curve(
                    probe, f"{fleet.running[probe].url}/predict", [{"record": r} for r in rows],
                    WAKE_PAUSES, max(20, cal_n // 3),
                )  # fmt: skip
                bench.wake_curve = {"model": probe, "pause_cpu_s": curve}
            for kind in classes:
                say(f"calibration: {kind} requests through the {topology} gateway")
                bodies = [body(kind, records, i) for i in range(200)]
                q, b = pair("gateway", gw, bodies, ok_gateway, f"calibration:{kind}")
                by_mode[topology][kind] = observation(q, b, "gateway")
            # every point twice, the second pass after all the first: how far two
            # measurements of one point fall apart is the floor under the simulator's error
            passes = [(profile_points, bench.measured, "")]
            if repeat:
                passes.append((repeat_points, bench.repeated, ", again"))
            for points, table, again in passes:
                for profile, mix in mixes.items():
                    bodies = mixed_bodies(mix, records)
                    for level in levels:
                        say(f"{topology}, {profile}: {level} client(s), {requests} requests{again}")
                        point = fleet.run(profile, "gateway", gw, bodies, level, requests,
                                          warmup, time_bound_s, **ok_gateway)  # fmt: skip
                        points.append(point)
                        table.setdefault(profile, {}).setdefault(topology, []).append(
                            measured_row(point)
                        )
            bench.memory[topology] = fleet.memory()

    say("fitting the calibration; validating the simulator on the measured points")
    wake = fit_wake(bench.wake_curve.get("pause_cpu_s", []))
    cal = fit_calibration(predict_s, direct, by_mode["micro"], by_mode["mono"], classes, wake)
    bench.calibration = asdict(cal)
    bench.simulation = {
        "cores_per_machine": cores,
        "net_ms": NET_S * 1000,
        "p99_budget_ms": p99_budget_ms,
        "validation": validate(cal, profile_points, mixes, cores, sim_requests),
        "repeat": repeatability(profile_points, repeat_points),
    }
    say(
        f"validation error {bench.simulation['validation']['validation_error']:.1%}; "
        f"sweeping 1..{max(machines)} machines"
    )
    scaling = sweep(cal, mixes, cores, machines, sim_requests, p99_budget_ms)
    bench.simulation["scaling"] = scaling
    bench.simulation["findings"] = findings(scaling)
    if "skewed" in mixes:
        top_mono = max(lv["req_per_s"] for lv in bench.measured["skewed"]["mono"])
        chosen, hybrid = hybrid_plan(cal, mixes["skewed"], top_mono, cores, mono_gw)
        say("\n".join(chosen.lines()))
        bench.hybrid = {"auto": chosen.as_dict(), "plan": hybrid.as_dict()}
        if hybrid.topology == "hybrid":
            say("measuring " + hybrid.lines()[0])
            with serving(scratch, hybrid, tags) as fleet:
                gw = warmed_up(fleet)
                bodies = mixed_bodies(mixes["skewed"], records)
                for level in levels:
                    say(f"hybrid, skewed: {level} client(s), {requests} requests")
                    point = fleet.run("skewed", "gateway", gw, bodies, level, requests, warmup,
                                      time_bound_s, **ok_gateway)  # fmt: skip
                    bench.measured["skewed"].setdefault("hybrid", []).append(measured_row(point))
                bench.memory["hybrid"] = fleet.memory()
        bench.hybrid["per_core"] = per_core(bench.measured["skewed"])
    say("ranking consolidation layouts per profile")
    bench.simulation["advice"] = advice(
        cal, mixes, cores, advice_machines, p99_budget_ms, sim_requests
    )
    bench.simulation["validation_error"] = bench.simulation["validation"]["validation_error"]

    out_dir.mkdir(parents=True, exist_ok=True)
    plots_dir = (docs_dir / PLOTS_SUBDIR) if docs_dir is not None else out_dir / PLOTS_SUBDIR
    paths = plot(bench, plots_dir)
    bench.plots = [
        str(p.relative_to(REPO_ROOT)) if p.is_relative_to(REPO_ROOT) else str(p) for p in paths
    ]
    bench.json_path = out_dir / "topology.json"
    bench.markdown_path = out_dir / "topology.md"
    bench.json_path.write_text(json.dumps(bench.summary(), indent=2) + "\n")
    rel_from_results = os.path.relpath(plots_dir, out_dir)
    bench.markdown_path.write_text(
        "## Topology benchmark\n\n" + markdown(bench, rel_from_results) + "\n"
    )
    if docs_dir is not None:
        write_docs_section(docs_dir / "topology.md", markdown(bench, PLOTS_SUBDIR))
    return bench


__all__ = [
    "BEGIN", "END", "RESULTS_DIR", "Observation", "Point", "fit_calibration", "fit_wake",
    "hybrid_plan", "mixed_bodies", "per_core", "profiles", "relative_error", "repeatability",
    "request_classes",
    "run_topology_bench",
    "write_docs_section",
]  # fmt: skip
