"""The serving benchmark's second load generator: ``wrk`` (Debian's package), from C.

Our own client (``bench.load``, httpx in its own process) is Python: at concurrency 32 it
may be what saturates first. ``wrk`` runs the same closed loop (``-c`` connections, each
sending its next request when the answer is in) from native threads, for a fixed time,
with a Lua script that POSTs the same JSON bodies in turn. It judges answers by HTTP
status alone (a gateway's 200 carrying a per-model error counts as ok); the Lua ``done``
hook prints the counts and latency percentiles as one JSON line.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from bench.load import LevelResult

MARK = "FLEET-WRK "
SCRIPT = """
local bodies = {
%(bodies)s
}
local headers = %(headers)s
local i = 0
request = function()
  i = i %% #bodies + 1
  return wrk.format("POST", nil, headers, bodies[i])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "%(mark)s{\\"requests\\": %%d, \\"duration_us\\": %%d, \\"connect\\": %%d, \\"read\\": %%d, "
    .. "\\"write\\": %%d, \\"status\\": %%d, \\"timeout\\": %%d, \\"p50\\": %%d, \\"p95\\": %%d, "
    .. "\\"p99\\": %%d, \\"max\\": %%d}\\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max))
end
"""


def executable() -> str | None:
    return shutil.which("wrk")


def version() -> str:
    """``wrk 4.1.0 ...``'s first line, or "not installed"."""
    found = executable()
    if found is None:
        return "not installed"
    run = subprocess.run([found, "-v"], capture_output=True, text=True, check=False)
    return (run.stdout or run.stderr).strip().splitlines()[0]


def _lua_string(text: str) -> str:
    level = 1
    while f"]{'=' * level}]" in text:
        level += 1
    return f"[{'=' * level}[{text}]{'=' * level}]"


def script(bodies: list[Any], headers: dict[str, str]) -> str:
    """The Lua script that POSTs ``bodies`` in turn with ``headers``."""
    lua_headers = {"Content-Type": "application/json", **headers}
    table = ", ".join(f"[ {_lua_string(k)} ] = {_lua_string(v)}" for k, v in lua_headers.items())
    return SCRIPT % {
        "bodies": ",\n".join(_lua_string(json.dumps(b)) for b in bodies),
        "headers": "{" + table + "}",
        "mark": MARK,
    }


def run_wrk(
    url: str,
    bodies: list[Any],
    concurrency: int,
    seconds: float,
    headers: dict[str, str] | None = None,
    timeout_s: float = 10.0,
) -> LevelResult:
    """One level: ``concurrency`` connections for ``seconds``; raises when wrk is absent."""
    found = executable()
    if found is None:
        raise FileNotFoundError("wrk is not installed (Debian: apt-get install wrk)")
    with tempfile.TemporaryDirectory() as tmp:
        lua = Path(tmp) / "bodies.lua"
        lua.write_text(script(bodies, headers or {}))
        command = [found, "-t", str(min(2, concurrency)), "-c", str(concurrency),
                   "-d", f"{max(1, round(seconds))}s", "--timeout", f"{timeout_s:g}s",
                   "-s", str(lua), url]  # fmt: skip
        run = subprocess.run(command, capture_output=True, text=True, check=False)
    line = next((ln for ln in run.stdout.splitlines() if ln.startswith(MARK)), None)
    if run.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({run.returncode}): {(run.stderr or run.stdout)[-500:]}")
    got = json.loads(line.removeprefix(MARK))
    errors = sum(got[k] for k in ("connect", "read", "write", "status", "timeout"))
    wall = got["duration_us"] / 1e6
    samples = [f"{k}: {got[k]}" for k in ("connect", "read", "write", "status", "timeout")
               if got[k]]  # fmt: skip
    return LevelResult(
        concurrency=concurrency,
        requests=got["requests"],
        ok=max(0, got["requests"] - got["status"]),
        errors=errors,
        error_samples=samples,
        wall_s=round(wall, 3),
        req_per_s=round(got["requests"] / wall, 1) if wall > 0 else 0.0,
        p50_ms=round(got["p50"] / 1000, 3),
        p95_ms=round(got["p95"] / 1000, 3),
        p99_ms=round(got["p99"] / 1000, 3),
        max_ms=round(got["max"] / 1000, 3),
        truncated=False,
    )
