"""Checks that a built artifact runs where this repository is not: a fresh environment
made from the artifact's own requirements file, and an empty working directory.

Used by the tests and by ``fleet bench bentos``. Environments are made with ``uv`` from
the package cache; only when the cache cannot answer does uv ask the package index.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from fleet.settings import TELEMETRY_OFF

REPO_UV = Path(__file__).resolve().parent.parent / ".uv" / "bin" / "uv"


class CheckError(RuntimeError):
    """The artifact did not install, start or answer; the message carries the output."""


def uv_executable() -> str:
    """The Makefile's private uv, else one on PATH."""
    if REPO_UV.exists():
        return str(REPO_UV)
    found = shutil.which("uv")
    if found is None:
        raise CheckError("no `uv` found: run `make setup` or `pip install uv`")
    return found


@dataclass(frozen=True)
class FreshEnv:
    """A virtual environment holding exactly one requirements file's packages."""

    root: Path
    seconds: float
    source: str  # "cache" (offline) or "index"

    @property
    def bin(self) -> Path:
        return self.root / "bin"


def fresh_venv(dest: Path, requirements: Path, timeout: float = 900) -> FreshEnv:
    """A new venv at ``dest`` with ``requirements`` installed, nothing else.

    Offline from the package cache first; from the package index if the cache lacks a
    package (the index is the only host ever contacted).
    """
    started = time.perf_counter()
    uv = uv_executable()
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
    env.pop("VIRTUAL_ENV", None)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    made = subprocess.run(
        [uv, "venv", "--quiet", "--python", version, str(dest)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if made.returncode != 0:
        raise CheckError(f"uv venv failed:\n{made.stderr[-2000:]}")
    install = [uv, "pip", "install", "--quiet", "--python", str(dest / "bin" / "python"),
               "-r", str(requirements)]  # fmt: skip
    source = "cache"
    done = subprocess.run([*install, "--offline"], env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip
    if done.returncode != 0:
        source = "index"
        done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise CheckError(f"installing {requirements} failed:\n{done.stderr[-3000:]}")
    return FreshEnv(dest, round(time.perf_counter() - started, 1), source)


def clean_env(**extra: str) -> dict[str, str]:
    """A child environment that knows nothing of this checkout: no PYTHONPATH, no venv."""
    keep = ("HOME", "LANG", "LC_ALL", "TMPDIR", "USER")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin"
    return {**env, **TELEMETRY_OFF, **extra}


@dataclass
class Served:
    """A server started from a fresh environment; ``stop`` ends it and its workers."""

    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    seconds_to_ready: float = 0.0

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)


def start(
    command: list[str], cwd: Path, env: dict[str, str], url: str, log: Path,
    health: str = "/readyz", timeout: float = 240,
) -> Served:  # fmt: skip
    """Start ``command`` in its own process group and wait until ``url + health`` is 200."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with log.open("wb") as out:
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    served = Served(url, proc, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise CheckError(f"{command[0]} exited ({proc.returncode}):\n{_tail(log)}")
        try:
            if httpx.get(url + health, timeout=2).status_code == 200:
                served.seconds_to_ready = round(time.perf_counter() - started, 1)
                return served
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    served.stop()
    raise CheckError(f"{url}{health} did not answer in {timeout:.0f} s:\n{_tail(log)}")


@contextlib.contextmanager
def serving(*servers: Served) -> Iterator[tuple[Served, ...]]:
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def openapi_example(url: str, route: str = "/predict") -> dict[str, Any]:
    """The request example a running BentoML service publishes for ``route``."""
    spec = httpx.get(f"{url}/docs.json", timeout=10).json()
    body = spec["paths"][route]["post"]["requestBody"]["content"]["application/json"]
    schema = body["schema"]
    if "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    example = body.get("example") or schema.get("example")
    if example is None:  # a model service: {"record": <the record model's example>}
        props = schema["properties"]
        record = props["record"]
        if "$ref" in record:
            record = spec["components"]["schemas"][record["$ref"].rsplit("/", 1)[-1]]
        example = {"record": record["example"]}
    return json.loads(json.dumps(example))
