"""Schemathesis against a running service's own OpenAPI: no request it generates from
the document may get a server error (5xx)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"


def fuzz_for_server_errors(url: str, headers: dict[str, str], examples: int = 60) -> str:
    """Run ``schemathesis run`` (check: not_a_server_error) on ``url``; its output.

    Fixed seed, deterministic generation: a failure is reproducible with the same call.
    """
    args = [
        str(SCHEMATHESIS), "run", f"{url}/docs.json", "--url", url,
        "--checks", "not_a_server_error", "--max-examples", str(examples),
        "--seed", "1", "--generation-deterministic", "--workers", "1",
        "--phases", "examples,coverage,fuzzing", "--no-color",
    ]  # fmt: skip
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    return output
