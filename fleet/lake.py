"""The local data lake: one Parquet file per dataset and day under ``$FLEET_HOME/lake``.

Layout: ``lake/<dataset>/date=YYYY-MM-DD/part.parquet`` (Hive-style, readable by any
Parquet engine). Writes are atomic (temporary file + rename) so a crash never leaves a
half-written partition that a later incremental run would skip.

``lake/<dataset>/_validated.json`` records the content digest of every partition that
passed the validation gate. A partition whose bytes changed since (a manual fix, a bad
upstream copy) no longer matches and is validated again before training uses it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from datetime import date, timedelta
from pathlib import Path

import pandas as pd

PART_FILE = "part.parquet"
VALIDATED_FILE = "_validated.json"


def partition_path(lake_dir: Path, dataset: str, day: date) -> Path:
    return lake_dir / dataset / f"date={day.isoformat()}" / PART_FILE


def days(start: date, end: date) -> list[date]:
    """Every day from start to end, both included."""
    if end < start:
        raise ValueError(f"end {end} is before start {start}")
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


def existing_days(lake_dir: Path, dataset: str) -> set[date]:
    root = lake_dir / dataset
    if not root.exists():
        return set()
    found = set()
    for part in root.glob(f"date=*/{PART_FILE}"):
        found.add(date.fromisoformat(part.parent.name.removeprefix("date=")))
    return found


def write_partition(lake_dir: Path, dataset: str, day: date, frame: pd.DataFrame) -> Path:
    path = partition_path(lake_dir, dataset, day)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    frame.to_parquet(tmp, index=False)
    tmp.replace(path)
    return path


def partitions_in(lake_dir: Path, dataset: str, start: date, end: date) -> list[Path]:
    """Existing partition files for the days in [start, end], in date order."""
    paths = (partition_path(lake_dir, dataset, d) for d in days(start, end))
    return [p for p in paths if p.exists()]


def read_partitions(paths: Iterable[Path]) -> pd.DataFrame:
    frames = [pd.read_parquet(p) for p in paths]
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True)


def digest(paths: Iterable[Path]) -> str:
    """Content digest of the exact partition files used: the lineage key for a run."""
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.parent.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _manifest_path(lake_dir: Path, dataset: str) -> Path:
    return lake_dir / dataset / VALIDATED_FILE


def validated_digests(lake_dir: Path, dataset: str) -> dict[str, str]:
    """Partition folder name (``date=...``) -> digest of the content that passed."""
    path = _manifest_path(lake_dir, dataset)
    return json.loads(path.read_text()) if path.exists() else {}


def mark_validated(lake_dir: Path, dataset: str, paths: Iterable[Path]) -> None:
    """Record the current content of ``paths`` as validated (atomic rewrite).

    Two writers racing may drop an entry; the cost is one extra validation later.
    """
    manifest = validated_digests(lake_dir, dataset)
    manifest.update({p.parent.name: file_digest(p) for p in paths})
    target = _manifest_path(lake_dir, dataset)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(dict(sorted(manifest.items())), indent=0))
    tmp.replace(target)


def unvalidated(lake_dir: Path, dataset: str, paths: Iterable[Path]) -> list[Path]:
    """The partitions whose content never passed the gate (or changed since)."""
    manifest = validated_digests(lake_dir, dataset)
    return [p for p in paths if manifest.get(p.parent.name) != file_digest(p)]


def load_partitions(
    lake_dir: Path, dataset: str, partitions: dict[date, pd.DataFrame]
) -> list[Path]:
    """Write partitions that just passed validation, and record them as validated."""
    paths = [write_partition(lake_dir, dataset, d, f) for d, f in sorted(partitions.items())]
    mark_validated(lake_dir, dataset, paths)
    return paths
