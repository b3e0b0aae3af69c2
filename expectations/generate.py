"""Regenerate the committed GX suites from the catalog: ``python expectations/generate.py``.

Tuning belongs in the dataset specs (``catalog/datasets/``); this only writes what
``fleet.suites`` derives, for review in git (the gate derives the same suites itself).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a clean checkout without installing

from fleet.suites import write_suites  # noqa: E402


def main() -> None:
    for path in write_suites(HERE):
        print(f"wrote {path.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
