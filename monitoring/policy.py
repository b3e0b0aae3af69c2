"""The retraining trigger policy of a model spec (``DriftPolicy``), as one pure function.

Fires when the window has at least ``min_rows`` new rows and either the share of drifted
monitored columns is at or above ``share_threshold``, or (with at least ``min_rows``
labelled rows) the quality metric has dropped by at least ``quality_drop`` below the
champion's recorded holdout score, in the metric's own units and direction (a rise for
MAE). Inside ``cooldown_days`` of the last time it fired, it does not fire again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fleet.catalog import DriftPolicy, PromotionRule


@dataclass(frozen=True)
class TriggerDecision:
    fire: bool
    reason: str
    drift: bool = False  # the drift rule held
    quality_drop: float | None = None  # champion score minus window score, signed "worse"
    firing: str | None = None  # the claimed firing's id (monitoring.claims), when it fires

    @property
    def label(self) -> str:
        return "retrain" if self.fire else "no action"


def quality_drop(
    rule: PromotionRule, champion: float | None, current: float | None
) -> float | None:
    """How much worse the window is than the champion's holdout (positive = worse)."""
    if champion is None or current is None or math.isnan(champion) or math.isnan(current):
        return None
    return champion - current if rule.greater_is_better else current - champion


def decide(
    policy: DriftPolicy,
    rule: PromotionRule,
    *,
    rows: int,
    labelled: int,
    drift_share: float,
    quality: float | None,
    champion_score: float | None,
    last_fired: datetime | None,
    now: datetime,
) -> TriggerDecision:
    """Whether this window fires a retraining, and why (or why not) in words."""
    drop = quality_drop(rule, champion_score, quality)
    if rows < policy.min_rows:
        return TriggerDecision(False, f"only {rows} new rows (policy needs {policy.min_rows})")
    drifted = drift_share >= policy.share_threshold
    degraded = labelled >= policy.min_rows and drop is not None and drop >= policy.quality_drop
    causes = []
    if drifted:
        causes.append(f"drift share {drift_share:.2f} >= {policy.share_threshold:.2f}")
    if degraded:
        causes.append(
            f"{rule.metric} {quality:.4f} is {drop:.4f} worse than the champion's "
            f"{champion_score:.4f} (limit {policy.quality_drop})"
        )
    if not causes:
        parts = [f"drift share {drift_share:.2f} < {policy.share_threshold:.2f}"]
        if drop is None:
            parts.append("no quality yet (no labels)" if labelled == 0 else "quality undefined")
        elif labelled < policy.min_rows:
            parts.append(f"only {labelled} labelled rows for the quality rule")
        else:
            parts.append(f"{rule.metric} within {policy.quality_drop} of the champion")
        return TriggerDecision(False, "; ".join(parts), drifted, drop)
    if last_fired is not None and now - last_fired < timedelta(days=policy.cooldown_days):
        until = last_fired + timedelta(days=policy.cooldown_days)
        return TriggerDecision(
            False,
            f"{' and '.join(causes)}, but in cooldown until {until:%Y-%m-%d %H:%M} "
            f"(fired {last_fired:%Y-%m-%d %H:%M})",
            drifted,
            drop,
        )
    return TriggerDecision(True, " and ".join(causes), drifted, drop)
