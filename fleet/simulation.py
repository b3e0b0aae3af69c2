"""A discrete-event model of the fleet's serving topologies (simpy), calibrated by measurement.

What it models, and nothing more:

- **machines** with a number of cores; a CPU burst holds one core (first come, first
  served, optionally cut in time slices so a long burst cannot hold a core for long);
- **processes** on a machine, each with a number of workers. A worker is one Python
  interpreter: it runs one CPU burst at a time (the GIL), and while a request waits on
  I/O (a model call) the worker serves other requests (asyncio). Bursts queue for a
  free worker of their process, then for a core of the machine;
- the **gateway**: per request a burst before and after its model calls; each needed
  model is either predicted in the gateway's own process (a burst of the model's
  predict time) or called over HTTP on a model process (client cost in the gateway,
  a hop each way, the model process's server cost + predict time). A flight request
  calls its models concurrently and answers when the last one has answered;
- **hops**: a one-way delay on loopback, plus a network delay between machines;
- **load**: closed loop (N clients, each sends its next request when the answer
  arrives, as ``bench.load`` does) or open loop (Poisson arrivals at an offered rate).

``mono`` is a gateway hosting every model; ``micro`` a gateway hosting none, with one
process per model. Any subset in between (the models consolidated into the gateway) is a
layout as well, which is how :func:`best_layouts` answers "which models to consolidate".

No I/O and no import of the serving code: everything comes in as numbers
(:class:`Calibration`), so the model can be tested and swept on its own.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import combinations
from typing import Literal

import simpy

GATEWAY = "gateway"
BACKGROUND_SLICE_S = 0.004  # a scheduler time slice of another tenant's work
CLIENT = "client"
WAKE_RAMP_S = 0.02  # the wake-up ramp when none was measured (no wake-up cost then)
KEEP_UP = 0.97  # an open-loop run keeps up if it serves this share of what arrived
Mode = Literal["micro", "mono"]


@dataclass(frozen=True)
class RequestClass:
    """One kind of gateway request: its name and the models it needs (called together)."""

    name: str
    models: tuple[str, ...]


@dataclass(frozen=True)
class Calibration:
    """Per-request costs (seconds) measured on one machine; see ``bench.topology``.

    - ``predict_s``: one record through ``to_frame`` + ``predict`` in process, per model;
    - ``server_s``: what a model service adds per call on top of the predict (HTTP
      server, request validation, answer);
    - ``call_s``: what the gateway spends per remote call (HTTP client, JSON);
    - ``local_s``: what the gateway spends per in-process model call on top of the
      predict (the prediction log row, and the hand-off to a thread for a slow one);
    - ``gateway_s``: the gateway's own work per request (validation, routing, combining,
      the result store), by mode: with remote calls (micro) or all in process (mono);
    - ``client_s``: the load generator per request (it shares the machine when measured);
    - ``hop_s``: one-way delay of a loopback HTTP hop that is not CPU of either side;
    - ``wait_s``: non-CPU wait per gateway request by mode (thread hand-offs, event loop
      wake-ups) that the CPU accounting does not show;
    - ``wake_s``, ``wake_ramp_s``: extra CPU of a burst that finds its model service
      asleep, growing with how long it slept: ``wake_s * min(1, slept / wake_ramp_s)``.
      Caches and the scheduler go cold while a process sleeps: a model service measured
      here spends 2.3 ms of CPU per call back to back and 4.8 ms after a 20 ms pause. A
      rarely called service pays it on every call, a busy one almost never. The
      gateway's costs are calibrated at its own operating point, wake-ups included;
    - ``sigma``: spread of a request's CPU (lognormal, this sigma, the mean kept), drawn
      once per request and applied to all its bursts: a slow request is slow in every
      part (a cold cache, a preemption). Measured at one client, a gateway request's
      p99/p50 (2.0-3.1) is as wide as a direct call's (2.7), not narrower, as
      independent draws per burst would make it. The load generator draws its own.
    """

    predict_s: dict[str, float]
    server_s: float
    call_s: float
    gateway_s: dict[str, float]
    client_s: float
    hop_s: float
    wait_s: dict[str, float] = field(default_factory=lambda: {"micro": 0.0, "mono": 0.0})
    sigma: float = 0.3
    wake_s: float = 0.0
    wake_ramp_s: float = WAKE_RAMP_S
    local_s: float = 0.0

    def local_cpu(self, model: str) -> float:
        """CPU of one in-process call of ``model`` in the gateway."""
        return self.local_s + self.predict_s[model]

    def model_call_cpu(self, model: str) -> float:
        """CPU of one remote call of ``model``: both sides of the hop and the predict."""
        return self.call_s + self.server_s + self.predict_s[model]


@dataclass(frozen=True)
class Proc:
    """A process: where it runs, how many workers, which models it hosts."""

    name: str
    machine: int
    workers: int
    models: frozenset[str]
    gateway: bool = False


@dataclass(frozen=True)
class Deployment:
    """Machines (cores each) and the processes on them.

    ``client_machine`` is where the load generator runs (its CPU competes with the
    services, as on the measuring machine); None for clients outside the cluster.
    ``net_s`` is the extra one-way delay of a hop between two machines.
    """

    cores: tuple[int, ...]
    procs: tuple[Proc, ...]
    client_machine: int | None = None
    net_s: float = 0.0
    # cores kept busy by other work, per machine (a shared machine, measured)
    background: tuple[float, ...] = ()

    @property
    def total_workers(self) -> int:
        return sum(p.workers for p in self.procs)

    @property
    def total_cores(self) -> int:
        return sum(self.cores)

    def gateways(self) -> list[Proc]:
        return [p for p in self.procs if p.gateway]

    def hosts(self, model: str) -> list[Proc]:
        """Model processes serving ``model`` (the gateway's own models excluded)."""
        return [p for p in self.procs if not p.gateway and model in p.models]


@dataclass
class SimResult:
    """What one simulation run measured."""

    requests: int
    throughput: float  # completed requests per simulated second
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    cores_used: float  # CPU seconds spent per second: busy cores on average
    utilization: dict[str, float]  # per process: busy workers / workers
    per_class_p50_ms: dict[str, float]
    per_class_p99_ms: dict[str, float]
    duration_s: float
    offered: float | None = None  # requests/s offered (open loop)
    # open loop: requests/s that arrived while it was measured (Poisson: near `offered`)
    arrived: float | None = None

    def keeps_up(self, share: float = KEEP_UP) -> bool:
        """Open loop: served at least ``share`` of the requests that arrived while it was
        measured. Against the arrivals, not the nominal rate: a run of 1500 Poisson
        arrivals served more than 3 % below its nominal rate in 5-17 % of seeds even
        at a fortieth of capacity, and a lightly loaded fleet then looked as if it
        fell behind."""
        if self.arrived is None:
            raise ValueError("keeps_up is for open-loop runs (simulate_open)")
        return self.throughput >= share * self.arrived

    def summary(self) -> dict[str, object]:
        return {
            k: (round(v, 4) if isinstance(v, float) else v)
            for k, v in self.__dict__.items()
            if not isinstance(v, dict)
        } | {
            "per_class_p50_ms": {k: round(v, 3) for k, v in self.per_class_p50_ms.items()},
            "per_class_p99_ms": {k: round(v, 3) for k, v in self.per_class_p99_ms.items()},
        }


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of an ascending sequence, as bench.load."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


def normalise(mix: Mapping[str, float]) -> dict[str, float]:
    total = sum(mix.values())
    if total <= 0 or any(w < 0 for w in mix.values()):
        raise ValueError(f"a mix needs non-negative weights summing above 0, got {dict(mix)}")
    return {k: w / total for k, w in mix.items() if w > 0}


class _Model:
    """One run of the simulation: resources, routing and the request process."""

    def __init__(
        self,
        deployment: Deployment,
        calibration: Calibration,
        classes: Mapping[str, RequestClass],
        seed: int,
        quantum_s: float | None,
        spread: Mapping[str, Sequence[int]] | None = None,
    ) -> None:
        self.env = simpy.Environment()
        self.dep = deployment
        self.cal = calibration
        self.classes = classes
        self.rng = random.Random(seed)
        self.quantum = quantum_s
        self.cores = [simpy.Resource(self.env, capacity=c) for c in deployment.cores]
        # a request stays on one worker of a process (its connection's event loop)
        self.workers = {
            p.name: [simpy.Resource(self.env, capacity=1) for _ in range(p.workers)]
            for p in deployment.procs
        }
        self.load = {p.name: [0] * p.workers for p in deployment.procs}
        # measured connections per worker: keep-alive clients stay on the worker that
        # accepted them, so a process's workers take requests in those shares
        self.pinned = {
            p.name: [w for w, n in enumerate(spread[p.name][: p.workers]) for _ in range(n)]
            for p in deployment.procs
            if spread and sum(spread.get(p.name, ())) > 0
        }
        self.outstanding = {p.name: 0 for p in deployment.procs}
        self.busy = {p.name: 0.0 for p in deployment.procs}
        self.last_ran: dict[tuple[str, int], float] = {}  # (process, worker) -> clock
        self.busy[CLIENT] = 0.0
        self.client = (
            simpy.Resource(self.env, capacity=1) if deployment.client_machine is not None else None
        )
        self.gateways = deployment.gateways()
        if not self.gateways:
            raise ValueError("a deployment needs at least one gateway process")
        self.hosts = {}
        for cls in classes.values():
            for model in cls.models:
                if model in self.hosts:
                    continue
                # a model no process serves is an error once a request needs it: a
                # deployment sized for a mix leaves out the models the mix never calls
                self.hosts[model] = deployment.hosts(model)
        for machine, busy in enumerate(deployment.background):
            if busy > 0:
                self.env.process(
                    self._background(machine, min(busy, 0.95 * self.dep.cores[machine]))
                )
        mu_shift = -0.5 * calibration.sigma**2
        self._mu_shift = mu_shift
        self.latencies: list[tuple[float, str, float]] = []  # (start, class, seconds)

    def slowness(self) -> float:
        """A factor on a request's CPU: lognormal with mean 1 (see ``Calibration.sigma``)."""
        if self.cal.sigma <= 0:
            return 1.0
        return math.exp(self.rng.gauss(self._mu_shift, self.cal.sigma))

    def _background(self, machine: int, busy: float):  # type: ignore[no-untyped-def]
        """Other tenants: time slices arriving at random, ``busy`` cores on average."""
        rate = busy / BACKGROUND_SLICE_S
        while True:
            yield self.env.timeout(self.rng.expovariate(rate))
            self.env.process(self._run_on(machine, BACKGROUND_SLICE_S))

    def enter(self, proc: Proc, client: int | None = None) -> int:
        """The worker of ``proc`` a request lands on: by the measured connections if given
        (client ``k`` on the ``k``-th connection, other callers on a random one), else
        the least busy (random among ties)."""
        self.outstanding[proc.name] += 1
        load = self.load[proc.name]
        pinned = self.pinned.get(proc.name)
        if pinned:
            worker = pinned[client % len(pinned)] if client is not None else self.rng.choice(pinned)
        else:
            best = min(load)
            tied = [i for i, n in enumerate(load) if n == best]
            worker = tied[0] if len(tied) == 1 else self.rng.choice(tied)
        load[worker] += 1
        return worker

    def leave(self, proc: Proc, worker: int) -> None:
        self.outstanding[proc.name] -= 1
        self.load[proc.name][worker] -= 1

    def woken(self, key: tuple[str, int]) -> float:
        """Extra CPU of a burst on a process that has slept since it last ran."""
        if self.cal.wake_s <= 0:
            return 0.0
        slept = self.env.now - self.last_ran.get(key, -math.inf)
        return self.cal.wake_s * min(1.0, slept / max(self.cal.wake_ramp_s, 1e-9))

    def burst(self, proc: Proc, worker: int, cpu: float):  # type: ignore[no-untyped-def]
        resource = self.workers[proc.name][worker]
        key = (proc.name, worker)
        # a model service's wake-ups only: the gateway's costs are calibrated at its own
        # operating point, wake-ups included
        asleep = not proc.gateway and resource.count == 0 and not resource.queue
        seconds = cpu + (self.woken(key) if asleep and cpu > 0 else 0.0)
        if seconds <= 0:
            return
        with resource.request() as slot:
            yield slot
            yield from self._run_on(proc.machine, seconds)
        self.last_ran[key] = self.env.now
        self.busy[proc.name] += seconds

    def client_burst(self, mean: float):
        if self.client is None or mean <= 0:
            return
        seconds = mean * self.slowness()
        with self.client.request() as slot:
            yield slot
            yield from self._run_on(self.dep.client_machine or 0, seconds)
        self.busy[CLIENT] += seconds

    def _run_on(self, machine: int, seconds: float):
        left = seconds
        while left > 1e-12:
            piece = left if self.quantum is None else min(left, self.quantum)
            with self.cores[machine].request() as core:
                yield core
                yield self.env.timeout(piece)
            left -= piece

    def hop(self, a: int | None, b: int | None):
        delay = self.cal.hop_s + (self.dep.net_s if a is not None and a != b else 0.0)
        if delay > 0:
            yield self.env.timeout(delay)

    def pick(self, procs: Sequence[Proc]) -> Proc:
        """Least outstanding requests per worker; random among ties (a balancer's choice)."""
        best = min(self.outstanding[p.name] / p.workers for p in procs)
        tied = [p for p in procs if self.outstanding[p.name] / p.workers == best]
        return tied[0] if len(tied) == 1 else self.rng.choice(tied)

    def call(self, gateway: Proc, gw_worker: int, model: str, slow: float):  # type: ignore[no-untyped-def]
        if model in gateway.models:
            yield from self.burst(gateway, gw_worker, self.cal.local_cpu(model) * slow)
            return
        if not self.hosts[model]:
            raise ValueError(f"no process serves {model}")
        target = self.pick(self.hosts[model])
        worker = self.enter(target)
        yield from self.burst(gateway, gw_worker, self.cal.call_s / 2 * slow)
        yield from self.hop(gateway.machine, target.machine)
        served = (self.cal.server_s + self.cal.predict_s[model]) * slow
        yield from self.burst(target, worker, served)
        yield from self.hop(target.machine, gateway.machine)
        self.leave(target, worker)
        yield from self.burst(gateway, gw_worker, self.cal.call_s / 2 * slow)

    def request(self, cls: RequestClass, client: int | None = None):
        start = self.env.now
        yield from self.client_burst(self.cal.client_s / 2)
        gateway = self.pick(self.gateways)
        gw_worker = self.enter(gateway, client)
        yield from self.hop(self.dep.client_machine, gateway.machine)
        remote = any(m not in gateway.models for m in cls.models)
        mode: Mode = "micro" if remote else "mono"
        slow = self.slowness()
        base = self.cal.gateway_s[mode] / 2 * slow
        yield from self.burst(gateway, gw_worker, base)
        calls = [self.env.process(self.call(gateway, gw_worker, m, slow)) for m in cls.models]
        yield simpy.AllOf(self.env, calls)
        yield from self.burst(gateway, gw_worker, base)
        wait = self.cal.wait_s.get(mode, 0.0)
        if wait > 0:
            yield self.env.timeout(wait)
        yield from self.hop(gateway.machine, self.dep.client_machine)
        self.leave(gateway, gw_worker)
        yield from self.client_burst(self.cal.client_s / 2)
        self.latencies.append((start, cls.name, self.env.now - start))

    def choose(self, names: Sequence[str], weights: Sequence[float]) -> RequestClass:
        return self.classes[self.rng.choices(names, weights)[0]]

    def result(
        self, since: float, until: float, offered: float | None, horizon: float | None = None
    ) -> SimResult:
        """Latencies of requests started after ``since``, completions in ``since..until``;
        busy time shared over ``horizon`` (default: the clock) for utilisations."""
        horizon = max(horizon if horizon is not None else self.env.now, 1e-9)
        window = [(c, s) for t, c, s in self.latencies if since <= t]
        lat = sorted(s for _, s in window)
        done = [t + s for t, _, s in self.latencies if since <= t + s <= until]
        span = max(until - since, 1e-9)
        per_class: dict[str, list[float]] = {}
        for c, s in window:
            per_class.setdefault(c, []).append(s)
        for values in per_class.values():
            values.sort()
        total_busy = sum(self.busy.values())
        return SimResult(
            requests=len(lat),
            throughput=len(done) / span,
            p50_ms=percentile(lat, 50) * 1000,
            p95_ms=percentile(lat, 95) * 1000,
            p99_ms=percentile(lat, 99) * 1000,
            mean_ms=(sum(lat) / len(lat) * 1000) if lat else 0.0,
            cores_used=total_busy / horizon,
            utilization={p.name: self.busy[p.name] / (p.workers * horizon) for p in self.dep.procs},
            per_class_p50_ms={c: percentile(v, 50) * 1000 for c, v in per_class.items()},
            per_class_p99_ms={c: percentile(v, 99) * 1000 for c, v in per_class.items()},
            duration_s=horizon,
            offered=offered,
        )


def simulate_closed(
    deployment: Deployment,
    calibration: Calibration,
    classes: Mapping[str, RequestClass],
    mix: Mapping[str, float],
    clients: int,
    requests: int = 2000,
    warmup: int | None = None,
    seed: int = 1,
    quantum_s: float | None = None,
    spread: Mapping[str, Sequence[int]] | None = None,
) -> SimResult:
    """``clients`` closed-loop clients sending ``requests`` in all (as ``bench.load``).

    The first ``warmup`` completions (default: a tenth) are not measured. ``spread``:
    connections per worker by process name, as measured (``bench.topology``); without
    it every request goes to its process's least busy worker.
    """
    if clients < 1 or requests < 1:
        raise ValueError("clients and requests must be at least 1")
    mix = normalise(mix)
    model = _Model(deployment, calibration, classes, seed, quantum_s, spread)
    names, weights = list(mix), list(mix.values())
    warm = requests // 10 if warmup is None else warmup
    remaining = [requests + warm]
    warm_end = [0.0]

    def client(k: int):
        while remaining[0] > 0:
            remaining[0] -= 1
            yield from model.request(model.choose(names, weights), k)
            if len(model.latencies) == warm:
                warm_end[0] = model.env.now

    done = [model.env.process(client(k)) for k in range(clients)]
    model.env.run(until=simpy.AllOf(model.env, done))
    return model.result(warm_end[0], model.env.now, None)


def simulate_open(
    deployment: Deployment,
    calibration: Calibration,
    classes: Mapping[str, RequestClass],
    mix: Mapping[str, float],
    rate: float,
    requests: int = 4000,
    seed: int = 1,
    quantum_s: float | None = None,
    drain_factor: float = 1.0,
) -> SimResult:
    """Poisson arrivals at ``rate`` requests/s, ``requests`` of them.

    Throughput is what completes while requests arrive (after the first tenth), and
    ``arrived`` what arrived meanwhile; an overloaded system serves less than arrived
    (:meth:`SimResult.keeps_up` is false) and its latencies grow. The
    run stops ``drain_factor`` times the arrival span after the last arrival, so an
    overload cannot run forever; requests still queued then are left out of latency
    percentiles, and throughput says how far behind the system fell.
    """
    if rate <= 0 or requests < 1:
        raise ValueError("rate must be > 0 and requests >= 1")
    mix = normalise(mix)
    model = _Model(deployment, calibration, classes, seed, quantum_s)
    names, weights = list(mix), list(mix.values())
    arrivals_end = [0.0]
    arrivals: list[float] = []

    def source():
        for _ in range(requests):
            arrivals.append(model.env.now)
            model.env.process(model.request(model.choose(names, weights)))
            yield model.env.timeout(model.rng.expovariate(rate))
        arrivals_end[0] = model.env.now

    model.env.process(source())
    span = requests / rate
    model.env.run(until=span * (1 + drain_factor))
    end = arrivals_end[0] or model.env.now
    last_done = max((t + s for t, _, s in model.latencies), default=end)
    # the clock stands at the run's limit: busy time is shared over the time work went on
    since = span * 0.1  # the first tenth warms the queues up
    result = model.result(since, end, rate, horizon=max(end, last_done))
    result.arrived = sum(1 for t in arrivals if since <= t <= end) / max(end - since, 1e-9)
    return result


# --- deployments -------------------------------------------------------------------------


def measured_deployment(
    topology: Mode,
    model_workers: Mapping[str, int],
    gateway_workers: int,
    cores: int,
    with_client: bool = True,
    background: float = 0.0,
) -> Deployment:
    """The one-machine layouts ``bench.topology`` measures (``background``: cores other
    work kept busy meanwhile).

    micro: the gateway (``gateway_workers``) and one process per model
    (``model_workers``); mono: one gateway process hosting every model with
    ``gateway_workers`` workers (the bench gives it the same total as micro).
    """
    models = frozenset(model_workers)
    if topology == "mono":
        procs = (Proc(GATEWAY, 0, gateway_workers, models, gateway=True),)
    else:
        services = [Proc(name, 0, n, frozenset({name})) for name, n in model_workers.items()]
        procs = (Proc(GATEWAY, 0, gateway_workers, frozenset(), gateway=True), *services)
    return Deployment(
        (cores,), procs, client_machine=0 if with_client else None, background=(background,)
    )


def component_demand(
    calibration: Calibration,
    classes: Mapping[str, RequestClass],
    mix: Mapping[str, float],
    local: frozenset[str],
) -> dict[str, float]:
    """CPU seconds per request (averaged over ``mix``) of the gateway and each remote model,
    when the gateway hosts the models in ``local``."""
    mix = normalise(mix)
    demand: dict[str, float] = {GATEWAY: 0.0}
    for name, share in mix.items():
        cls = classes[name]
        remote = [m for m in cls.models if m not in local]
        mode: Mode = "micro" if remote else "mono"
        gw = calibration.gateway_s[mode] + len(remote) * calibration.call_s
        gw += sum(calibration.local_cpu(m) for m in cls.models if m in local)
        demand[GATEWAY] += share * gw
        for m in remote:
            demand[m] = demand.get(m, 0.0) + share * (
                calibration.server_s + calibration.predict_s[m]
            )
    return demand


def allocate(demand: Mapping[str, float], total: int) -> dict[str, int]:
    """Split ``total`` workers over components in proportion to demand, at least one each
    (largest remainders; ``total`` is raised to the number of components if below)."""
    names = list(demand)
    total = max(total, len(names))
    whole = sum(demand.values())
    if whole <= 0:
        raise ValueError("demand must be positive somewhere")
    spare = total - len(names)
    raw = {n: spare * demand[n] / whole for n in names}
    share = {n: 1 + int(raw[n]) for n in names}
    left = total - sum(share.values())
    for n in sorted(names, key=lambda n: raw[n] - int(raw[n]), reverse=True)[:left]:
        share[n] += 1
    return share


def scaled_deployment(
    machines: int,
    cores: int,
    calibration: Calibration,
    classes: Mapping[str, RequestClass],
    mix: Mapping[str, float],
    local: Iterable[str],
    net_s: float = 0.0002,
) -> Deployment:
    """``machines`` machines of ``cores`` cores, one worker per core in all.

    The gateway hosts the models in ``local`` (all of them: mono; none: micro); each
    other model gets its own processes. Workers go to components in proportion to their
    CPU demand under ``mix`` (per-model scaling); mono scales the one process as a whole
    (a replica with ``cores`` workers on every machine). Workers fill machines in turn;
    a component's workers on one machine form one process. Clients are outside.
    """
    local = frozenset(local)
    demand = component_demand(calibration, classes, mix, local)
    workers = allocate(demand, machines * cores)
    slots = [cores] * machines
    placed: dict[tuple[str, int], int] = {}
    machine = 0
    for name in sorted(workers, key=lambda n: (-workers[n], n)):
        for _ in range(workers[name]):
            if all(s <= 0 for s in slots):
                machine = min(range(machines), key=lambda i: slots[i])
            else:
                while slots[machine] <= 0:
                    machine = (machine + 1) % machines
            slots[machine] -= 1
            placed[(name, machine)] = placed.get((name, machine), 0) + 1
    procs = tuple(
        Proc(
            f"{name}@{m}",
            m,
            count,
            local if name == GATEWAY else frozenset({name}),
            gateway=name == GATEWAY,
        )
        for (name, m), count in sorted(placed.items(), key=lambda kv: (kv[0][1], kv[0][0]))
    )
    return Deployment((cores,) * machines, procs, client_machine=None, net_s=net_s)


def capacity(
    deployment: Deployment,
    calibration: Calibration,
    classes: Mapping[str, RequestClass],
    mix: Mapping[str, float],
) -> float:
    """Bottleneck bound on throughput (requests/s): no worker pool and no machine may be
    busier than its size. The simulated throughput never exceeds it."""
    mix = normalise(mix)
    per_proc: dict[str, float] = {p.name: 0.0 for p in deployment.procs}
    per_machine = [0.0] * len(deployment.cores)
    gateways = deployment.gateways()
    for name, share in mix.items():
        cls = classes[name]
        for gw in gateways:
            weight = share * gw.workers / sum(g.workers for g in gateways)
            remote = [m for m in cls.models if m not in gw.models]
            mode: Mode = "micro" if remote else "mono"
            cost = calibration.gateway_s[mode] + len(remote) * calibration.call_s
            cost += sum(calibration.local_cpu(m) for m in cls.models if m in gw.models)
            per_proc[gw.name] += weight * cost
            per_machine[gw.machine] += weight * cost
            for m in remote:
                hosts = deployment.hosts(m)
                size = sum(h.workers for h in hosts)
                for h in hosts:
                    c = (
                        weight
                        * h.workers
                        / size
                        * (calibration.server_s + calibration.predict_s[m])
                    )
                    per_proc[h.name] += c
                    per_machine[h.machine] += c
    if deployment.client_machine is not None:
        per_machine[deployment.client_machine] += calibration.client_s
    bounds = [p.workers / per_proc[p.name] for p in deployment.procs if per_proc[p.name] > 0]
    bounds += [c / d for c, d in zip(deployment.cores, per_machine, strict=True) if d > 0]
    if deployment.client_machine is not None and calibration.client_s > 0:
        bounds.append(1 / calibration.client_s)
    return min(bounds)


def sustained_rate(
    deployment: Deployment,
    calibration: Calibration,
    classes: Mapping[str, RequestClass],
    mix: Mapping[str, float],
    p99_budget_ms: float,
    requests: int = 2000,
    seed: int = 1,
    steps: int = 6,
    bound: float | None = None,
) -> float:
    """The highest offered load (open loop) the deployment keeps up with (``keeps_up``) with
    p99 within ``p99_budget_ms``: a bisection between 5 % and 100 % of its bottleneck
    bound (:func:`capacity`, or ``bound``), to 1/2**steps of that range; 0 if none."""
    top = capacity(deployment, calibration, classes, mix) if bound is None else bound
    ok, lo, hi = 0.0, 0.05 * top, top
    for _ in range(steps):
        mid = (lo + hi) / 2
        res = simulate_open(deployment, calibration, classes, mix, mid, requests, seed)
        if res.keeps_up() and res.p99_ms <= p99_budget_ms:
            ok, lo = mid, mid
        else:
            hi = mid
    return ok


def layouts(models: Sequence[str]) -> list[frozenset[str]]:
    """Every choice of models consolidated into the gateway: none (micro) ... all (mono)."""
    return [frozenset(c) for k in range(len(models) + 1) for c in combinations(models, k)]


def layout_name(local: frozenset[str], models: Sequence[str]) -> str:
    if not local:
        return "micro"
    if set(local) == set(models):
        return "mono"
    return "gateway+" + "+".join(m for m in models if m in local)


@dataclass(frozen=True)
class LayoutScore:
    layout: str
    local: tuple[str, ...]
    capacity: float  # simulated: highest throughput with p99 within the budget
    p99_ms_at_load: float  # at the common reference load


def best_layouts(
    calibration: Calibration,
    classes: Mapping[str, RequestClass],
    mix: Mapping[str, float],
    machines: int,
    cores: int,
    p99_budget_ms: float,
    requests: int = 2000,
    net_s: float = 0.0002,
    seed: int = 1,
    steps: int = 6,
) -> list[LayoutScore]:
    """Every consolidation layout on ``machines`` x ``cores``, best first.

    Capacity: :func:`sustained_rate` of the layout. Ties go to the layout with the lower
    p99 at a common reference load (half the smallest bound of all layouts).
    """
    models = sorted({m for c in classes.values() for m in c.models})
    deployments = {
        local: scaled_deployment(machines, cores, calibration, classes, mix, local, net_s)
        for local in layouts(models)
    }
    bounds = {k: capacity(d, calibration, classes, mix) for k, d in deployments.items()}
    reference = 0.5 * min(bounds.values())
    scores = []
    for local, dep in deployments.items():
        ok = sustained_rate(
            dep, calibration, classes, mix, p99_budget_ms, requests, seed, steps, bounds[local]
        )
        at_ref = simulate_open(dep, calibration, classes, mix, reference, requests, seed)
        scores.append(
            LayoutScore(layout_name(local, models), tuple(sorted(local)), ok, at_ref.p99_ms)
        )
    scores.sort(key=lambda s: (-round(s.capacity, -1), s.p99_ms_at_load))
    return scores


def with_costs(calibration: Calibration, **changes: object) -> Calibration:
    """A copy of ``calibration`` with some costs changed (what-if studies)."""
    return replace(calibration, **changes)  # type: ignore[arg-type]
