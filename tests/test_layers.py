"""The layers of docs/architecture.md, held by the imports: the core package `fleet`
imports none of the shells (flows, bentos, monitoring) nor the benchmarks; only the CLI,
the outermost layer, reaches them."""

from __future__ import annotations

import ast
from pathlib import Path

from fleet.settings import REPO_ROOT

SHELLS = ("flows", "bentos", "monitoring", "bench")
OUTERMOST = {"cli.py"}


def _imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_the_core_imports_no_shell() -> None:
    core = sorted((REPO_ROOT / "fleet").glob("*.py"))
    assert len(core) > 10
    reaching = {
        path.name: sorted(n for n in _imported(path) if n.split(".")[0] in SHELLS)
        for path in core
        if path.name not in OUTERMOST
    }
    assert {name: found for name, found in reaching.items() if found} == {}


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from monitoring.job import run_monitor\n")
    assert "monitoring.job" in _imported(module)
