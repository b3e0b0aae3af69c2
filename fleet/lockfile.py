"""Pinned requirements derived from the lock, for environments built elsewhere (Bentos).

:func:`pinned_closure` walks ``uv.lock`` from a few root packages through every
dependency (extras and environment markers included) and pins each package to its
locked version: the Bento's ``requirements.txt`` is the lock's own subset, never a
hand-copied list. Where no ``uv.lock`` exists (modelfleet installed as a package), the
same walk runs over the installed distributions' metadata, which a locked install made.
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement

LOCK_FILE = Path(__file__).resolve().parent.parent / "uv.lock"


class LockError(RuntimeError):
    """A root package is not in the lock (or not installed); the message names it."""


def normalize(name: str) -> str:
    """PEP 503 name: ``Pydantic_Settings`` -> ``pydantic-settings``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _applies(marker: str | None, extra: str = "") -> bool:
    return marker is None or Marker(marker).evaluate({"extra": extra})


def _split(root: str) -> tuple[str, list[str]]:
    req = Requirement(root)
    return normalize(req.name), sorted(req.extras)


def _lock_closure(lock: Path, roots: list[str]) -> dict[str, str]:
    data = tomllib.loads(lock.read_text(encoding="utf-8"))
    packages: dict[str, dict] = {}
    for pkg in data.get("package", []):
        name = normalize(pkg["name"])
        if name in packages:
            raise LockError(f"{lock}: {name} is locked at several versions; pin it per platform")
        packages[name] = pkg
    pins: dict[str, str] = {}
    todo = [_split(root) for root in roots]
    seen: set[tuple[str, str]] = set()
    while todo:
        name, extras = todo.pop()
        pkg = packages.get(name)
        if pkg is None:
            raise LockError(f"{name} is not in {lock}; add it to pyproject.toml and run `uv lock`")
        pins[name] = pkg["version"]
        deps = list(pkg.get("dependencies", []))
        for extra in extras:
            if (name, extra) not in seen:
                seen.add((name, extra))
                deps += pkg.get("optional-dependencies", {}).get(extra, [])
        for dep in deps:
            if _applies(dep.get("marker")):
                dep_name = normalize(dep["name"])
                dep_extras = sorted(dep.get("extra", []))
                if dep_name not in pins or any((dep_name, e) not in seen for e in dep_extras):
                    todo.append((dep_name, dep_extras))
    return pins


def _installed_closure(roots: list[str]) -> dict[str, str]:
    pins: dict[str, str] = {}
    todo = [_split(root) for root in roots]
    seen: set[tuple[str, tuple[str, ...]]] = set()
    while todo:
        name, extras = todo.pop()
        if (name, tuple(extras)) in seen:
            continue
        seen.add((name, tuple(extras)))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise LockError(f"{name} is not installed; install the locked environment") from None
        pins[name] = dist.version
        for text in dist.requires or []:
            req = Requirement(text)
            wanted = req.marker is None or any(
                req.marker.evaluate({"extra": e}) for e in [*extras, ""]
            )
            if wanted:
                todo.append((normalize(req.name), sorted(req.extras)))
    return pins


def pinned_closure(roots: list[str], lock: Path = LOCK_FILE) -> list[str]:
    """``name==version`` for the roots and everything they need, sorted by name.

    Roots may carry extras (``psycopg[binary]``); they are kept on the root's own line.
    """
    pins = _lock_closure(lock, roots) if lock.is_file() else _installed_closure(roots)
    extras = {name: e for name, e in (_split(r) for r in roots) if e}
    lines = []
    for name in sorted(pins):
        suffix = f"[{','.join(extras[name])}]" if name in extras else ""
        lines.append(f"{name}{suffix}=={pins[name]}")
    return lines
