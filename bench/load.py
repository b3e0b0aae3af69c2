"""A bounded, closed-loop HTTP load generator (aiohttp, asyncio).

``run_load(spec)`` POSTs JSON bodies (cycled in order) to one URL at each concurrency
level in turn: ``concurrency`` workers each send a request, wait for the answer and send
the next, until the level's fixed request count is used up or the whole run's time bound
has passed (then no new request starts and the level says ``truncated``). Latency is
measured per request from send to the fully read answer.

An answer counts as ok only if its status is 2xx and its JSON body holds a non-empty
value at every dotted path of ``spec.require`` (``"prediction.probability"``,
``"predictions.0"``): an HTTP 200 that carries an error is an error.

The client is aiohttp: its CPU per request stays near 0.1-0.2 ms at any concurrency,
where httpx's grew from 0.6 ms at one connection to twice that at 32, so that at 32
clients the load generator took a growing share of the cores it measured.

Run it in its own process, so that the load's CPU is not the server's or the driver's::

    python -m bench.load spec.json      # or: ... < spec.json ; prints the result as JSON

The spec file is ``LoadSpec`` as JSON, e.g. ``{"url": "http://127.0.0.1:3001/predict",
"bodies": [{"record": {...}}], "levels": [1, 8, 32], "requests": 500, "warmup": 50,
"time_bound_s": 120, "require": ["prediction.probability"]}``.
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

MAX_ERROR_SAMPLES = 5
MAX_ERROR_CHARS = 200


@dataclass(frozen=True)
class LoadSpec:
    """What to send, where, how hard and for how long at most."""

    url: str
    bodies: list[Any]
    levels: list[int] = field(default_factory=lambda: [1, 8, 32])
    requests: int = 500  # per level, warm-up not included
    warmup: int = 0  # requests sent before each level, not measured
    time_bound_s: float = 300.0  # the whole run, warm-ups included
    timeout_s: float = 10.0  # one request
    require: list[str] = field(default_factory=list)  # dotted paths that must be non-empty
    headers: dict[str, str] = field(default_factory=dict)
    # dotted paths that must be absent or empty, e.g. the gateway's per-model "errors"
    forbid: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.bodies:
            raise ValueError("bodies is empty: give at least one JSON body to send")
        if not self.levels or any(c < 1 for c in self.levels):
            raise ValueError(f"levels must be positive concurrencies, got {self.levels}")
        if self.requests < 1 or self.warmup < 0 or self.time_bound_s <= 0:
            raise ValueError("requests must be >= 1, warmup >= 0 and time_bound_s > 0")


@dataclass
class LevelResult:
    """One concurrency level: counts, throughput and latency percentiles (ms)."""

    concurrency: int
    requests: int  # sent and measured (less than planned only when truncated)
    ok: int
    errors: int
    error_samples: list[str]
    wall_s: float
    req_per_s: float  # all measured requests per wall second
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    truncated: bool
    cpu_s: float = 0.0  # CPU seconds of the load process itself during the level


def _empty(value: Any) -> bool:
    return value is None or value == {} or value == [] or value == ""


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of an ascending sequence; 0.0 if empty."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


def _lookup(body: Any, path: str) -> Any:
    node = body
    for part in path.split("."):
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def check_answer(
    status: int, text: str, require: Sequence[str], forbid: Sequence[str] = ()
) -> str | None:
    """None if the answer is ok, else a short message saying what is wrong with it."""
    if not 200 <= status < 300:
        return f"HTTP {status}: {text[:MAX_ERROR_CHARS]}"
    if not require and not forbid:
        return None
    try:
        body = json.loads(text)
    except ValueError:
        return f"HTTP {status} with a body that is not JSON: {text[:MAX_ERROR_CHARS]}"
    for path in require:
        value = _lookup(body, path)
        if _empty(value):
            return f"HTTP {status} without {path!r}: {text[:MAX_ERROR_CHARS]}"
    for path in forbid:
        if not _empty(_lookup(body, path)):
            return f"HTTP {status} with {path!r}: {text[:MAX_ERROR_CHARS]}"
    return None


class _Level:
    """Shared state of the workers of one level."""

    def __init__(self, count: int, deadline: float) -> None:
        self.remaining = count
        self.deadline = deadline
        self.latencies_ms: list[float] = []
        self.errors = 0
        self.samples: list[str] = []
        self.truncated = False

    def take(self) -> bool:
        if self.remaining <= 0:
            return False
        if time.monotonic() >= self.deadline:
            self.truncated = True
            return False
        self.remaining -= 1
        return True

    def error(self, message: str) -> None:
        self.errors += 1
        # distinct messages: five copies of one failure say less than two kinds
        if len(self.samples) < MAX_ERROR_SAMPLES and message not in self.samples:
            self.samples.append(message)


async def _worker(
    client: aiohttp.ClientSession, spec: LoadSpec, level: _Level, offset: int, step: int
) -> None:
    i = offset
    while level.take():
        body = spec.bodies[i % len(spec.bodies)]
        i += step
        t0 = time.perf_counter()
        try:
            async with client.post(spec.url, json=body) as resp:
                text = await resp.text()
            problem = check_answer(resp.status, text, spec.require, spec.forbid)
        except (aiohttp.ClientError, TimeoutError) as exc:
            problem = f"{type(exc).__name__}: {exc or 'timed out'}"[:MAX_ERROR_CHARS]
        level.latencies_ms.append((time.perf_counter() - t0) * 1000)
        if problem is not None:
            level.error(problem)


async def _run_level(
    client: aiohttp.ClientSession, spec: LoadSpec, concurrency: int, count: int, deadline: float
) -> LevelResult:
    level = _Level(count, deadline)
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    # worker k sends bodies k, k+c, k+2c, ...: every level walks through the bodies
    await asyncio.gather(
        *(_worker(client, spec, level, k, concurrency) for k in range(concurrency))
    )
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    lat = sorted(level.latencies_ms)
    n = len(lat)
    return LevelResult(
        concurrency=concurrency,
        requests=n,
        ok=n - level.errors,
        errors=level.errors,
        error_samples=level.samples,
        wall_s=round(wall, 3),
        req_per_s=round(n / wall, 1) if wall > 0 else 0.0,
        p50_ms=round(percentile(lat, 50), 2),
        p95_ms=round(percentile(lat, 95), 2),
        p99_ms=round(percentile(lat, 99), 2),
        max_ms=round(lat[-1], 2) if lat else 0.0,
        truncated=level.truncated,
        cpu_s=round(cpu, 4),
    )


async def run_load_async(spec: LoadSpec) -> list[LevelResult]:
    """Each level in order (after its warm-up), on one connection per worker."""
    deadline = time.monotonic() + spec.time_bound_s
    connector = aiohttp.TCPConnector(limit=max(spec.levels))
    timeout = aiohttp.ClientTimeout(total=spec.timeout_s)
    results = []
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, headers=spec.headers
    ) as client:
        for concurrency in spec.levels:
            if spec.warmup:
                await _run_level(client, spec, concurrency, spec.warmup, deadline)
            results.append(await _run_level(client, spec, concurrency, spec.requests, deadline))
    return results


def run_load(spec: LoadSpec) -> list[LevelResult]:
    """Blocking wrapper of ``run_load_async`` (not from inside a running event loop)."""
    return asyncio.run(run_load_async(spec))


def result_from_json(data: dict[str, Any]) -> LevelResult:
    """A ``LevelResult`` back from its JSON form (``asdict``)."""
    return LevelResult(**data)


def run_load_process(spec: LoadSpec, python: str = sys.executable) -> list[LevelResult]:
    """``run_load`` in a separate ``python -m bench.load`` process (its own CPU and GIL)."""
    # the child may overrun the time bound by one request timeout per level at most
    budget = spec.time_bound_s + spec.timeout_s * (len(spec.levels) + 1) + 30
    proc = subprocess.run(
        [python, "-m", "bench.load", "-"],
        input=json.dumps(asdict(spec)),
        capture_output=True,
        text=True,
        timeout=budget,
        cwd=Path(__file__).resolve().parents[1],
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"bench.load failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return [result_from_json(level) for level in json.loads(proc.stdout)["levels"]]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.load [SPEC.json]``: spec from the file or stdin, JSON to stdout."""
    args = list(sys.argv[1:] if argv is None else argv)
    raw = Path(args[0]).read_text() if args and args[0] != "-" else sys.stdin.read()
    spec = LoadSpec(**json.loads(raw))
    results = run_load(spec)
    json.dump({"url": spec.url, "levels": [asdict(r) for r in results]}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
