"""The retraining trigger policy of a model spec (``DriftPolicy``), as one pure function.

Fires when the window has at least ``min_rows`` new rows and either

- **drift**: the share of drifted *judged* columns is at or above ``share_threshold``
  (the spec's ``drift.features`` excludes calendar columns and watches seasonal ones,
  which are shown but never counted; some columns carry their own threshold), or
- **quality**: with at least ``min_rows`` labelled rows, the metric has dropped below
  the champion's recorded holdout score by more than ``quality_drop`` *at the drop's
  lower confidence bound* (one-sided, ``confidence``): the drop's standard error joins
  the window's (``fleet.stats``) and the champion holdout's, so a week that is worse by
  chance does not fire, and a real fall of a few hundredths does.

Inside ``cooldown_days`` of the last time it fired, it does not fire again.
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


def drop_bound(
    policy: DriftPolicy,
    drop: float | None,
    quality_se: float | None,
    champion_se: float | None,
) -> float | None:
    """The drop's lower confidence bound (None without a drop)."""
    from fleet.stats import z_value

    if drop is None:
        return None
    se = math.hypot(quality_se or 0.0, champion_se or 0.0)
    return drop - z_value(policy.confidence) * se if math.isfinite(se) else -math.inf


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
    quality_se: float | None = None,
    champion_se: float | None = None,
    estimate: float | None = None,
    estimate_se: float | None = None,
) -> TriggerDecision:
    """Whether this window fires a retraining, and why (or why not) in words.

    ``estimate``: the metric estimated without labels (CBPE); it stands in for the
    measured quality when there are too few labelled rows, judged the same way.
    """
    if rows < policy.min_rows:
        return TriggerDecision(False, f"only {rows} new rows (policy needs {policy.min_rows})")
    enough = labelled >= policy.min_rows
    estimated = not enough and estimate is not None and math.isfinite(estimate)
    if estimated:
        quality, quality_se, labelled = estimate, estimate_se, rows
    drop = quality_drop(rule, champion_score, quality)
    bound = drop_bound(policy, drop, quality_se, champion_se)
    level = f"{policy.confidence:.0%}"
    drifted = drift_share >= policy.share_threshold
    enough = enough or estimated
    rule_name = f"{rule.metric} (estimated without labels, CBPE)" if estimated else rule.metric
    degraded = enough and bound is not None and bound > policy.quality_drop
    causes = []
    if drifted:
        causes.append(f"drift share {drift_share:.2f} >= {policy.share_threshold:.2f}")
    if degraded:
        causes.append(
            f"{rule_name} {quality:.4f} is {drop:.4f} worse than the champion's "
            f"{champion_score:.4f}, at least {bound:.4f} at {level} confidence "
            f"(fires above {policy.quality_drop})"
        )
    if not causes:
        parts = [f"drift share {drift_share:.2f} < {policy.share_threshold:.2f}"]
        if drop is None:
            parts.append("no quality yet (no labels)" if labelled == 0 else "quality undefined")
        elif not enough:
            parts.append(f"only {labelled} labelled rows for the quality rule")
        else:
            parts.append(
                f"{rule_name} {quality:.4f} vs the champion's {champion_score:.4f}: drop "
                f"{drop:+.4f}, lower bound {bound:+.4f} at {level} (fires above "
                f"{policy.quality_drop})"
            )
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
