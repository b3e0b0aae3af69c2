"""The two sides of a drift job and the labels that arrive later.

- Reference: the rows the current champion was trained on, found through its registry
  lineage (training window and partitions digest on the version), not "the latest file".
- Current: the prediction log of the model in the window (``start <= event_time < end``).
- Labels: the lake's rows joined on the dataset key (callers log the key as request id);
  a row whose label has not arrived yet stays unlabelled.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING

import pandas as pd

from fleet import lake, training

if TYPE_CHECKING:
    from fleet.catalog import ModelSpec
    from fleet.registry import ChampionInfo
    from fleet.settings import Settings


class MonitorError(RuntimeError):
    """A drift job cannot run; the message says what to do."""


@dataclass(frozen=True)
class Reference:
    frame: pd.DataFrame  # the champion's training rows (features + target)
    first: date
    last: date
    partitions: int
    digest_matches: bool  # False: the lake changed since the champion was trained
    holdout: pd.DataFrame | None = None  # its labelled holdout rows (calibration for CBPE)


def reference_frame(settings: Settings, spec: ModelSpec, champion: ChampionInfo) -> Reference:
    """The champion's training rows, re-read from the lake partitions its lineage names."""
    window = champion.window
    parts = training.window_partitions(settings.lake_dir, spec, window)
    if not parts:
        first, last = window.days
        raise MonitorError(
            f"{spec.name}: the lake has none of the champion's training partitions "
            f"({first}..{last}); run `fleet etl --start {first} --end {last}`"
        )
    # the digest on the version covers the whole window (train + holdout) as trained
    matches = lake.digest(parts) == champion.partitions_digest
    train_rows, hold_rows = training.split_by_window(spec, lake.read_partitions(parts), window)
    labelled = train_rows[train_rows[spec.target].notna()].reset_index(drop=True)
    holdout = hold_rows[hold_rows[spec.target].notna()].reset_index(drop=True)
    first, last = window.train_days
    return Reference(labelled, first, last, len(parts), matches, holdout)


def current_frame(
    settings: Settings, spec: ModelSpec, start: datetime, end: datetime
) -> pd.DataFrame:
    """Logged predictions of the window: request_id, event_time, features, prediction_*."""
    from fleet.predictions import PredictionLog

    log = PredictionLog(settings.predictions_db_url)
    try:
        log.create()
        return log.read(spec.name, start, end)
    finally:
        log.dispose()


def join_labels(
    settings: Settings, spec: ModelSpec, current: pd.DataFrame, start: datetime, end: datetime
) -> pd.DataFrame:
    """``current`` plus ``spec.target`` from the lake rows whose key is the request id.

    The lake is read for the window's days with a day of margin either side (the log's
    clock and the dataset's timestamp may differ by a time zone); rows with no lake row
    or a null target (a cancelled flight) stay unlabelled.
    """
    out = current.copy()
    if len(out) == 0:
        out[spec.target] = pd.Series(dtype="float64")
        return out
    first = (start - timedelta(days=1)).date()
    last = (end + timedelta(days=1)).date()
    parts = lake.partitions_in(settings.lake_dir, spec.dataset.name, first, last)
    key = spec.dataset.key
    truth = lake.read_partitions(parts) if parts else pd.DataFrame(columns=[key, spec.target])
    truth = truth[[key, spec.target]].dropna().drop_duplicates(key)
    labels = truth.set_index(key)[spec.target]
    out[spec.target] = out["request_id"].map(labels)
    return out
