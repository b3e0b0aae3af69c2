"""``fleet bench bentos``: every model's Bento and the gateway's, built and served the way a
deployment would run them, outside this repository.

For each model (a champion is trained first where there is none): ``fleet build``'s
build, timed; then one fresh virtual environment from the Bentos' own
``requirements.txt`` (they are the same file); then, from an empty folder, every model
Bento served in that environment (time to ``/readyz``, one ``/predict`` with the OpenAPI
example) and the gateway's Bento in front of them (one request for every model). The
CI tests do this for one tabular and one text model; this check covers the whole fleet.
"""

from __future__ import annotations

import json
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.serve import ensure_champion
from bentos import build, check
from fleet import bento_store as store
from fleet import catalog, processes
from fleet.settings import REPO_ROOT, Settings

RESULTS_DIR = REPO_ROOT / "bench" / "results"
HOST = "127.0.0.1"


@dataclass
class BentoRow:
    name: str
    tag: str
    build_s: float
    ready_s: float | None = None
    predict_status: int | None = None
    predict_ms: float | None = None
    detail: str = ""


@dataclass
class BentosBench:
    rows: list[BentoRow]
    venv_s: float
    venv_source: str
    venv_mb: float
    requirements: int
    machine: dict[str, Any] = field(default_factory=dict)
    json_path: Path | None = None
    markdown_path: Path | None = None

    @property
    def all_served(self) -> bool:
        return all(r.predict_status == 200 for r in self.rows)

    def markdown(self) -> str:
        lines = [
            "# `fleet bench bentos`: every Bento served from a fresh environment",
            "",
            f"One virtual environment made from the Bentos' own requirements.txt "
            f"({self.requirements} pinned packages, {self.venv_mb:.0f} MB): "
            f"{self.venv_s:.1f} s (from the {self.venv_source}). Each Bento served with "
            "`bentoml serve <tag>` from an empty folder in it.",
            "",
            "| Bento | build s | start to /readyz s | /predict (OpenAPI example) | ms |",
            "| --- | ---: | ---: | --- | ---: |",
        ]
        for r in self.rows:
            status = "-" if r.predict_status is None else str(r.predict_status)
            ready = "-" if r.ready_s is None else f"{r.ready_s:.1f}"
            ms = "-" if r.predict_ms is None else f"{r.predict_ms:.0f}"
            lines.append(f"| `{r.tag}` | {r.build_s:.1f} | {ready} | {status} {r.detail} | {ms} |")
        verdict = "every Bento answered" if self.all_served else "NOT every Bento answered"
        lines += ["", f"Result: {verdict}. Machine: {self.machine}", ""]
        return "\n".join(lines)


def _predict(url: str, body: dict[str, Any]) -> tuple[int, float, str]:
    started = time.perf_counter()
    answer = httpx.post(f"{url}/predict", json=body, timeout=60)
    ms = (time.perf_counter() - started) * 1000
    return answer.status_code, ms, "" if answer.status_code == 200 else answer.text[:200]


def _size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def run_bentos_bench(
    settings: Settings,
    models: list[str] | None = None,
    out_dir: Path = RESULTS_DIR,
    say: Callable[[str], None] = print,
) -> BentosBench:
    names = models or catalog.model_names()
    for name in names:
        ensure_champion(settings, name, say)
    rows: list[BentoRow] = []
    built: dict[str, build.Built] = {}
    for name in [*names, build.GATEWAY]:
        say(f"building the {name} Bento ...")
        done = build.build_gateway(settings) if name == build.GATEWAY else (
            build.build_model(settings, name)
        )  # fmt: skip
        built[name] = done
        rows.append(BentoRow(name, done.tag, done.seconds))
    files = {(b.path / "env" / "python" / "requirements.txt").read_text() for b in built.values()}
    if len(files) != 1:
        raise RuntimeError("the Bentos' requirements differ; one environment cannot serve them")
    by_name = {r.name: r for r in rows}
    with tempfile.TemporaryDirectory(prefix="fleet-bentos-") as tmp:
        root = Path(tmp)
        requirements = root / "requirements.txt"
        requirements.write_text(files.pop())
        say("making a fresh environment from the Bentos' requirements.txt ...")
        venv = check.fresh_venv(root / "venv", requirements)
        empty = root / "empty"
        empty.mkdir()
        env = check.clean_env(
            BENTOML_HOME=str(store.bentoml_home(settings)), FLEET_HOME=str(empty / "var")
        )
        bentoml_cli = str(venv.bin / "bentoml")
        ports = {name: processes.free_port(HOST) for name in built}
        servers = []

        def serve(name: str, serve_env: dict[str, str]) -> check.Served:
            command = [bentoml_cli, "serve", built[name].tag, "--host", HOST,
                       "--port", str(ports[name])]  # fmt: skip
            url = f"http://{HOST}:{ports[name]}"
            return check.start(command, empty, serve_env, url, root / f"{name}.log")

        try:
            for name in names:
                say(f"serving {built[name].tag} from the fresh environment ...")
                server = serve(name, env)
                servers.append(server)
                row = by_name[name]
                row.ready_s = server.seconds_to_ready
                row.predict_status, row.predict_ms, row.detail = _predict(
                    server.url, check.openapi_example(server.url)
                )
            backends = {name: f"http://{HOST}:{ports[name]}" for name in names}
            gateway = serve(build.GATEWAY, {**env, "FLEET_GATEWAY_BACKENDS": json.dumps(backends)})
            servers.append(gateway)
            row = by_name[build.GATEWAY]
            row.ready_s = gateway.seconds_to_ready
            body = {**check.openapi_example(gateway.url), "models": names}
            row.predict_status, row.predict_ms, row.detail = _predict(gateway.url, body)
        finally:
            for server in servers:
                server.stop()
        lines = requirements.read_text().split()
        results = BentosBench(
            rows, venv.seconds, venv.source, _size_mb(venv.root), len(lines),
            machine={"python": platform.python_version(), "cpus": _cpus()},
        )  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    results.json_path = out_dir / "bentos.json"
    results.markdown_path = out_dir / "bentos.md"
    data = asdict(results)
    data.pop("json_path")
    data.pop("markdown_path")
    results.json_path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    results.markdown_path.write_text(results.markdown())
    return results


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))
