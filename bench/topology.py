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
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import resource
import signal
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.load import LevelResult, LoadSpec, run_load_process
from fleet import simulation as sim
from fleet.catalog import get_model
from fleet.catalog import models as catalog_models
from fleet.settings import REPO_ROOT, Settings

RESULTS_DIR = REPO_ROOT / "bench" / "results"
DOCS_DIR = REPO_ROOT / "docs"
PLOTS_SUBDIR = "topology"
BEGIN, END = "<!-- BEGIN fleet bench topology -->", "<!-- END fleet bench topology -->"

TOPOLOGIES = ("micro", "mono")
LEVELS = (1, 8, 32)
CALIBRATION_LEVEL = 4
MACHINES = (1, 2, 4, 8, 16, 32, 64)
LOAD_FRACTIONS = (0.2, 0.4, 0.6, 0.8, 0.9, 1.0, 1.1)
P99_BUDGET_MS = 50.0
NET_S = 0.0002  # one-way delay between two machines of a data centre (~0.4 ms round trip)
TARGET_VALIDATION_ERROR = 0.15

Say = Callable[[str], None]


# --- traffic: request kinds and the three profiles --------------------------------------


def request_classes() -> dict[str, sim.RequestClass]:
    """A full flight request (both flight models, called together), each model alone."""
    flight_models = tuple(n for n, s in catalog_models().items() if s.dataset.record == "flight")
    classes = {"flight": sim.RequestClass("flight", flight_models)}
    for name in catalog_models():
        classes[name] = sim.RequestClass(name, (name,))
    return classes


def profiles(slowest: str) -> dict[str, dict[str, float]]:
    """Traffic mixes over request kinds.

    - uniform: half full flight requests, half reviews: every model gets as many calls;
    - skewed: 90 % of requests for flight_delay alone, the model the catalog scales;
    - heavy: 80 % for the model slowest to predict, the rest split over the others.
    """
    others = [m for m in catalog_models() if m != slowest]
    return {
        "uniform": {"flight": 0.5, "review_sentiment": 0.5},
        "skewed": {
            "flight_delay": 0.9,
            **{
                m: 0.1 / (len(catalog_models()) - 1)
                for m in catalog_models()
                if m != "flight_delay"
            },
        },
        "heavy": {slowest: 0.8, **{m: 0.2 / len(others) for m in others}},
    }


def body(kind: str, records: Mapping[str, list[dict[str, Any]]], i: int) -> dict[str, Any]:
    """The gateway request of one kind, with the i-th real record of its dataset."""
    cls = request_classes()[kind]
    record_kind = get_model(cls.models[0]).dataset.record
    rows = records[record_kind]
    out: dict[str, Any] = {record_kind: rows[i % len(rows)]}
    if kind != "flight" and record_kind == "flight":
        out["models"] = [kind]  # a flight request names the one model it wants
    return out


def mixed_bodies(
    mix: Mapping[str, float], records: Mapping[str, list[dict[str, Any]]], n: int = 200
) -> list[dict[str, Any]]:
    """``n`` bodies whose kinds have exactly the mix's shares (rounded), in a fixed shuffle."""
    mix = sim.normalise(mix)
    counts = {k: round(w * n) for k, w in mix.items()}
    kinds = [k for k, c in counts.items() for _ in range(c)]
    random.Random(11).shuffle(kinds)
    return [body(kind, records, i) for i, kind in enumerate(kinds)]


# --- measuring: processes, CPU, memory --------------------------------------------------


def _tree(pid: int) -> list[Any]:
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def tree_cpu(pid: int) -> float:
    """User + system CPU seconds of a process and its live descendants."""
    import psutil

    total = 0.0
    for proc in _tree(pid):
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            total += t.user + t.system
    return total


def tree_memory(pid: int) -> dict[str, float]:
    """Processes, RSS and PSS (MB, proportional share of pages shared between workers)."""
    import psutil

    procs, rss, pss = 0, 0.0, 0.0
    for proc in _tree(pid):
        with contextlib.suppress(psutil.Error):
            info = proc.memory_full_info()
            procs += 1
            rss += info.rss
            pss += getattr(info, "pss", info.rss)
    return {"processes": procs, "rss_mb": round(rss / 2**20, 1), "pss_mb": round(pss / 2**20, 1)}


@dataclass
class Point:
    """One measured load run: what the load generator saw and what each part spent."""

    topology: str
    profile: str  # a profile name, or "calibration:<target>"
    target: str  # gateway, or the model service called directly
    level: LevelResult
    sent: int  # requests sent in the run, warm-up included
    cpu_s: dict[str, float]  # component -> CPU seconds over the run, idle subtracted
    client_cpu_s: float  # the load process, measured level only
    background_cores: float = 0.0  # cores busy with anything else on the machine meanwhile

    @property
    def cores_used(self) -> float:
        """Busy cores during the level: services (per request x rate) + the load process."""
        per_request = sum(self.cpu_s.values()) / max(self.sent, 1)
        client = self.client_cpu_s / max(self.level.wall_s, 1e-9)
        return per_request * self.level.req_per_s + client

    def per_request(self, component: str) -> float:
        return self.cpu_s.get(component, 0.0) / max(self.sent, 1)

    def summary(self) -> dict[str, Any]:
        return {
            "topology": self.topology,
            "profile": self.profile,
            "target": self.target,
            **asdict(self.level),
            "sent": self.sent,
            "cpu_ms_per_request": {
                k: round(v / max(self.sent, 1) * 1000, 3) for k, v in self.cpu_s.items()
            },
            "client_cpu_ms_per_request": round(
                self.client_cpu_s / max(self.level.requests, 1) * 1000, 3
            ),
            "cores_used": round(self.cores_used, 3),
            "background_cores": round(self.background_cores, 3),
        }


class Fleet:
    """One running topology: its components' pids and URLs, and their idle CPU rates."""

    def __init__(self, topology: str, running: list[Any]) -> None:
        self.topology = topology
        self.running = {r.name: r for r in running}
        self.idle_rate: dict[str, float] = {}

    @property
    def gateway_url(self) -> str:
        return self.running["gateway"].url

    def cpu(self) -> dict[str, float]:
        return {name: tree_cpu(r.pid) for name, r in self.running.items()}

    def measure_idle(self, windows: int = 3, seconds: float = 1.0) -> None:
        """Background CPU (metrics, supervisors) per second, subtracted from every run.

        The lowest of a few windows: a worker still finishing its start-up must not count
        as idle cost (it would be subtracted from every request after).
        """
        rates: dict[str, list[float]] = {}
        for _ in range(windows):
            before, t0 = self.cpu(), time.perf_counter()
            time.sleep(seconds)
            after, wall = self.cpu(), time.perf_counter() - t0
            for k in after:
                rates.setdefault(k, []).append(max(0.0, (after[k] - before[k]) / wall))
        self.idle_rate = {k: min(v) for k, v in rates.items()}

    def memory(self) -> dict[str, dict[str, float]]:
        return {name: tree_memory(r.pid) for name, r in self.running.items()}

    def run(
        self,
        profile: str,
        target: str,
        url: str,
        bodies: list[Any],
        level: int,
        requests: int,
        warmup: int,
        time_bound_s: float,
        require: list[str],
        forbid: list[str],
    ) -> Point:
        spec = LoadSpec(
            url=url,
            bodies=bodies,
            levels=[level],
            requests=requests,
            warmup=warmup,
            time_bound_s=time_bound_s,
            require=require,
            forbid=forbid,
            headers=Settings().auth_headers(),
        )
        before, t0 = self.cpu(), time.perf_counter()
        machine0, children0 = machine_busy(), _children_cpu()
        (result,) = run_load_process(spec)
        after, wall = self.cpu(), time.perf_counter() - t0
        ours = sum(after.values()) - sum(before.values()) + _children_cpu() - children0
        background = max(0.0, (machine_busy() - machine0 - ours) / wall)
        cpu = {k: max(0.0, after[k] - before[k] - self.idle_rate.get(k, 0.0) * wall) for k in after}
        sent = result.requests + (warmup if warmup else 0)
        return Point(self.topology, profile, target, result, sent, cpu, result.cpu_s, background)


def machine_busy() -> float:
    """CPU seconds the whole machine has spent on anything but idling, since boot."""
    import psutil

    t = psutil.cpu_times()
    fields = ("user", "nice", "system", "irq", "softirq", "steal")  # guest is inside user
    return sum(getattr(t, f, 0.0) for f in fields)


def _children_cpu() -> float:
    """CPU of this process's finished children (the load processes once waited for)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _consecutive_free_ports(host: str, count: int) -> int:
    from fleet import processes

    for _ in range(50):
        base = processes.free_port(host)
        if all(processes.port_free(host, base + i) for i in range(count)):
            return base
    raise RuntimeError(f"no {count} consecutive free ports on {host}")


def worker_counts() -> tuple[dict[str, int], int, int]:
    """Model workers (specs), micro's gateway workers, and mono's: the same total."""
    model_workers = {name: spec.serving.workers for name, spec in catalog_models().items()}
    micro_gateway = 1  # the gateway's service declares no workers: BentoML's default
    return model_workers, micro_gateway, sum(model_workers.values()) + micro_gateway


@contextlib.contextmanager
def serving(
    scratch: Settings, topology: str, tags: dict[str, str], timeout: float = 180.0
) -> Iterator[Fleet]:
    """Start ``topology`` (``fleet.topology`` plan) on free ports; stop it on any exit."""
    from dataclasses import replace

    from fleet import processes
    from fleet import topology as topo

    host = scratch.serve_host
    processes.stop_all(scratch, grace=5)  # leftovers of an interrupted run, ours only
    ports = scratch.model_copy(
        update={
            "gateway_port": processes.free_port(host),
            "model_port_base": _consecutive_free_ports(host, len(catalog_models())),
        }
    )
    plan = topo.plan(ports, topology, list(catalog_models()), tags)  # type: ignore[arg-type]
    if topology == "mono":
        _, _, mono_workers = worker_counts()
        override = json.dumps({"services": {topo.GATEWAY: {"workers": mono_workers}}})
        plan = replace(
            plan,
            launches=[
                replace(la, env={**la.env, "BENTOML_CONFIG_OVERRIDES": override})
                if la.name == topo.GATEWAY
                else la
                for la in plan.launches
            ],
        )
    started: list[Any] = []

    def on_sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        started = topo.start_plan(ports, plan, timeout=timeout)
        yield Fleet(topology, started)
    finally:
        for running in reversed(started):
            processes.stop(ports, running, grace=10)
        signal.signal(signal.SIGTERM, previous)


def predict_cpu_s(spec: Any, model: Any, records: list[dict[str, Any]], n: int) -> float:
    """Mean CPU seconds of ``to_frame`` + ``predict`` of one record, one thread."""
    from fleet import serving, training

    with training.limit_threads(1):
        for record in records[:20]:  # warm caches and lazy imports
            serving.predict(spec, model, serving.to_frame(spec, [record]))
        t0 = time.process_time()
        for i in range(n):
            serving.predict(spec, model, serving.to_frame(spec, [records[i % len(records)]]))
        return (time.process_time() - t0) / n


# --- calibration fit (pure) -------------------------------------------------------------


@dataclass(frozen=True)
class Observation:
    """A calibration run reduced to what the fit needs (seconds)."""

    cpu_per_request: float  # of the component under study (model service or gateway)
    client_per_request: float
    p50_c1_s: float  # median latency at concurrency 1
    p99_c1_s: float


def fit_calibration(
    predict_s: Mapping[str, float],
    direct: Mapping[str, Observation],
    micro: Mapping[str, Observation],
    mono: Mapping[str, Observation],
    classes: Mapping[str, sim.RequestClass],
) -> sim.Calibration:
    """Per-request costs from single-kind runs (see ``fleet.simulation.Calibration``).

    - ``server_s``: mean over models of (direct call CPU - predict CPU);
    - ``call_s``, ``gateway_s["micro"]``: least squares of micro gateway CPU per request
      on the number of model calls (a full flight request makes two);
    - ``gateway_s["mono"]``: mean of (mono gateway CPU - predicts of its models);
    - ``hop_s``: from direct calls at concurrency 1, latency not explained by CPU, halved;
    - ``wait_s``: per mode, gateway latency at concurrency 1 not explained by CPU + hops;
    - ``sigma``: spread of direct-call latencies at concurrency 1 (lognormal p99/p50).
    Negative leftovers of noisy measurements are clamped to zero.
    """
    server = statistics.fmean(max(0.0, o.cpu_per_request - predict_s[m]) for m, o in direct.items())
    all_obs = [*direct.values(), *micro.values(), *mono.values()]
    client = statistics.fmean(o.client_per_request for o in all_obs)
    xs = [len(classes[k].models) for k in micro]
    ys = [o.cpu_per_request for o in micro.values()]
    if len(set(xs)) > 1:
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
            (x - mx) ** 2 for x in xs
        )
        call = max(0.0, slope)
    else:
        call = 0.0
    gw_micro = max(0.0, statistics.fmean(y - call * x for x, y in zip(xs, ys, strict=True)))
    gw_mono = max(
        0.0,
        statistics.fmean(
            o.cpu_per_request - sum(predict_s[m] for m in classes[k].models)
            for k, o in mono.items()
        ),
    )
    hop = statistics.fmean(
        max(0.0, (o.p50_c1_s - client - o.cpu_per_request) / 2) for o in direct.values()
    )
    spreads = [math.log(o.p99_c1_s / o.p50_c1_s) / 2.326 for o in direct.values() if o.p50_c1_s > 0]
    sigma = min(1.0, max(0.05, statistics.fmean(spreads))) if spreads else 0.3

    def unexplained_micro(kind: str, o: Observation) -> float:
        calls = max(call + 2 * hop + server + predict_s[m] for m in classes[kind].models)
        return o.p50_c1_s - (client + 2 * hop + gw_micro + calls)

    def unexplained_mono(kind: str, o: Observation) -> float:
        work = gw_mono + sum(predict_s[m] for m in classes[kind].models)
        return o.p50_c1_s - (client + 2 * hop + work)

    wait = {
        "micro": max(0.0, statistics.fmean(unexplained_micro(k, o) for k, o in micro.items())),
        "mono": max(0.0, statistics.fmean(unexplained_mono(k, o) for k, o in mono.items())),
    }
    return sim.Calibration(
        predict_s=dict(predict_s),
        server_s=server,
        call_s=call,
        gateway_s={"micro": gw_micro, "mono": gw_mono},
        client_s=client,
        hop_s=hop,
        wait_s=wait,
        sigma=sigma,
    )


def observation(point_c1: Point, point_busy: Point, component: str) -> Observation:
    return Observation(
        cpu_per_request=point_busy.per_request(component),
        client_per_request=point_busy.client_cpu_s / max(point_busy.level.requests, 1),
        p50_c1_s=point_c1.level.p50_ms / 1000,
        p99_c1_s=point_c1.level.p99_ms / 1000,
    )


# --- validation (pure but for the simulator) --------------------------------------------


def relative_error(predicted: float, measured: float) -> float:
    return abs(predicted - measured) / measured if measured > 0 else float("inf")


def validate(
    cal: sim.Calibration,
    points: Sequence[Point],
    mixes: Mapping[str, Mapping[str, float]],
    cores: int,
    sim_requests: int,
    quantum_s: float | None = None,
) -> dict[str, Any]:
    """The simulator's prediction of every measured profile point, and its errors."""
    model_workers, micro_gw, mono_gw = worker_counts()
    classes = request_classes()
    rows = []
    for p in points:
        dep = sim.measured_deployment(
            p.topology,  # type: ignore[arg-type]
            model_workers,
            micro_gw if p.topology == "micro" else mono_gw,
            cores,
            background=p.background_cores,
        )
        res = sim.simulate_closed(
            dep,
            cal,
            classes,
            mixes[p.profile],
            p.level.concurrency,
            max(sim_requests, p.level.requests),
            quantum_s=quantum_s,
        )
        rows.append(
            {
                "topology": p.topology,
                "profile": p.profile,
                "concurrency": p.level.concurrency,
                "background_cores": round(p.background_cores, 3),
                "measured": {
                    "req_per_s": p.level.req_per_s,
                    "p50_ms": p.level.p50_ms,
                    "p99_ms": p.level.p99_ms,
                    "cores_used": round(p.cores_used, 3),
                },
                "simulated": {
                    "req_per_s": round(res.throughput, 1),
                    "p50_ms": round(res.p50_ms, 2),
                    "p99_ms": round(res.p99_ms, 2),
                    "cores_used": round(res.cores_used, 3),
                },
                "error": {
                    "req_per_s": round(relative_error(res.throughput, p.level.req_per_s), 4),
                    "p50_ms": round(relative_error(res.p50_ms, p.level.p50_ms), 4),
                    "p99_ms": round(relative_error(res.p99_ms, p.level.p99_ms), 4),
                },
            }
        )
    headline = [r["error"][k] for r in rows for k in ("req_per_s", "p50_ms")]
    return {
        "validation_error": round(statistics.fmean(headline), 4) if headline else None,
        "throughput_error": round(statistics.fmean(r["error"]["req_per_s"] for r in rows), 4),
        "p50_error": round(statistics.fmean(r["error"]["p50_ms"] for r in rows), 4),
        "p99_error": round(statistics.fmean(r["error"]["p99_ms"] for r in rows), 4),
        "max_error": round(max(headline), 4) if headline else None,
        "target": TARGET_VALIDATION_ERROR,
        "met": bool(headline) and statistics.fmean(headline) <= TARGET_VALIDATION_ERROR,
        "points": rows,
    }


# --- beyond one machine (simulated) -----------------------------------------------------


def _sweep_one(
    cal: sim.Calibration, profile: str, mix: Mapping[str, float], n: int, cores: int,
    requests: int, net_s: float,
) -> list[dict[str, Any]]:  # fmt: skip
    classes = request_classes()
    deps = {
        "micro": sim.scaled_deployment(n, cores, cal, classes, mix, (), net_s),
        "mono": sim.scaled_deployment(n, cores, cal, classes, mix, list(catalog_models()), net_s),
    }
    bounds = {k: sim.capacity(d, cal, classes, mix) for k, d in deps.items()}
    top = max(bounds.values())
    out = []
    for fraction in LOAD_FRACTIONS:
        rate = fraction * top
        for topology, dep in deps.items():
            res = sim.simulate_open(dep, cal, classes, mix, rate, requests)
            out.append(
                {
                    "profile": profile,
                    "machines": n,
                    "topology": topology,
                    "cores": n * cores,
                    "workers": dep.total_workers,
                    "offered": round(rate, 1),
                    "bound": round(bounds[topology], 1),
                    "throughput": round(res.throughput, 1),
                    "p50_ms": round(res.p50_ms, 2),
                    "p99_ms": round(res.p99_ms, 2),
                    "cores_used": round(res.cores_used, 2),
                }
            )
    return out


def _pool() -> Any:
    """Simulations are independent and CPU-bound: one process per core."""
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(max_workers=os.cpu_count() or 1)


def sweep(
    cal: sim.Calibration,
    mixes: Mapping[str, Mapping[str, float]],
    cores: int,
    machines: Sequence[int],
    requests: int,
    net_s: float = NET_S,
) -> list[dict[str, Any]]:
    """Open-loop runs of micro and mono per profile and machine count, at fractions of the
    larger of the two bottleneck bounds (so both face the same offered loads)."""
    with _pool() as pool:
        jobs = [
            pool.submit(_sweep_one, cal, profile, dict(mix), n, cores, requests, net_s)
            for profile, mix in mixes.items()
            for n in machines
        ]
        return [row for job in jobs for row in job.result()]


def sustained(rows: Sequence[Mapping[str, Any]], budget_ms: float) -> float:
    """Highest offered load kept up with (>= 97 %) within the p99 budget; 0 if none."""
    ok = [
        r["offered"]
        for r in rows
        if r["throughput"] >= 0.97 * r["offered"] and r["p99_ms"] <= budget_ms
    ]
    return max(ok, default=0.0)


def findings(scaling: Sequence[Mapping[str, Any]], budget_ms: float) -> dict[str, dict[str, Any]]:
    """Per profile: capacity of each topology per machine count, and where they cross."""
    out: dict[str, dict[str, Any]] = {}
    for profile in dict.fromkeys(r["profile"] for r in scaling):
        rows = [r for r in scaling if r["profile"] == profile]
        per_n: dict[str, Any] = {}
        for n in sorted({r["machines"] for r in rows}):
            at = {
                t: [r for r in rows if r["machines"] == n and r["topology"] == t]
                for t in TOPOLOGIES
            }
            cap = {t: sustained(at[t], budget_ms) for t in TOPOLOGIES}
            micro_faster = [
                m["offered"]
                for m, o in zip(at["micro"], at["mono"], strict=True)
                if m["p50_ms"] < o["p50_ms"] and m["throughput"] >= 0.97 * m["offered"]
            ]
            per_n[str(n)] = {
                "capacity": cap,
                "capacity_ratio_mono_over_micro": round(cap["mono"] / cap["micro"], 3)
                if cap["micro"]
                else None,
                "micro_lower_p50_at_offered": micro_faster,
                "cores_used_at_lowest_load": {t: at[t][0]["cores_used"] for t in TOPOLOGIES},
            }
        out[profile] = per_n
    return out


def _advice_one(
    cal: sim.Calibration, mix: Mapping[str, float], n: int, cores: int, budget_ms: float,
    requests: int,
) -> list[dict[str, Any]]:  # fmt: skip
    return [
        {
            "layout": s.layout,
            "in_gateway": list(s.local),
            "capacity": round(s.capacity, 1),
            "p99_ms_at_reference_load": round(s.p99_ms_at_load, 2),
        }
        for s in sim.best_layouts(cal, request_classes(), mix, n, cores, budget_ms, requests)
    ]


def advice(
    cal: sim.Calibration,
    mixes: Mapping[str, Mapping[str, float]],
    cores: int,
    machines: Sequence[int],
    budget_ms: float,
    requests: int,
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Per profile and machine count: every consolidation layout, best first."""
    with _pool() as pool:
        jobs = {
            (profile, n): pool.submit(_advice_one, cal, dict(mix), n, cores, budget_ms, requests)
            for profile, mix in mixes.items()
            for n in machines
        }
        out: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for (profile, n), job in jobs.items():
            out.setdefault(profile, {})[str(n)] = job.result()
        return out


# --- the result -------------------------------------------------------------------------


@dataclass
class TopologyBench:
    requests: int
    levels: list[int]
    workers: dict[str, Any]
    profiles: dict[str, dict[str, float]]
    machine: dict[str, str]
    predict_ms: dict[str, float] = field(default_factory=dict)
    measured: dict[str, dict[str, Any]] = field(default_factory=dict)
    calibration_runs: list[dict[str, Any]] = field(default_factory=list)
    memory: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)
    simulation: dict[str, Any] = field(default_factory=dict)
    plots: list[str] = field(default_factory=list)
    json_path: Path | None = None
    markdown_path: Path | None = None

    def summary(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("json_path")
        data.pop("markdown_path")
        return data


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f}"


def markdown(bench: TopologyBench, plots_rel: str) -> str:
    """Tables and findings, all from this run."""
    w = bench.workers
    cal = bench.calibration
    val = bench.simulation.get("validation", {})
    lines = [
        "### Measured on one machine",
        "",
        f"Machine: {bench.machine.get('cpus')} CPUs ({bench.machine.get('cpu_model')}), load "
        f"average {bench.machine.get('loadavg_before')} before the run; run "
        f"{bench.machine.get('when')}.",
        "",
        f"Workers: micro = gateway {w['micro']['gateway']} + "
        + " + ".join(f"{m} {c}" for m, c in w["micro"]["models"].items())
        + f" = {w['micro']['total']}; mono = one process with {w['mono']['total']} workers, "
        "each holding every model. "
        f"{bench.requests} measured requests per point after a warm-up; load from a separate "
        "closed-loop process on the same machine; an answer with any per-model error is an error.",
        "",
        "Profiles (shares of requests by kind; `flight` = one flight record for both flight "
        "models, called together):",
        "",
        *(
            f"- {p}: " + ", ".join(f"{k} {v:.0%}" for k, v in mix.items())
            for p, mix in bench.profiles.items()
        ),
        "",
        "| profile | topology | clients | req/s | p50 ms | p95 ms | p99 ms | errors | cores used |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for profile, per_topo in bench.measured.items():
        for topo, levels in per_topo.items():
            for lv in levels:
                lines.append(
                    f"| {profile} | {topo} | {lv['concurrency']} | {lv['req_per_s']:.1f} | "
                    f"{lv['p50_ms']:.2f} | {lv['p95_ms']:.2f} | {lv['p99_ms']:.2f} | "
                    f"{lv['errors']} | {lv['cores_used']:.2f} |"
                    + (" truncated" if lv["truncated"] else "")
                )
    lines += [
        "",
        "Memory after the runs (process trees: the BentoML supervisor and its workers):",
        "",
        "| topology | component | processes | RSS MB | PSS MB |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for topo, comps in bench.memory.items():
        for name, mem in comps.items():
            lines.append(
                f"| {topo} | {name} | {mem['processes']} | {mem['rss_mb']:.0f} | "
                f"{mem['pss_mb']:.0f} |"
            )
        total = {k: sum(c[k] for c in comps.values()) for k in ("rss_mb", "pss_mb")}
        lines.append(f"| {topo} | **all** | | {total['rss_mb']:.0f} | {total['pss_mb']:.0f} |")
    if cal:
        lines += [
            "",
            "### Calibration (CPU per request, ms)",
            "",
            "| cost | ms |",
            "| --- | ---: |",
            *(f"| predict in process: {m} | {_ms(v)} |" for m, v in cal["predict_s"].items()),
            f"| model service per call, on top of the predict | {_ms(cal['server_s'])} |",
            f"| gateway per remote call (HTTP client) | {_ms(cal['call_s'])} |",
            f"| gateway per request, micro | {_ms(cal['gateway_s']['micro'])} |",
            f"| gateway per request, mono | {_ms(cal['gateway_s']['mono'])} |",
            f"| load generator per request | {_ms(cal['client_s'])} |",
            f"| one-way hop delay (not CPU) | {_ms(cal['hop_s'])} |",
            f"| other wait per request, micro / mono | {_ms(cal['wait_s']['micro'])} / "
            f"{_ms(cal['wait_s']['mono'])} |",
            f"| burst spread (lognormal sigma) | {cal['sigma']:.2f} |",
        ]
    if val:
        lines += [
            "",
            "### Simulator against the measurements",
            "",
            f"Validation error (mean relative error of throughput and p50 over "
            f"{len(val['points'])} points): **{val['validation_error']:.1%}** (target <= "
            f"{TARGET_VALIDATION_ERROR:.0%}: {'met' if val['met'] else '**MISSED**'}); "
            f"throughput {val['throughput_error']:.1%}, p50 {val['p50_error']:.1%}, p99 "
            f"{val['p99_error']:.1%}, worst single figure {val['max_error']:.1%}.",
            "",
            "| profile | topology | clients | req/s meas. / sim. | p50 ms meas. / sim. | "
            "p99 ms meas. / sim. |",
            "| --- | --- | ---: | ---: | ---: | ---: |",
            *(
                f"| {r['profile']} | {r['topology']} | {r['concurrency']} | "
                f"{r['measured']['req_per_s']:.0f} / {r['simulated']['req_per_s']:.0f} | "
                f"{r['measured']['p50_ms']:.1f} / {r['simulated']['p50_ms']:.1f} | "
                f"{r['measured']['p99_ms']:.1f} / {r['simulated']['p99_ms']:.1f} |"
                for r in val["points"]
            ),
        ]
    find = bench.simulation.get("findings", {})
    if find:
        budget = bench.simulation["p99_budget_ms"]
        cores = bench.simulation["cores_per_machine"]
        lines += [
            "",
            "### Simulated beyond one machine",
            "",
            f"Machines of {cores} cores, one worker per core in both topologies; micro "
            "gives each component workers in proportion to its CPU demand under the profile "
            f"(per-model scaling), mono a replica of the whole process per machine; "
            f"{bench.simulation['net_ms']:.2f} ms one way between machines; clients outside. "
            f"Capacity = highest offered load (of the sweep's grid) served in full with p99 "
            f"<= {budget:.0f} ms.",
            "",
            "| profile | machines | capacity micro req/s | capacity mono req/s | mono / micro | "
            "cores used at the lowest load, micro / mono |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for profile, per_n in find.items():
            for n, f in per_n.items():
                ratio = f["capacity_ratio_mono_over_micro"]
                cu = f["cores_used_at_lowest_load"]
                lines.append(
                    f"| {profile} | {n} | {f['capacity']['micro']:.0f} | "
                    f"{f['capacity']['mono']:.0f} | {'-' if ratio is None else f'{ratio:.2f}'} | "
                    f"{cu['micro']:.2f} / {cu['mono']:.2f} |"
                )
    adv = bench.simulation.get("advice", {})
    if adv:
        lines += [
            "",
            "### Which models to consolidate (into the gateway process)",
            "",
            "Every layout from micro (none in the gateway) to mono (all), simulated per "
            f"profile; best first by capacity with p99 <= {bench.simulation['p99_budget_ms']:.0f} "
            "ms, ties by p99 at a common reference load.",
            "",
            "| profile | machines | best layout | its capacity req/s | micro | mono |",
            "| --- | ---: | --- | ---: | ---: | ---: |",
        ]
        for profile, per_n in adv.items():
            for n, ranked in per_n.items():
                by = {r["layout"]: r for r in ranked}
                lines.append(
                    f"| {profile} | {n} | {ranked[0]['layout']} | {ranked[0]['capacity']:.0f} | "
                    f"{by['micro']['capacity']:.0f} | {by['mono']['capacity']:.0f} |"
                )
    lines += ["", "### Findings (generated from the numbers above)", "", *conclusions(bench)]
    if bench.plots:
        lines += ["", "### Plots", ""]
        lines += [f"![{Path(p).stem}]({plots_rel}/{Path(p).name})" for p in bench.plots]
    return "\n".join(lines)


def conclusions(bench: TopologyBench) -> list[str]:
    """Plain sentences stating who won where, derived from the run's numbers only."""
    out = []
    for profile, per_topo in bench.measured.items():
        micro = {lv["concurrency"]: lv for lv in per_topo.get("micro", [])}
        mono = {lv["concurrency"]: lv for lv in per_topo.get("mono", [])}
        parts = []
        for c in sorted(set(micro) & set(mono)):
            a, b = micro[c], mono[c]
            faster = "mono" if b["p50_ms"] < a["p50_ms"] else "micro"
            more = "mono" if b["req_per_s"] > a["req_per_s"] else "micro"
            parts.append(
                f"{c} client(s): {more} served more ({max(a['req_per_s'], b['req_per_s']):.0f} vs "
                f"{min(a['req_per_s'], b['req_per_s']):.0f} req/s), {faster} answered faster "
                f"(p50 {min(a['p50_ms'], b['p50_ms']):.1f} vs "
                f"{max(a['p50_ms'], b['p50_ms']):.1f} ms)"
            )
        if parts:
            out.append(f"- Measured, {profile}: " + "; ".join(parts) + ".")
    mem = bench.memory
    if "micro" in mem and "mono" in mem:
        pm = {t: sum(c["pss_mb"] for c in mem[t].values()) for t in mem}
        out.append(
            f"- Memory: micro {pm['micro']:.0f} MB PSS in all, mono {pm['mono']:.0f} MB "
            f"({pm['micro'] / pm['mono']:.1f}x)."
            if pm["mono"]
            else "- Memory: not measured."
        )
    val = bench.simulation.get("validation")
    if val:
        out.append(
            f"- The simulator reproduces the measured points with a mean error of "
            f"{val['validation_error']:.1%} (throughput {val['throughput_error']:.1%}, p50 "
            f"{val['p50_error']:.1%}, p99 {val['p99_error']:.1%})"
            + (
                "."
                if val["met"]
                else f": above the {TARGET_VALIDATION_ERROR:.0%} target, so "
                "read its extrapolations as trends, not figures."
            )
        )
    for profile, per_n in bench.simulation.get("findings", {}).items():
        span = f"{min(per_n, key=int)}..{max(per_n, key=int)} machines"
        ratios = {n: f["capacity_ratio_mono_over_micro"] for n, f in per_n.items()}
        known = {n: r for n, r in ratios.items() if r is not None}
        if known:
            lo, hi = min(known.values()), max(known.values())
            winner = "mono" if lo > 1 else "micro" if hi < 1 else "neither throughout"
            out.append(
                f"- Simulated, {profile}, {span}: capacity mono / micro {lo:.2f}..{hi:.2f}: "
                f"{winner} carries more on the same cores."
            )
        else:
            out.append(
                f"- Simulated, {profile}, {span}: micro kept p99 within the budget at no swept "
                "load, so no capacity ratio."
            )
        crossings = {
            n: f["micro_lower_p50_at_offered"]
            for n, f in per_n.items()
            if f["micro_lower_p50_at_offered"]
        }
        if crossings:
            out.append(
                f"  {profile}: micro's p50 is the lower one at "
                + "; ".join(
                    f"{n} machine(s), offered " + ", ".join(f"{x:.0f}" for x in loads) + " req/s"
                    for n, loads in crossings.items()
                )
                + "; at every other swept load mono's is."
            )
        else:
            out.append(f"  {profile}: mono has the lower p50 at every swept load and size.")
    for profile, per_n in bench.simulation.get("advice", {}).items():
        picks = {n: ranked[0]["layout"] for n, ranked in per_n.items()}
        out.append(
            f"- Consolidation, {profile}: "
            + "; ".join(f"{n} machine(s): {layout}" for n, layout in picks.items())
            + "."
        )
    return out


def write_docs_section(doc: Path, section: str) -> None:
    """Replace the generated part of ``doc`` (between the markers), keeping the rest."""
    note = "<!-- written by `fleet bench topology`; edits here are overwritten -->"
    block = f"{BEGIN}\n{note}\n\n{section}\n\n{END}"
    text = doc.read_text() if doc.exists() else f"# Topology study\n\n{BEGIN}\n{END}\n"
    if BEGIN in text and END in text:
        text = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)


def plot(bench: TopologyBench, out: Path) -> list[Path]:
    """PNG figures of the measured points, the validation and the scaling sweep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    colours = {"micro": "tab:blue", "mono": "tab:orange"}
    if bench.measured:
        fig, axes = plt.subplots(
            2, len(bench.measured), figsize=(4 * len(bench.measured), 6), squeeze=False
        )
        for i, (profile, per_topo) in enumerate(bench.measured.items()):
            for topo, levels in per_topo.items():
                cs = [lv["concurrency"] for lv in levels]
                axes[0][i].plot(
                    cs, [lv["req_per_s"] for lv in levels], "o-", color=colours[topo], label=topo
                )
                axes[1][i].plot(
                    cs,
                    [lv["p99_ms"] for lv in levels],
                    "o-",
                    color=colours[topo],
                    label=f"{topo} p99",
                )
                axes[1][i].plot(
                    cs,
                    [lv["p50_ms"] for lv in levels],
                    "o--",
                    color=colours[topo],
                    label=f"{topo} p50",
                )
            axes[0][i].set_title(f"measured: {profile}")
            axes[0][i].set_ylabel("req/s")
            axes[1][i].set_ylabel("latency ms")
            axes[1][i].set_xlabel("concurrent clients")
            for ax in (axes[0][i], axes[1][i]):
                ax.set_xscale("log", base=2)
                ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(out / "measured.png")
        fig.savefig(paths[-1], dpi=90)
        plt.close(fig)
    val = bench.simulation.get("validation")
    if val:
        fig, axes = plt.subplots(1, 2, figsize=(9, 4))
        for ax, key, label in ((axes[0], "req_per_s", "req/s"), (axes[1], "p50_ms", "p50 ms")):
            for r in val["points"]:
                ax.scatter(
                    r["measured"][key], r["simulated"][key], color=colours[r["topology"]], s=18
                )
            hi = max(max(r["measured"][key], r["simulated"][key]) for r in val["points"]) * 1.1
            ax.plot([0, hi], [0, hi], "k-", lw=0.8)
            ax.fill_between([0, hi], [0, hi * 0.85], [0, hi * 1.15], color="grey", alpha=0.2)
            ax.set_xlabel(f"measured {label}")
            ax.set_ylabel(f"simulated {label}")
        axes[0].set_title(f"validation: mean error {val['validation_error']:.1%} (band: 15 %)")
        fig.tight_layout()
        paths.append(out / "validation.png")
        fig.savefig(paths[-1], dpi=90)
        plt.close(fig)
    scaling = bench.simulation.get("scaling")
    if scaling:
        profiles_ = list(dict.fromkeys(r["profile"] for r in scaling))
        shown = sorted({r["machines"] for r in scaling})
        shown = [shown[0], shown[len(shown) // 2], shown[-1]] if len(shown) > 2 else shown
        for profile in profiles_:
            fig, axes = plt.subplots(3, len(shown), figsize=(4 * len(shown), 9), squeeze=False)
            for j, n in enumerate(shown):
                for topo in TOPOLOGIES:
                    rows = [
                        r
                        for r in scaling
                        if r["profile"] == profile and r["machines"] == n and r["topology"] == topo
                    ]
                    x = [r["offered"] for r in rows]
                    axes[0][j].plot(
                        x, [r["throughput"] for r in rows], "o-", color=colours[topo], label=topo
                    )
                    axes[1][j].plot(
                        x,
                        [r["p99_ms"] for r in rows],
                        "o-",
                        color=colours[topo],
                        label=f"{topo} p99",
                    )
                    axes[1][j].plot(
                        x,
                        [r["p50_ms"] for r in rows],
                        "o--",
                        color=colours[topo],
                        label=f"{topo} p50",
                    )
                    axes[2][j].plot(
                        x, [r["cores_used"] for r in rows], "o-", color=colours[topo], label=topo
                    )
                axes[0][j].set_title(f"{profile}: {n} machine(s)")
                axes[0][j].set_ylabel("throughput req/s")
                axes[1][j].set_ylabel("latency ms")
                axes[1][j].set_yscale("symlog", linthresh=1.0)
                axes[2][j].set_ylabel("cores used")
                axes[2][j].set_xlabel("offered req/s")
                for i in range(3):
                    axes[i][j].legend(fontsize=7)
            fig.tight_layout()
            paths.append(out / f"scaling-{profile}.png")
            fig.savefig(paths[-1], dpi=80)
            plt.close(fig)
        find = bench.simulation.get("findings", {})
        fig, ax = plt.subplots(figsize=(6, 4))
        styles = dict(zip(find, ("-", "--", ":", "-."), strict=False))
        for profile, per_n in find.items():
            ns = [int(n) for n in per_n]
            for topo in TOPOLOGIES:
                ax.plot(
                    ns,
                    [per_n[str(n)]["capacity"][topo] for n in ns],
                    marker="o",
                    linestyle=styles[profile],
                    color=colours[topo],
                    label=f"{profile} {topo}",
                )
        ax.set_xscale("log", base=2)
        # zero capacity (nothing within the budget) has no place on a log axis
        ax.set_yscale("symlog", linthresh=1.0)
        ax.set_xlabel("machines")
        ax.set_ylabel(f"capacity req/s (p99 <= {bench.simulation['p99_budget_ms']:.0f} ms)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(out / "capacity.png")
        fig.savefig(paths[-1], dpi=90)
        plt.close(fig)
    return paths


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
) -> TopologyBench:
    """Measure, calibrate, validate, simulate; write JSON, markdown, plots and the doc.

    ``only_profiles`` and ``calibration_level=None`` (calibrate at one client only) are
    for smoke runs.
    """
    from bench.serve import ensure_champion, machine_facts, request_records
    from bentos import store

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
    for topology in TOPOLOGIES:
        say(f"starting {topology} (logs under {scratch.serving_dir / 'logs'})")
        with serving(scratch, topology, tags) as fleet:
            gw = f"{fleet.gateway_url}/predict"
            # first requests pay for lazy imports and caches in every worker: not measured
            warm = mixed_bodies({"flight": 1, "review_sentiment": 1}, records)
            count = min(20 * mono_gw, max(10, requests))
            fleet.run("warm-up", "gateway", gw, warm, 4, count, 0, time_bound_s, **ok_gateway)
            fleet.measure_idle()

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
            for kind in classes:
                say(f"calibration: {kind} requests through the {topology} gateway")
                bodies = [body(kind, records, i) for i in range(200)]
                q, b = pair("gateway", gw, bodies, ok_gateway, f"calibration:{kind}")
                by_mode[topology][kind] = observation(q, b, "gateway")
            for profile, mix in mixes.items():
                bodies = mixed_bodies(mix, records)
                for level in levels:
                    say(f"{topology}, {profile}: {level} client(s), {requests} requests")
                    point = fleet.run(
                        profile,
                        "gateway",
                        gw,
                        bodies,
                        level,
                        requests,
                        warmup,
                        time_bound_s,
                        **ok_gateway,
                    )
                    profile_points.append(point)
                    bench.measured.setdefault(profile, {}).setdefault(topology, []).append(
                        {
                            **asdict(point.level),
                            "cores_used": round(point.cores_used, 3),
                            "cpu_ms_per_request": point.summary()["cpu_ms_per_request"],
                        }
                    )
            bench.memory[topology] = fleet.memory()

    say("fitting the calibration; validating the simulator on the measured points")
    cal = fit_calibration(predict_s, direct, by_mode["micro"], by_mode["mono"], classes)
    bench.calibration = asdict(cal)
    bench.simulation = {
        "cores_per_machine": cores,
        "net_ms": NET_S * 1000,
        "p99_budget_ms": p99_budget_ms,
        "validation": validate(cal, profile_points, mixes, cores, sim_requests),
    }
    say(
        f"validation error {bench.simulation['validation']['validation_error']:.1%}; "
        f"sweeping 1..{max(machines)} machines"
    )
    scaling = sweep(cal, mixes, cores, machines, sim_requests)
    bench.simulation["scaling"] = scaling
    bench.simulation["findings"] = findings(scaling, p99_budget_ms)
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
