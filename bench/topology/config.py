"""The topology study's fixed settings: levels, machines, budgets, where results go."""

from __future__ import annotations

from collections.abc import Callable

from fleet.settings import REPO_ROOT

RESULTS_DIR = REPO_ROOT / "bench" / "results"
DOCS_DIR = REPO_ROOT / "docs"
PLOTS_SUBDIR = "topology"
BEGIN, END = "<!-- BEGIN fleet bench topology -->", "<!-- END fleet bench topology -->"

TOPOLOGIES = ("micro", "mono")
LEVELS = (1, 8, 32)
CALIBRATION_LEVEL = 4
MACHINES = (1, 2, 4, 8, 16, 32, 64)
LOAD_FRACTIONS = (0.2, 0.4, 0.6, 0.8, 0.9, 1.0, 1.1)
P99_BUDGET_MS = 50.0
NET_S = 0.0002  # one-way delay between two machines of a data centre (~0.4 ms round trip)
TARGET_VALIDATION_ERROR = 0.10  # mean relative error of throughput and p50
TARGET_P99_ERROR = 0.25
# pauses before a call, for a model service's CPU per call after sleeping (the wake-up)
WAKE_PAUSES = (0.0, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)

Say = Callable[[str], None]
