"""The typed result of one drift job: what the index, the artifact and the event carry."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any


@dataclass
class DriftSummary:
    model: str
    window_start: datetime
    window_end: datetime
    rows_current: int
    rows_reference: int
    rows_labelled: int
    drift_share: float
    drifted_columns: list[str]
    monitored_columns: int
    metric: str
    quality: float | None  # the metric on the window's labelled rows
    champion_version: int
    champion_score: float | None  # the champion's recorded holdout score
    reference_window: str  # the champion's training days, first..last
    reference_digest_matches: bool
    report_path: str
    min_rows: int = 0  # the policy's minimum: below it no drift is measured
    quality_se: float | None = None  # standard error of ``quality``
    champion_se: float | None = None  # standard error of the champion's recorded score
    watched_drifted: list[str] = field(default_factory=list)  # watched columns that moved
    excluded_columns: list[str] = field(default_factory=list)  # not measured (the spec)
    # a label-free estimate of the metric from the served answers (CBPE), where it applies
    estimated_quality: float | None = None
    estimated_se: float | None = None
    estimate_note: str = ""
    # the shadow test of the model's @challenger this run (monitoring.shadow), if any
    challenger_version: int | None = None
    shadow_action: str = ""  # promote | reject | wait
    shadow_note: str = ""
    column_scores: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def window_label(self) -> str:
        return f"{self.window_start:%Y-%m-%d %H:%M}..{self.window_end:%Y-%m-%d %H:%M}"

    def payload(self) -> dict[str, Any]:
        """JSON-ready: datetimes as ISO strings, NaN as None."""
        data = asdict(self)
        for key in ("window_start", "window_end"):
            data[key] = data[key].isoformat()
        for key in ("quality", "champion_score", "quality_se", "champion_se",
                    "estimated_quality", "estimated_se"):  # fmt: skip
            value = data[key]
            data[key] = None if value is None or math.isnan(value) else value
        return data

    def text(self) -> str:
        """A few lines for a terminal or a Prefect artifact."""
        quality = "no labels yet" if self.quality is None else f"{self.quality:.4f}"
        champion = "-" if self.champion_score is None else f"{self.champion_score:.4f}"
        drifted = ", ".join(self.drifted_columns) or "none"
        return "\n".join(
            [
                f"model: {self.model} (champion v{self.champion_version})",
                f"window: {self.window_label} ({self.rows_current} rows, "
                f"{self.rows_labelled} labelled)",
                f"reference: champion's training rows {self.reference_window} "
                f"({self.rows_reference} rows"
                + ("" if self.reference_digest_matches else "; the lake changed since training")
                + ")",
                f"drift share: {self.drift_share:.2f} of {self.monitored_columns} judged "
                f"columns; drifted: {drifted}"
                + (
                    f"; watched, moved: {', '.join(self.watched_drifted)}"
                    if self.watched_drifted
                    else ""
                )
                if self.measured
                else f"drift: not enough data ({self.rows_current} rows; the policy needs "
                f"at least {self.min_rows})",
                f"{self.metric}: {quality} (champion {champion})"
                + (
                    f"; estimated without labels {self.estimated_quality:.4f}"
                    if self.estimated_quality is not None
                    else ""
                ),
                f"report: {self.report_path or 'none (not enough data)'}",
            ]
            + ([self.shadow_note] if self.shadow_note else [])
        )

    @property
    def measured(self) -> bool:
        """Whether the drift job ran (it does not below the policy's minimum rows)."""
        return bool(self.report_path)
