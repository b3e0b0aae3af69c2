"""The replay's scheduled arm: the cron job most teams run instead of a closed loop.

Every step, once the week's labels are in the lake, each model is retrained on its
spec's window ending there and judged by the same champion gate as the loop's
(``fleet.registry.judge``: paired test, margin, baseline) against the arm's own
champion; that is what the project's ``train-<model>`` deployments do on their weekly
schedule. It starts from the bootstrap champions (the frozen fleet) and is scored on
exactly the rows the loop and the frozen fleet are scored on. Nothing is served or
registered: the arm trains in memory from the replay's lake, so it costs training time
only and leaves no state behind.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import pandas as pd

from fleet import pipeline, registry, training
from fleet.catalog import get_model
from fleet.settings import Settings


@dataclass
class ArmModel:
    """One model in the scheduled arm."""

    champion: Any
    champion_until: date | None = None  # None: still the bootstrap champion
    retrains: int = 0
    promotions: list[str] = field(default_factory=list)  # days the champion moved
    train_seconds: float = 0.0  # in ``training.fit``, as the loop's ``fit`` timing
    last: str = ""  # what the last retraining ended as, with the gate's reason


@dataclass
class ScheduledArm:
    settings: Settings
    models: dict[str, ArmModel]

    @classmethod
    def starting_from(cls, settings: Settings, champions: dict[str, Any]) -> ScheduledArm:
        return cls(settings, {name: ArmModel(model) for name, model in champions.items()})

    def score(self, name: str, labelled: pd.DataFrame) -> float | None:
        """The arm's champion's metric on the week's labelled rows (None without rows)."""
        spec = get_model(name)
        if len(labelled) == 0:
            return None
        X = training.feature_frame(spec, labelled[list(spec.features)])
        value = training.score(spec, self.models[name].champion, X, labelled[spec.target])
        return value[spec.promotion.metric]

    def retrain(self, name: str, until: date) -> str:
        """Train on the window ending at ``until`` and gate it: promoted, kept or failed."""
        spec = get_model(name)
        arm = self.models[name]
        arm.retrains += 1
        try:
            window = training.training_window(spec, until)
            frame, _ = pipeline.read_window(self.settings, spec, window)
            train_rows, hold_rows = training.split_by_window(spec, frame, window)
            X, y = training.training_frame(spec, train_rows)
            X_hold, y_hold = training.training_frame(spec, hold_rows)
            t0 = time.perf_counter()
            candidate = training.fit(spec, X, y)
            arm.train_seconds += time.perf_counter() - t0
            baseline = training.baseline_score(spec, y, X_hold, y_hold)[spec.promotion.metric]
            promoted, reason, _ = registry.judge(
                spec, candidate, arm.champion, X_hold, y_hold, baseline
            )
        except Exception as exc:  # one failed week is the arm's row, as in the loop
            arm.last = f"failed: {exc}"
            return "failed"
        if promoted:
            arm.champion, arm.champion_until = candidate, until
            arm.promotions.append(until.isoformat())
        arm.last = reason
        return "promoted" if promoted else "kept"
