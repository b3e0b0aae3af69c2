"""Measuring a served topology: process trees' CPU and memory, points, the fleet."""

from __future__ import annotations

import contextlib
import resource
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from bench.load import LevelResult, LoadSpec, run_load_process
from fleet.catalog import models as catalog_models
from fleet.settings import Settings

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


def connections_per_worker(pid: int, port: int) -> list[int]:
    """Established connections to ``port`` held by each process of the tree, most first.

    BentoML's workers share one listening socket, and the worker that wakes first takes
    every connection pending then, so keep-alive clients spread unevenly: 8 clients
    were seen as 5, 2 and 1 on three of six workers.
    """
    import psutil

    counts = []
    for proc in _tree(pid):
        with contextlib.suppress(psutil.Error):
            conns = proc.net_connections(kind="tcp")
            held = sum(c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port for c in conns)
            if held:
                counts.append(held)
    return sorted(counts, reverse=True)


class _ConnectionSampler:
    """Samples connections per worker of every component while a load runs; keeps, per
    component, the sample with the most connections (all clients connected)."""

    def __init__(self, targets: dict[str, tuple[int, int]], every_s: float = 0.2) -> None:
        self.targets = targets  # component -> (pid, port)
        self.every_s = every_s
        self.best: dict[str, list[int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            for name, (pid, port) in self.targets.items():
                counts = connections_per_worker(pid, port)
                if sum(counts) > sum(self.best.get(name, [])):
                    self.best[name] = counts

    def __enter__(self) -> _ConnectionSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


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
    connections: dict[str, list[int]] | None = None  # component -> per worker, most first

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
            "connections": self.connections or {},
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
        with _ConnectionSampler(self.ports()) as sampler:
            (result,) = run_load_process(spec)
        after, wall = self.cpu(), time.perf_counter() - t0
        ours = sum(after.values()) - sum(before.values()) + _children_cpu() - children0
        background = max(0.0, (machine_busy() - machine0 - ours) / wall)
        cpu = {k: max(0.0, after[k] - before[k] - self.idle_rate.get(k, 0.0) * wall) for k in after}
        sent = result.requests + (warmup if warmup else 0)
        return Point(self.topology, profile, target, result, sent, cpu, result.cpu_s, background,
                     sampler.best)  # fmt: skip

    def ports(self) -> dict[str, tuple[int, int]]:
        from urllib.parse import urlsplit

        return {name: (r.pid, urlsplit(r.url).port or 80) for name, r in self.running.items()}

    def wake_curve(
        self, target: str, url: str, bodies: list[Any], pauses: Sequence[float], calls: int
    ) -> list[tuple[float, float]]:
        """CPU per call of ``target`` (idle CPU subtracted) when each call follows a pause,
        one client: ``(pause_s, cpu_s)`` per pause."""
        import httpx

        curve = []
        with httpx.Client(headers=Settings().auth_headers(), timeout=10) as client:
            for i in range(20):  # connect, warm
                client.post(url, json=bodies[i % len(bodies)]).raise_for_status()
            for pause in pauses:
                n = calls if pause < 0.02 else max(10, calls // 4)
                cpu0, t0 = tree_cpu(self.running[target].pid), time.perf_counter()
                for i in range(n):
                    client.post(url, json=bodies[i % len(bodies)]).raise_for_status()
                    if pause:
                        time.sleep(pause)
                wall = time.perf_counter() - t0
                cpu = tree_cpu(self.running[target].pid) - cpu0
                cpu -= self.idle_rate.get(target, 0.0) * wall
                curve.append((pause, max(0.0, cpu) / n))
        return curve


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
    scratch: Settings, topology: str | Any, tags: dict[str, str], timeout: float = 180.0
) -> Iterator[Fleet]:
    """Start ``topology`` (micro, mono with the same workers in all as micro, or a
    ``fleet.placement.Placement``) on free ports; stop it on any exit."""
    from dataclasses import replace

    from fleet import placement, processes
    from fleet import topology as topo

    host = scratch.serve_host
    processes.stop_all(scratch, grace=5)  # leftovers of an interrupted run, ours only
    ports = scratch.model_copy(
        update={
            "gateway_port": processes.free_port(host),
            "model_port_base": _consecutive_free_ports(host, len(catalog_models())),
        }
    )
    models = list(catalog_models())
    if topology == "mono":
        _, _, mono_workers = worker_counts()
        placed = replace(placement.mono(models), gateway_workers=mono_workers)
    elif topology == "micro":
        placed = placement.micro(models)
    else:
        placed = topology
    plan = topo.plan(ports, placed, models, tags)
    name = topology if isinstance(topology, str) else placed.topology
    started: list[Any] = []

    def on_sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        # no supervisor: a benchmark stops what it measured, nothing restarts it
        started = topo.start_plan(ports, plan, timeout=timeout, supervise=False)
        yield Fleet(name, started)
    finally:
        for running in reversed(started):
            processes.stop(ports, running, grace=10)
        signal.signal(signal.SIGTERM, previous)


def predict_cpu_s(spec: Any, model: Any, records: list[dict[str, Any]], n: int) -> float:
    """Mean CPU seconds of one record through the path a service answers by
    (``fleet.fastpath``, checked against the pipeline on these records), one thread."""
    from fleet import fastpath, training

    predictor = fastpath.predictor(spec, model, records[:50])
    with training.limit_threads(1):
        for record in records[:20]:  # warm caches and lazy imports
            predictor.predict_records([record])
        t0 = time.process_time()
        for i in range(n):
            predictor.predict_records([records[i % len(records)]])
        return (time.process_time() - t0) / n
