"""The shadow test: a ``@challenger`` judged on labelled traffic that it and the champion
both answered.

A candidate the holdout could not decide (``fleet.registry.undecided``) is served as
``@challenger``. The gateway mirrors every request its model answers to it, and its
answers go to the prediction log as shadow rows under the same request ids. Once the
labels arrive (joined on the request id, as for the drift job), the requests both
answered form the paired sample of the champion gate's own test
(``fleet.stats.compare``: DeLong, McNemar's normal form, paired losses or a bootstrap).

The design is group-sequential: look ``k`` comes once ``k * shadow.min_rows`` paired
labelled rows are in, for at most ``shadow.looks`` looks. Each look tests at the level
``(1 - confidence) / looks`` (Bonferroni over the planned looks), so looking again as
traffic arrives does not raise the chance of promoting a challenger that is no better.
At each look:

- **promote** when the gain's lower bound exceeds ``promotion.margin``;
- **reject** when its upper bound is below the margin (more traffic cannot show the
  gain), or at the last look when it has still not cleared;
- otherwise **wait** for the next look.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Literal

import pandas as pd

from fleet import stats
from fleet.catalog import ModelSpec, get_model
from fleet.training import Predictions
from monitoring import drift, frames

if TYPE_CHECKING:
    from fleet.settings import Settings

Action = Literal["promote", "reject", "wait"]


@dataclass(frozen=True)
class ShadowVerdict:
    """One shadow test of a model's challenger, as recorded on the version."""

    model: str
    challenger: int
    champion: int
    action: Action
    reason: str
    rows: int  # paired labelled rows
    look: int  # 0: not enough rows for a look yet
    gain: float | None = None
    low: float | None = None
    high: float | None = None
    confidence: float | None = None
    method: str = ""

    def tags(self) -> dict[str, str]:
        """What the challenger version carries after this look (``registry.shadow_text``)."""
        tags = {"shadow_rows": str(self.rows), "shadow_reason": self.reason}
        if self.look:
            tags |= {
                "shadow_looks": str(self.look),
                "shadow_gain": f"{self.gain:.6g}",
                "shadow_gain_low": f"{self.low:.6g}",
                "shadow_gain_high": f"{self.high:.6g}",
                "shadow_gain_confidence": f"{self.confidence:.2%}",
                "shadow_gain_test": self.method,
            }
        return tags

    def text(self) -> str:
        """One line for the drift report, the index and the CLI."""
        return f"challenger v{self.challenger}: {self.action}, {self.reason}"


def look_confidence(spec: ModelSpec) -> float:
    """The one-sided confidence of each look: the gate's error rate split over the looks."""
    rule = spec.promotion
    return 1 - (1 - rule.confidence) / rule.shadow.looks


def judge_traffic(
    spec: ModelSpec,
    y: pd.Series,
    challenger: Predictions,
    champion: Predictions,
    look: int,
) -> tuple[Action, str, stats.Comparison, float, float]:
    """The decision of look ``look`` on paired labelled rows (pure)."""
    rule = spec.promotion
    level = look_confidence(spec)
    compared = stats.compare(spec, y.reset_index(drop=True), challenger, champion)
    low, high = compared.interval(level)
    bounds = (
        f"gain {compared.gain:+.4f} [{low:+.4f}, {high:+.4f}] at {level:.2%} "
        f"({compared.method}, {compared.rows} paired labelled rows, look {look} of "
        f"{rule.shadow.looks})"
    )
    action: Action
    if math.isfinite(low) and low > rule.margin:
        action, why = "promote", f"the lower bound clears the margin {rule.margin}"
    elif math.isfinite(high) and high < rule.margin:
        action, why = "reject", f"the upper bound is below the margin {rule.margin}"
    elif look >= rule.shadow.looks:
        action, why = "reject", f"the last look, and it does not clear the margin {rule.margin}"
    else:
        nxt = (look + 1) * rule.shadow.min_rows
        action, why = "wait", f"undecided; the next look at {nxt} paired labelled rows"
    return action, f"{bounds}: {why}", compared, low, high


def paired_rows(
    settings: Settings, spec: ModelSpec, champion: int, challenger: int
) -> pd.DataFrame:
    """Requests both versions answered, with labels where they have arrived.

    Columns: ``request_id``, ``event_time``, the target, the champion's ``prediction_*``
    and the challenger's as ``challenger_prediction_*``.
    """
    from fleet.predictions import PredictionLog

    log = PredictionLog(settings.predictions_db_url).create()
    try:
        shadowed = log.read(spec.name, shadow=True, version=str(challenger))
        if len(shadowed) == 0:
            return shadowed
        first = shadowed["event_time"].min()
        served = log.read(spec.name, start=first, version=str(champion))
    finally:
        log.dispose()
    answers = [c for c in shadowed.columns if c.startswith("prediction_")]
    # the latest answer per request on each side (a caller may resend a request id)
    latest = ["request_id", "event_time", *answers]
    champ = served.drop_duplicates("request_id", keep="last")[latest]
    chall = shadowed.drop_duplicates("request_id", keep="last")[["request_id", *answers]]
    chall = chall.rename(columns={c: f"challenger_{c}" for c in answers})
    both = champ.merge(chall, on="request_id", how="inner")
    if len(both) == 0:
        both[spec.target] = pd.Series(dtype="float64")
        return both
    start, end = both["event_time"].min(), both["event_time"].max() + timedelta(microseconds=1)
    return frames.join_labels(settings, spec, both, start.to_pydatetime(), end.to_pydatetime())


def _challenger_answers(rows: pd.DataFrame) -> pd.DataFrame:
    prefix = "challenger_"
    return rows[[c for c in rows.columns if c.startswith(prefix)]].rename(
        columns=lambda c: c.removeprefix(prefix)
    )


def run_shadow_gate(settings: Settings, model: str) -> ShadowVerdict | None:
    """Test the model's ``@challenger`` on the labelled traffic so far; act on the result
    (promote it, reject it, or record the look and wait). None: it has no challenger."""
    from fleet import registry

    spec = get_model(model)
    challenger = registry.challenger_info(settings, model)
    champion = registry.champion_info(settings, model)
    if challenger is None or champion is None:
        return None
    rule = spec.promotion.shadow
    rows = paired_rows(settings, spec, champion.version, challenger.version)
    labelled = rows[rows[spec.target].notna()].reset_index(drop=True) if len(rows) else rows
    look = min(len(labelled) // rule.min_rows, rule.looks)
    done = int(challenger.tags.get("shadow_looks", "0") or 0)
    base = {"model": model, "challenger": challenger.version, "champion": champion.version}
    if look <= done:
        nxt = (done + 1) * rule.min_rows
        reason = f"{len(labelled)} paired labelled rows of {len(rows)} mirrored; next look at {nxt}"
        verdict = ShadowVerdict(**base, action="wait", reason=reason, rows=len(labelled), look=0)
        registry.set_version_tags(settings, model, challenger.version, verdict.tags())
        return verdict
    y = drift.labels_of(spec, labelled)
    action, reason, compared, low, high = judge_traffic(
        spec,
        y,
        drift.logged_predictions(spec, _challenger_answers(labelled)),
        drift.logged_predictions(spec, labelled),
        look,
    )
    verdict = ShadowVerdict(
        **base, action=action, reason=reason, rows=len(labelled), look=look,
        gain=compared.gain, low=low, high=high, confidence=look_confidence(spec),
        method=compared.method,
    )  # fmt: skip
    registry.set_version_tags(settings, model, challenger.version, verdict.tags())
    if action == "promote":
        registry.promote_challenger(settings, model, f"shadow test on live traffic: {reason}")
    elif action == "reject":
        registry.reject_challenger(settings, model, f"shadow test on live traffic: {reason}")
    return verdict
