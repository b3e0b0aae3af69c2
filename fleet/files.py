"""Files that a reader never sees half-written."""

from __future__ import annotations

import os
import threading
from pathlib import Path


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` beside ``path`` and rename it over ``path`` (parents made).

    The temporary name is unique per process and thread, so two writers at once (two
    monitors finishing together, say) never write into each other's file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path
