"""The calibration fit, the simulator's validation against measured points, and the
simulated sweeps beyond one machine (pure, but for the simulator)."""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bench.topology.config import (
    LOAD_FRACTIONS,
    NET_S,
    TARGET_P99_ERROR,
    TARGET_VALIDATION_ERROR,
    TOPOLOGIES,
)
from bench.topology.measure import Point, worker_counts
from bench.topology.traffic import request_classes
from fleet import simulation as sim
from fleet.catalog import models as catalog_models

# --- calibration fit (pure) -------------------------------------------------------------


@dataclass(frozen=True)
class Observation:
    """A calibration run reduced to what the fit needs (seconds)."""

    cpu_per_request: float  # of the component under study (model service or gateway)
    client_per_request: float
    cpu_c1_per_request: float  # the same two at concurrency 1, where every request wakes
    client_c1_per_request: float
    p50_c1_s: float  # median latency at concurrency 1
    p99_c1_s: float


def _per_call_fit(calls: Sequence[int], cpu: Sequence[float]) -> tuple[float, float]:
    """Least squares of CPU per request on calls per request: (base, cost per call),
    both clamped at zero; with one call count only, all of it is base."""
    if len(set(calls)) < 2:
        return max(0.0, statistics.fmean(cpu)), 0.0
    mx, my = statistics.fmean(calls), statistics.fmean(cpu)
    slope = sum((x - mx) * (y - my) for x, y in zip(calls, cpu, strict=True)) / sum(
        (x - mx) ** 2 for x in calls
    )
    slope = max(0.0, slope)
    return max(0.0, statistics.fmean(y - slope * x for x, y in zip(calls, cpu, strict=True))), slope


def fit_calibration(
    predict_s: Mapping[str, float],
    direct: Mapping[str, Observation],
    micro: Mapping[str, Observation],
    mono: Mapping[str, Observation],
    classes: Mapping[str, sim.RequestClass],
    wake: tuple[float, float] = (0.0, sim.WAKE_RAMP_S),
) -> sim.Calibration:
    """Per-request costs from single-kind runs (see ``fleet.simulation.Calibration``).

    - ``server_s``: mean over models of (direct call CPU - predict CPU);
    - ``call_s``, ``gateway_s["micro"]``: least squares of micro gateway CPU per request
      on the number of model calls (a full flight request makes two);
    - ``local_s``, ``gateway_s["mono"]``: the same fit of mono gateway CPU per request,
      less the predicts of its models;
    - ``hop_s``: from direct calls at concurrency 1, latency not explained by CPU, halved;
    - ``wait_s``: per mode, gateway latency at concurrency 1 not explained by CPU + hops;
    - ``sigma``: spread of direct-call latencies at concurrency 1 (lognormal p99/p50);
    - ``wake``: ``(wake_s, wake_ramp_s)`` as :func:`fit_wake` found them; the costs
      above come from the busy level, where a process rarely sleeps between requests.
    Negative leftovers of noisy measurements are clamped to zero.
    """
    server = statistics.fmean(max(0.0, o.cpu_per_request - predict_s[m]) for m, o in direct.items())
    all_obs = [*direct.values(), *micro.values(), *mono.values()]
    client = statistics.fmean(o.client_per_request for o in all_obs)
    # gateway CPU per request against the number of models it calls: a flight request
    # calls two, the others one; the slope is the cost per call, remote or in process
    gw_micro, call = _per_call_fit(
        [len(classes[k].models) for k in micro], [o.cpu_per_request for o in micro.values()]
    )
    gw_mono, local = _per_call_fit(
        [len(classes[k].models) for k in mono],
        [o.cpu_per_request - sum(predict_s[m] for m in classes[k].models)
         for k, o in mono.items()],
    )  # fmt: skip
    client_c1 = statistics.fmean(o.client_c1_per_request for o in all_obs)
    # one client: every part pays its wake-up, so latency is measured against c1 costs
    hop = statistics.fmean(
        max(0.0, (o.p50_c1_s - client_c1 - o.cpu_c1_per_request) / 2) for o in direct.values()
    )
    spreads = [math.log(o.p99_c1_s / o.p50_c1_s) / 2.326 for o in direct.values() if o.p50_c1_s > 0]
    sigma = min(1.0, max(0.05, statistics.fmean(spreads))) if spreads else 0.3

    def service_c1(model: str, latency: float) -> float:
        """A model service's CPU per call at one client: it slept the rest of the request."""
        work = server + predict_s[model]
        return work + wake[0] * min(1.0, max(0.0, latency - work) / max(wake[1], 1e-9))

    def unexplained_micro(kind: str, o: Observation) -> float:
        calls = max(2 * hop + service_c1(m, o.p50_c1_s) for m in classes[kind].models)
        return o.p50_c1_s - (client_c1 + 2 * hop + o.cpu_c1_per_request + calls)

    def unexplained_mono(kind: str, o: Observation) -> float:
        return o.p50_c1_s - (client_c1 + 2 * hop + o.cpu_c1_per_request)

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
        wake_s=wake[0],
        wake_ramp_s=wake[1],
        local_s=local,
    )


def fit_wake(curve: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """``(wake_s, wake_ramp_s)`` from CPU per call after pauses (``(pause_s, cpu_s)``, the
    pauses in ascending order): the extra cost after the longest pause over the
    back-to-back cost, and the ramp (1..100 ms) that fits the pauses between best."""
    if len(curve) < 2:
        return 0.0, sim.WAKE_RAMP_S
    base, top = curve[0][1], curve[-1][1]
    wake = max(0.0, top - base)
    if wake <= 0:
        return 0.0, sim.WAKE_RAMP_S

    def misfit(ramp: float) -> float:
        return sum((cpu - base - wake * min(1.0, pause / ramp)) ** 2 for pause, cpu in curve)

    ramp = min((k / 1000 for k in range(1, 101)), key=misfit)
    return wake, ramp


def observation(point_c1: Point, point_busy: Point, component: str) -> Observation:
    return Observation(
        cpu_per_request=point_busy.per_request(component),
        client_per_request=point_busy.client_cpu_s / max(point_busy.level.requests, 1),
        cpu_c1_per_request=point_c1.per_request(component),
        client_c1_per_request=point_c1.client_cpu_s / max(point_c1.level.requests, 1),
        p50_c1_s=point_c1.level.p50_ms / 1000,
        p99_c1_s=point_c1.level.p99_ms / 1000,
    )


# --- validation (pure but for the simulator) --------------------------------------------


def relative_error(predicted: float, measured: float) -> float:
    return abs(predicted - measured) / measured if measured > 0 else float("inf")


METRICS = ("req_per_s", "p50_ms", "p99_ms")


def _point_key(p: Point) -> tuple[str, str, int]:
    return (p.profile, p.topology, p.level.concurrency)


def repeatability(first: Sequence[Point], second: Sequence[Point]) -> dict[str, Any]:
    """How far a second measurement of each point falls from the first, in the terms of
    :func:`validate`'s errors: what a simulator that knew each point's true mean would
    still miss one measurement by (on average about 1/sqrt(2) of this)."""
    again = {_point_key(p): p for p in second}
    pairs = [(a, again[_point_key(a)]) for a in first if _point_key(a) in again]
    if not pairs:
        return {}
    rows = [
        {
            "profile": a.profile,
            "topology": a.topology,
            "concurrency": a.level.concurrency,
            "first": {m: getattr(a.level, m) for m in METRICS},
            "second": {m: getattr(b.level, m) for m in METRICS},
            "difference": {
                m: round(relative_error(getattr(b.level, m), getattr(a.level, m)), 4)
                for m in METRICS
            },
        }
        for a, b in pairs
    ]
    mean = {m: round(statistics.fmean(r["difference"][m] for r in rows), 4) for m in METRICS}
    return {
        "difference": round((mean["req_per_s"] + mean["p50_ms"]) / 2, 4),  # as the headline
        "throughput_difference": mean["req_per_s"],
        "p50_difference": mean["p50_ms"],
        "p99_difference": mean["p99_ms"],
        "points": rows,
    }


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
            # keep-alive clients stay on the worker that accepted them, gateway and model
            # services alike (a gateway worker predicts on its event loop: one core)
            spread=p.connections,
        )
        rows.append(
            {
                "topology": p.topology,
                "profile": p.profile,
                "concurrency": p.level.concurrency,
                "background_cores": round(p.background_cores, 3),
                "connections": p.connections or {},
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
    p99 = [r["error"]["p99_ms"] for r in rows]
    return {
        "validation_error": round(statistics.fmean(headline), 4) if headline else None,
        "throughput_error": round(statistics.fmean(r["error"]["req_per_s"] for r in rows), 4),
        "p50_error": round(statistics.fmean(r["error"]["p50_ms"] for r in rows), 4),
        "p99_error": round(statistics.fmean(p99), 4) if p99 else None,
        "max_error": round(max(headline), 4) if headline else None,
        "target": TARGET_VALIDATION_ERROR,
        "p99_target": TARGET_P99_ERROR,
        "met": bool(headline) and statistics.fmean(headline) <= TARGET_VALIDATION_ERROR,
        "p99_met": bool(p99) and statistics.fmean(p99) <= TARGET_P99_ERROR,
        # a bias or noise: at how many points the simulated tail is the shorter one
        "p99_below_measured": sum(r["simulated"]["p99_ms"] < r["measured"]["p99_ms"] for r in rows),
        "points": rows,
    }


# --- beyond one machine (simulated) -----------------------------------------------------


def _sweep_one(
    cal: sim.Calibration, profile: str, mix: Mapping[str, float], n: int, cores: int,
    requests: int, net_s: float, budget_ms: float,
) -> list[dict[str, Any]]:  # fmt: skip
    classes = request_classes()
    deps = {
        "micro": sim.scaled_deployment(n, cores, cal, classes, mix, (), net_s),
        "mono": sim.scaled_deployment(n, cores, cal, classes, mix, list(catalog_models()), net_s),
    }
    bounds = {k: sim.capacity(d, cal, classes, mix) for k, d in deps.items()}
    # a bigger fleet's run of `requests` lasts a fraction of a second, too short for a
    # steady p99: one unlucky step of the bisection then halves the capacity found
    search = requests * min(4, max(1, n // 2))
    sustained = {
        k: sim.sustained_rate(d, cal, classes, mix, budget_ms, search, bound=bounds[k])
        for k, d in deps.items()
    }
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
                    "capacity": round(sustained[topology], 1),
                    "throughput": round(res.throughput, 1),
                    "keeps_up": res.keeps_up(),
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
    budget_ms: float,
    net_s: float = NET_S,
) -> list[dict[str, Any]]:
    """Open-loop runs of micro and mono per profile and machine count, at fractions of the
    larger of the two bottleneck bounds (so both face the same offered loads); each row
    also carries its topology's capacity there (``sim.sustained_rate`` within
    ``budget_ms``)."""
    with _pool() as pool:
        jobs = [
            pool.submit(_sweep_one, cal, profile, dict(mix), n, cores, requests, net_s, budget_ms)
            for profile, mix in mixes.items()
            for n in machines
        ]
        return [row for job in jobs for row in job.result()]


def findings(scaling: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
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
            cap = {t: at[t][0]["capacity"] for t in TOPOLOGIES}
            micro_faster = [
                m["offered"]
                for m, o in zip(at["micro"], at["mono"], strict=True)
                if m["p50_ms"] < o["p50_ms"] and m["keeps_up"]
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


# --- the hybrid plan and its check (pure) ------------------------------------------------


def hybrid_plan(
    calibration: sim.Calibration,
    mix: Mapping[str, float],
    rate: float,
    cores: int,
    total_workers: int,
) -> tuple[Any, Any]:
    """What ``fleet serve --placement auto`` chooses for traffic of ``mix`` at ``rate``
    requests/s on ``cores``, and the hybrid plan to measure: auto's own if it is one,
    else the design's (the mix's busiest model on a service of its own with its spec's
    workers, the rest in the gateway). Both get the same Python workers in all as micro
    and mono: the gateway gets what the dedicated models leave."""
    from dataclasses import replace
    from datetime import UTC, datetime, timedelta

    from fleet import placement

    classes = request_classes()
    shares = sim.normalise(mix)
    counts = {classes[kind].models: max(1, round(1000 * s)) for kind, s in shares.items()}
    start = datetime(2013, 1, 1, tzinfo=UTC)
    n = sum(counts.values())
    traffic = placement.Traffic(start, start + timedelta(seconds=n / rate), n, counts)
    models = list(catalog_models())
    chosen = placement.auto(models, traffic, calibration, cores)
    chosen = replace(chosen, source=f"auto, {rate:.0f} req/s")
    if chosen.topology == "hybrid":
        plan = chosen
    else:
        calls = traffic.model_rates()
        hot = max(models, key=lambda m: calls.get(m, 0.0))
        workers = catalog_models()[hot].serving.workers
        placed = {m: placement.ModelPlacement("shared") for m in models}
        placed[hot] = placement.ModelPlacement("dedicated", workers, "the busiest model")
        plan = placement.Placement(placed, source="the design: the busiest model dedicated")
    left = max(1, total_workers - sum(plan.dedicated.values()))
    return chosen, replace(plan, gateway_workers=left)


def per_core(measured: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    """Requests per busy core of each measured topology per client level, and whether
    hybrid serves at least as many as the better of micro and mono at every level."""
    rows = []
    by_level: dict[int, dict[str, float]] = {}
    for topology, levels in measured.items():
        for lv in levels:
            cores = lv["cores_used"]
            value = lv["req_per_s"] / cores if cores > 0 else 0.0
            by_level.setdefault(lv["concurrency"], {})[topology] = round(value, 1)
    met = None
    for level, values in sorted(by_level.items()):
        best = max(values.get("micro", 0.0), values.get("mono", 0.0))
        ok = values["hybrid"] >= best if "hybrid" in values else None
        rows.append({"concurrency": level, **values, "hybrid_met": ok})
        if ok is not None:
            met = ok if met is None else met and ok
    return {"rows": rows, "met": met}
