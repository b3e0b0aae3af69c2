"""`fleet bench serve`: single-record serving throughput and latency, every way, one run.

For one model's @champion (default ``flight_delay``):

- **in-process** (the limit), one record at a time in a loop, one thread, no HTTP, no
  validation, by each single-record path of ``fleet.fastpath`` on the loaded model:
  ``pipeline`` (``serving.to_frame`` + ``serving.predict``), ``numpy`` (the record
  encoded without a frame, the same fitted booster) and ``treelite`` (its trees in
  Treelite's GTIL), where the model has them; the services use the fastest that answers
  as the pipeline does;
- **model service**: ``bentoml serve`` of the model's service with the pinned Bento
  tag and the spec's workers, exactly as ``fleet serve`` starts it (``fleet.topology``);
- **gateway**: the micro-topology gateway in front of that service, asked for this
  model only (``{"flight": record, "models": [model]}``);
- **fastapi peer**: a plain FastAPI + uvicorn app around the same Bento model, request
  model and single-record path, with the same workers, no prediction log
  (``bench/peer_app.py``): what BentoML and the fleet's logging cost;
- **mlflow serve** (the peer): ``mlflow models serve -m models:/<model>/<version>
  --env-manager local`` with the same worker count and thread setting.

Every HTTP target is loaded twice: by our client, and by ``wrk`` (``bench/wrk.py``,
Debian's package, C threads, for a fixed time per level) when it is installed, so that
the figures do not rest on a Python client alone.

HTTP load comes from a separate ``python -m bench.load`` process per target (closed
loop, concurrency 1, 8, 32, a fixed request count each after a warm-up), so the load
generator does not share a GIL with the driver. Only answers that carry a prediction
count as ok. Requests are real records from the lake (the champion's window), cycled.

State: the registry, lake and Bento model of the current state root are read; the
processes run from a scratch root ``<root>/bench/serve`` (its own pid files, logs,
gateway result store and prediction log) that points at the same registry, so a running
``fleet serve`` is neither seen nor disturbed and bench traffic never reaches the
fleet's stores. Everything started is stopped at the end, on errors and on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any

import httpx

from bench import wrk
from bench.load import LevelResult, LoadSpec, percentile, run_load_process
from fleet.catalog import ModelSpec, get_model
from fleet.settings import REPO_ROOT, Settings

RESULTS_DIR = REPO_ROOT / "bench" / "results"
LEVELS = (1, 8, 32)
# the default early-2013 window a missing champion is trained on (as `fleet bench pipeline`)
BOOTSTRAP_UNTIL = date(2013, 3, 4)
RECORDS = 2000  # distinct real records cycled through by every target

TARGET_RATIO_VS_MLFLOW = 2.0  # model service req/s over mlflow serve's, at concurrency 8
TARGET_P99_MS = 25.0  # model service p99 at concurrency 8
TARGET_RATIO_LEVEL = 8
ZERO_ERRORS_LEVEL = 32  # model service and gateway
TARGET_IN_PROCESS_P50_MS = 1.0  # the served path, one record
TARGET_SERVICE_P50_MS = 4.0  # at concurrency 1
TARGET_GATEWAY_P50_MS = 7.0  # at concurrency 1

SERVICE, GATEWAY, FASTAPI, MLFLOW = "model service", "gateway", "fastapi peer", "mlflow serve"
WRK_SECONDS = 10.0  # per target and level at most (as long as our client's level took)


def in_process(path: str) -> str:
    """The target name of one in-process path (``in-process (treelite)``)."""
    return f"in-process ({path})"


Say = Callable[[str], None]


@dataclass
class TargetResult:
    """One way of serving: where it was reached and its result per concurrency level."""

    name: str
    url: str | None
    levels: list[LevelResult]

    def at(self, concurrency: int) -> LevelResult | None:
        return next((lv for lv in self.levels if lv.concurrency == concurrency), None)


@dataclass
class ServeBench:
    model: str
    version: str
    bento_tag: str
    workers: int
    requests: int  # per level and target
    warmup: int
    records: int  # distinct request records
    levels: list[int]
    served_path: str = ""  # the single-record path the services use (fleet.fastpath)
    targets: list[TargetResult] = field(default_factory=list)
    wrk: list[TargetResult] = field(default_factory=list)  # the HTTP targets under wrk
    wrk_version: str = ""
    wrk_seconds: float = 0.0  # per target and level
    machine: dict[str, str] = field(default_factory=dict)
    json_path: Path | None = None
    markdown_path: Path | None = None

    def target(self, name: str) -> TargetResult | None:
        return next((t for t in self.targets if t.name == name), None)

    def checks(self) -> list[dict[str, Any]]:
        """The issue's targets: measured value, limit, met or not (None: not measured)."""
        service, gateway = self.target(SERVICE), self.target(GATEWAY)
        served = self.target(in_process(self.served_path)) if self.served_path else None
        at = TARGET_RATIO_LEVEL
        ours = service.at(at) if service else None
        out: list[dict[str, Any]] = []
        for under_wrk in (False, True):
            ratio = self.ratios_vs_mlflow(under_wrk).get(SERVICE, {}).get(at)
            if under_wrk and not self.wrk:
                continue
            out.append(
                {
                    "target": f"model service req/s >= {TARGET_RATIO_VS_MLFLOW}x mlflow serve "
                    f"at concurrency {at}" + (" (wrk)" if under_wrk else " (aiohttp client)"),
                    "value": ratio,
                    "limit": TARGET_RATIO_VS_MLFLOW,
                    "met": None if ratio is None else ratio >= TARGET_RATIO_VS_MLFLOW,
                }
            )
        out += [
            {
                "target": f"model service p99 <= {TARGET_P99_MS:.0f} ms at concurrency {at}",
                "value": None if ours is None else ours.p99_ms,
                "limit": TARGET_P99_MS,
                "met": None if ours is None else ours.p99_ms <= TARGET_P99_MS,
            },
        ]
        for target, limit in (
            (served, TARGET_IN_PROCESS_P50_MS),
            (service, TARGET_SERVICE_P50_MS),
            (gateway, TARGET_GATEWAY_P50_MS),
        ):
            one = target.at(1) if target else None
            out.append(
                {
                    "target": f"{target.name if target else '?'}: p50 <= {limit:g} ms at "
                    "concurrency 1",
                    "value": None if one is None else one.p50_ms,
                    "limit": limit,
                    "met": None if one is None else one.p50_ms <= limit,
                }
            )
        for target in (service, gateway):
            level = target.at(ZERO_ERRORS_LEVEL) if target else None
            name = target.name if target else "?"
            out.append(
                {
                    "target": f"{name}: zero errors at concurrency {ZERO_ERRORS_LEVEL}",
                    "value": None if level is None else level.errors,
                    "limit": 0,
                    "met": None if level is None else level.errors == 0 and level.ok > 0,
                }
            )
        return out

    def ratios_vs_mlflow(self, wrk: bool = False) -> dict[str, dict[int, float]]:
        """req/s of each target over mlflow serve's, per concurrency level (``wrk``: both
        under wrk)."""
        targets = self.wrk if wrk else self.targets
        peer = next((t for t in targets if t.name == MLFLOW), None)
        out: dict[str, dict[int, float]] = {}
        if peer is None:
            return out
        for target in targets:
            for level in target.levels:
                base = peer.at(level.concurrency)
                if base and base.req_per_s > 0:
                    out.setdefault(target.name, {})[level.concurrency] = round(
                        level.req_per_s / base.req_per_s, 2
                    )
        return out

    def summary(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("json_path")
        data.pop("markdown_path")
        data["checks"] = self.checks()
        data["ratios_vs_mlflow"] = self.ratios_vs_mlflow()
        data["wrk_ratios_vs_mlflow"] = self.ratios_vs_mlflow(wrk=True)
        return data

    def table(self, wrk: bool = False) -> list[str]:
        ratios = self.ratios_vs_mlflow(wrk)
        lines = [
            "| target | concurrency | requests | ok | errors | req/s | vs mlflow | "
            "p50 ms | p95 ms | p99 ms | max ms |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for target in self.wrk if wrk else self.targets:
            for lv in target.levels:
                ratio = ratios.get(target.name, {}).get(lv.concurrency)
                lines.append(
                    f"| {target.name} | {lv.concurrency} | {lv.requests} | {lv.ok} | "
                    f"{lv.errors} | {lv.req_per_s:.1f} | "
                    f"{'-' if ratio is None else f'{ratio:.2f}x'} | {lv.p50_ms:.2f} | "
                    f"{lv.p95_ms:.2f} | {lv.p99_ms:.2f} | {lv.max_ms:.2f} |"
                    + (" truncated" if lv.truncated else "")
                )
        return lines

    def markdown(self) -> str:
        m = self.machine
        lines = [
            f"## Serving benchmark: {self.model} v{self.version}, single records",
            "",
            f"{self.requests} measured requests per target and concurrency level after "
            f"{self.warmup} warm-up requests; {self.records} distinct real records from the "
            f"lake, cycled. Model service and mlflow serve run {self.workers} worker(s) each, "
            "one OpenMP thread per worker. HTTP load from a separate closed-loop process "
            "(aiohttp); in-process is one thread answering one record at a time by each path of "
            f"fleet.fastpath (the limit, concurrency 1 only); the services use "
            f"`{self.served_path}`. An answer counts as ok only if it carries a prediction.",
            "",
            *self.table(),
            "",
            f"The same HTTP targets under wrk ({self.wrk_version}; {self.wrk_seconds:g} s per "
            "level; ok means an HTTP status below 400):",
            "",
            *(self.table(wrk=True) if self.wrk else ["wrk was not run (not installed)."]),
            "",
            "| target | measured | limit | result |",
            "| --- | ---: | ---: | --- |",
        ]
        for check in self.checks():
            met = {True: "met", False: "**MISSED**", None: "not measured"}[check["met"]]
            value = "-" if check["value"] is None else check["value"]
            lines.append(f"| {check['target']} | {value} | {check['limit']} | {met} |")
        errors = [
            f"- {t.name} at {lv.concurrency}: " + "; ".join(lv.error_samples)
            for t in self.targets
            for lv in t.levels
            if lv.error_samples
        ]
        if errors:
            lines += ["", "Error samples:", *errors]
        lines += [
            "",
            f"Machine: {m.get('cpus')} CPUs ({m.get('cpu_model')}), load average "
            f"{m.get('loadavg_before')} before the run, Python {m.get('python')}, "
            f"bentoml {m.get('bentoml')}, mlflow {m.get('mlflow')}, scikit-learn "
            f"{m.get('scikit-learn')}, pandas {m.get('pandas')}, aiohttp {m.get('aiohttp')}; "
            f"run {m.get('when')}.",
        ]
        return "\n".join(lines)


def machine_facts() -> dict[str, str]:
    """Cores, CPU model, load and library versions, for the results files."""
    cpu_model = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    facts = {
        "cpus": str(os.cpu_count()),
        "cpu_model": cpu_model or "unknown",
        "loadavg_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "python": platform.python_version(),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    for dist in ("bentoml", "mlflow", "scikit-learn", "pandas", "aiohttp"):
        facts[dist] = dist_version(dist)
    return facts


# --- inputs: a champion and real records ---


def ensure_champion(settings: Settings, model: str, say: Say) -> Any:
    """The model's ``ChampionInfo``; trains one on the default window when there is none."""
    from fleet.registry import champion_info

    info = champion_info(settings, model)
    if info is not None:
        return info
    say(
        f"{model} has no @champion in {settings.tracking_uri}: running ETL + training on the "
        f"window ending {BOOTSTRAP_UNTIL} (as `fleet train {model} --until {BOOTSTRAP_UNTIL}`)"
    )
    from flows.train import train_fleet_flow

    (outcome,) = train_fleet_flow(models=[model], until=BOOTSTRAP_UNTIL)
    say(f"{model}: version {outcome.version} {outcome.status}: {outcome.message}")
    info = champion_info(settings, model)
    if info is None:
        raise RuntimeError(f"bootstrap training left {model} without a @champion: {outcome}")
    return info


def request_records(
    settings: Settings, spec: ModelSpec, info: Any, n: int = RECORDS, seed: int = 13
) -> list[dict[str, Any]]:
    """``n`` real records from the champion's window in the lake, each a valid request."""
    from fleet import lake, serving

    first, last = info.window.days
    paths = lake.partitions_in(settings.lake_dir, spec.dataset.name, first, last)
    if not paths:
        raise RuntimeError(
            f"the lake has no {spec.dataset.name} partitions for {first}..{last}; run "
            f"`fleet etl --start {first} --end {last}`"
        )
    frame = lake.read_partitions(paths)
    frame = frame.sample(n=min(n, len(frame)), random_state=seed)
    validator = serving.request_model(spec)
    records = []
    for record in serving.json_records(spec, frame):
        # a row the service would refuse with a 400 measures nothing about serving
        with contextlib.suppress(ValueError):
            validator.model_validate(record)
            records.append(record)
    if not records:
        raise RuntimeError(f"no row of {first}..{last} is a valid {spec.name} request")
    return records


# --- the targets ---


def time_in_process(
    predictor: Any, records: list[dict[str, Any]], requests: int, warmup: int
) -> LevelResult:
    """One record at a time through ``predictor`` (``fleet.fastpath``), one thread."""
    from fleet import training

    def one(record: dict[str, Any]) -> None:
        (answer,) = predictor.predict_records([record])
        if not answer:
            raise RuntimeError(f"empty prediction for {record}")

    latencies: list[float] = []
    with training.limit_threads(1):  # as in the services
        for i in range(warmup):
            one(records[i % len(records)])
        t0 = time.perf_counter()
        for i in range(requests):
            s = time.perf_counter()
            one(records[i % len(records)])
            latencies.append((time.perf_counter() - s) * 1000)
        wall = time.perf_counter() - t0
    lat = sorted(latencies)
    return LevelResult(
        concurrency=1,
        requests=requests,
        ok=requests,
        errors=0,
        error_samples=[],
        wall_s=round(wall, 3),
        req_per_s=round(requests / wall, 1),
        p50_ms=round(percentile(lat, 50), 3),
        p95_ms=round(percentile(lat, 95), 3),
        p99_ms=round(percentile(lat, 99), 3),
        max_ms=round(lat[-1], 3),
        truncated=False,
    )


def scratch_settings(settings: Settings) -> Settings:
    """A state root for the bench's processes that shares ``settings``' registry.

    Result store and prediction log are forced to SQLite under the scratch root, whatever
    the environment says, so bench traffic never reaches the fleet's stores.
    """
    return Settings(
        home=settings.root / "bench" / "serve",
        MLFLOW_TRACKING_URI=settings.tracking_uri,
        results_url=None,
        predictions_url=None,
    )


def _mlflow_executable() -> str:
    return str(Path(sys.executable).with_name("mlflow"))


def _wait_ping(running: Any, timeout: float) -> None:
    """mlflow's scoring server answers /ping, not /readyz."""
    from fleet import processes

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{running.url}/ping", timeout=1).status_code == 200:
                return
        if not processes.is_alive(running):
            break
        time.sleep(0.25)
    log = Path(running.log).read_text(errors="replace")[-3000:]
    raise processes.NotHealthy(f"mlflow serve did not answer {running.url}/ping:\n{log}")


@contextlib.contextmanager
def serving_processes(
    scratch: Settings, model: str, version: str, tag: str, workers: int, timeout: float = 180.0
) -> Iterator[dict[str, str]]:
    """Model service + gateway (``fleet serve``'s micro plan), the FastAPI peer and
    mlflow serve; base URLs.

    Every process is stopped on exit, also on errors, Ctrl-C and SIGTERM.
    """
    from fleet import processes, topology
    from fleet.settings import TELEMETRY_OFF

    host = scratch.serve_host
    # leftovers of an interrupted earlier run (recorded under the scratch root only)
    processes.stop_all(scratch, grace=5)
    ports = scratch.model_copy(
        update={
            "gateway_port": processes.free_port(host),
            # the model's port is base + its catalog index; pick the base to land on a free one
            "model_port_base": processes.free_port(host)
            - (topology.resolve_models(None).index(model)),
        }
    )
    started: list[Any] = []

    def on_sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    port = processes.free_port(host)
    model_uri = f"models:/{model}/{version}"
    command = [_mlflow_executable(), "models", "serve", "-m", model_uri, "--env-manager",
               "local", "-h", host, "-p", str(port), "-w", str(workers)]  # fmt: skip
    peer = processes.Launch(
        name="mlflow-serve",
        command=command,
        host=host,
        port=port,
        env={
            **TELEMETRY_OFF,
            "MLFLOW_TRACKING_URI": scratch.tracking_uri,
            "OMP_NUM_THREADS": "1",  # as the model services: same threads per worker
            # mlflow execs `uvicorn` by name: the one beside this interpreter
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
        },
        cwd=scratch.root,
    )
    plain_port = processes.free_port(host)
    plain = processes.Launch(
        name="fastapi-peer",
        command=[
            str(Path(sys.executable).with_name("uvicorn")),
            "bench.peer_app:app",
            "--host",
            host,
            "--port",
            str(plain_port),
            "--workers",
            str(workers),
            "--no-access-log",
        ],
        host=host,
        port=plain_port,
        env={**topology.service_env(scratch), **topology.model_env(model, tag)},
        cwd=REPO_ROOT,
    )
    # SIGTERM (a CI runner, `kill`) unwinds like Ctrl-C; handlers are main-thread only
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, on_sigterm) if main else None
    try:
        # mlflow serve loads while the model service and then the gateway start
        mlflow_serve = processes.start(scratch, peer)
        started.append(mlflow_serve)
        fastapi_peer = processes.start(scratch, plain)
        started.append(fastapi_peer)
        plan = topology.plan(ports, "micro", [model], {model: tag})
        started += topology.start_plan(ports, plan, timeout=timeout, supervise=False)
        _wait_ping(mlflow_serve, timeout)
        processes.wait_healthy(fastapi_peer, timeout)
        urls = {r.name: r.url for r in started}
        yield {SERVICE: urls[model], GATEWAY: urls[topology.GATEWAY],
               FASTAPI: fastapi_peer.url, MLFLOW: mlflow_serve.url}  # fmt: skip
    finally:
        for running in reversed(started):
            processes.stop(scratch, running, grace=10)
        if main:
            signal.signal(signal.SIGTERM, previous)


def http_targets(spec: ModelSpec, urls: dict[str, str]) -> dict[str, tuple[str, Callable, list]]:
    """name -> (URL, body of one record, dotted paths an ok answer must hold)."""
    record_kind = spec.dataset.record
    answer = "probability" if spec.task == "classification" else "value"
    return {
        SERVICE: (
            f"{urls[SERVICE]}/predict",
            lambda r: {"record": r},
            [f"prediction.{answer}"],
        ),
        GATEWAY: (
            f"{urls[GATEWAY]}/predict",
            lambda r: {record_kind: r, "models": [spec.name]},
            [f"results.{spec.name}.prediction.{answer}"],
        ),
        FASTAPI: (
            f"{urls[FASTAPI]}/predict",
            lambda r: {"record": r},
            [f"prediction.{answer}"],
        ),
        MLFLOW: (
            f"{urls[MLFLOW]}/invocations",
            lambda r: {"dataframe_records": [r]},
            ["predictions.0"],
        ),
    }


def run_serve_bench(
    settings: Settings,
    model: str = "flight_delay",
    requests: int = 2000,
    warmup: int = 200,
    levels: tuple[int, ...] = LEVELS,
    time_bound_s: float = 180.0,
    out_dir: Path = RESULTS_DIR,
    say: Say = print,
    start_timeout_s: float = 300.0,
) -> ServeBench:
    """Run every target and write ``serve.json`` + ``serve.md`` to ``out_dir``."""
    from fleet import bento_store as store
    from fleet import fastpath

    spec = get_model(model)
    info = ensure_champion(settings, model, say)
    version = str(info.version)
    say(f"{model}: @champion is version {version}; importing it into the Bento store")
    tag = store.import_champion(settings, model)
    scratch = scratch_settings(settings)
    scratch.root.mkdir(parents=True, exist_ok=True)
    store.import_champion(scratch, model)  # the services load from the scratch root's store
    records = request_records(settings, spec, info)
    bench = ServeBench(
        model=model,
        version=version,
        bento_tag=tag,
        workers=spec.serving.workers,
        requests=requests,
        warmup=warmup,
        records=len(records),
        levels=list(levels),
        machine=machine_facts(),
    )

    with store.model_store(settings):
        loaded = store.load_model(tag)

    logs = scratch.serving_dir / "logs"
    say(
        f"starting the {model} service ({spec.serving.workers} workers), the gateway and "
        f"mlflow serve on free loopback ports (logs under {logs})"
    )
    workers = spec.serving.workers
    with serving_processes(scratch, model, version, tag, workers, start_timeout_s) as urls:
        # measured while the servers idle, so that they do not disturb it
        served = fastpath.for_setting(spec, loaded.model, scratch.predict_path, loaded.example)
        bench.served_path = served.path
        for path in fastpath.PATHS:
            try:
                predictor = fastpath.build(spec, loaded.model, path)
            except ValueError:  # not this kind of model
                continue
            say(f"{in_process(path)}: {requests} single-record predicts")
            limit = time_in_process(predictor, records, requests, warmup)
            bench.targets.append(TargetResult(in_process(path), None, [limit]))
        for name, (url, body, require) in http_targets(spec, urls).items():
            say(f"{name}: {url}, concurrency {', '.join(map(str, levels))}")
            load = LoadSpec(
                url=url,
                bodies=[body(r) for r in records],
                levels=list(levels),
                requests=requests,
                warmup=warmup,
                time_bound_s=time_bound_s,
                require=require,
                headers=settings.auth_headers(),
            )
            bench.targets.append(TargetResult(name, url, run_load_process(load)))
        bench.wrk_version = wrk.version()
        if wrk.executable() is not None:
            # as long as our client's level took, at least a second, at most WRK_SECONDS
            seconds = bench.wrk_seconds = max(1.0, min(WRK_SECONDS, requests / 200))
            for name, (url, body, _) in http_targets(spec, urls).items():
                say(f"{name} under wrk: {seconds:g} s per level")
                bodies = [body(r) for r in records]
                headers = settings.auth_headers()
                levels_run = [wrk.run_wrk(url, bodies, c, seconds, headers) for c in levels]
                bench.wrk.append(TargetResult(name, url, levels_run))
        else:
            say("wrk is not installed (Debian: apt-get install wrk); our client only")

    out_dir.mkdir(parents=True, exist_ok=True)
    bench.json_path = out_dir / "serve.json"
    bench.markdown_path = out_dir / "serve.md"
    bench.json_path.write_text(json.dumps(bench.summary(), indent=2) + "\n")
    bench.markdown_path.write_text(bench.markdown() + "\n")
    return bench
