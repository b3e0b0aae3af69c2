"""`fleet bench window`: how many weeks of training data the loop's retraining needs.

An offline replay of one model's retrain policy, once per training-window length, each
against its own frozen model in the same run. Per length: the bootstrap model is trained
on the weeks before ``start`` (windows are cut at the first day of data, as in the
replay) and frozen. Every ``retrain_every`` weeks, once the week's labels are in, a
challenger is trained on the window ending there and promoted by the fixed-margin rule
the champion gate used before its paired test (``fleet.training.is_better``: beat the
champion by the spec's margin, and the trivial baseline, on the newest holdout); its
results in ``bench/results/window-*`` were measured with that rule and are kept as
the evidence for the training-window length. Each live week scores the champion of the
moment and the frozen model on all of the week's rows, and on the same sample the
replay sends (``fleet.replay.sample_rows``, same seed).

Drift is not simulated: retraining runs on a schedule. Every two weeks is what the
flight models' monitors did in the replay, where drift was found every week and the
14-day cooldown let one retraining through in two. Nothing is served or registered:
the bench works on ETL rows in memory and leaves no state behind.

Writes ``bench/results/window-<model>.{json,md}``.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from fleet import etl, lake, training
from fleet.catalog import ModelSpec, get_model
from fleet.replay import LIVE_START, QUICK_SAMPLE, sample_rows
from fleet.settings import REPO_ROOT

RESULTS_DIR = REPO_ROOT / "bench" / "results"
SEED = 2013  # the replay's sampling seed


@dataclass
class WeekScore:
    week: str  # first day
    champion_until: str  # end of the window the week's champion was trained on
    closed_loop: float  # the champion's metric on all the week's rows
    frozen: float
    closed_loop_sampled: float  # on the replay's sample of the week
    frozen_sampled: float


@dataclass
class Arm:
    train_weeks: int
    holdout_weeks: int
    promotions: list[str] = field(default_factory=list)  # days the champion moved
    weeks: list[WeekScore] = field(default_factory=list)

    def mean(self, key: str) -> float:
        values = [getattr(w, key) for w in self.weeks if not math.isnan(getattr(w, key))]
        return sum(values) / len(values) if values else math.nan


@dataclass
class WindowBench:
    model: str
    metric: str
    greater_is_better: bool
    start: str
    end: str
    retrain_every: int
    sample: int | None
    catalog_train_weeks: int
    arms: list[Arm]
    seconds: float
    json_path: Path | None = None
    markdown_path: Path | None = None

    def rows(self) -> list[dict[str, Any]]:
        """Per arm: means, and the loop's gain over frozen (positive = loop better)."""
        sign = 1.0 if self.greater_is_better else -1.0
        out = []
        for arm in self.arms:
            row: dict[str, Any] = {
                "train_weeks": arm.train_weeks,
                "promotions": len(arm.promotions),
            }
            for suffix in ("", "_sampled"):
                closed, frozen = arm.mean(f"closed_loop{suffix}"), arm.mean(f"frozen{suffix}")
                row[f"closed_loop{suffix}"] = round(closed, 4)
                row[f"frozen{suffix}"] = round(frozen, 4)
                row[f"gain{suffix}"] = round(sign * (closed - frozen), 4)
            out.append(row)
        return out

    def summary(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("json_path")
        data.pop("markdown_path")
        data["means"] = self.rows()
        return data

    def markdown(self) -> str:
        direction = "higher" if self.greater_is_better else "lower"
        sampled = f"{self.sample} sampled rows" if self.sample else "all rows"
        lines = [
            f"# `fleet bench window`: {self.model}",
            "",
            f"Live weeks {self.start}..{self.end}; a challenger every {self.retrain_every} "
            f"week(s), promoted by the champion gate. Mean weekly {self.metric} ({direction} "
            f"is better) of the closed loop and of its frozen bootstrap model, on all of each "
            f"week's rows and on the replay's sample ({sampled} a week, seed {SEED}). Gain is "
            f"the loop's advantage over frozen. The catalog trains on "
            f"{self.catalog_train_weeks} weeks. {self.seconds:.0f} s in all.",
            "",
            "| train weeks | promotions | closed loop | frozen | gain | closed loop (sample) "
            "| frozen (sample) | gain (sample) |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in self.rows():
            lines.append(
                f"| {r['train_weeks']} | {r['promotions']} | {r['closed_loop']:.4f} "
                f"| {r['frozen']:.4f} | {r['gain']:+.4f} | {r['closed_loop_sampled']:.4f} "
                f"| {r['frozen_sampled']:.4f} | {r['gain_sampled']:+.4f} |"
            )
        return "\n".join(lines) + "\n"


def load_rows(spec: ModelSpec, first: date, last: date) -> pd.DataFrame:
    """The ETL rows of ``first..last`` (inclusive), as the lake would hold them."""
    parts = etl.read_days(spec.dataset, lake.days(first, last))
    return etl.concat_partitions(spec.dataset, parts)


def rows_between(spec: ModelSpec, frame: pd.DataFrame, first: date, after: date) -> pd.DataFrame:
    day = training.timestamps(spec, frame)
    keep = (day >= pd.Timestamp(first)) & (day < pd.Timestamp(after))
    return frame[keep].reset_index(drop=True)


def metric_on(spec: ModelSpec, model: Any, rows: pd.DataFrame) -> float:
    X, y = training.training_frame(spec, rows)
    if len(y) == 0:
        return math.nan
    return training.score(spec, model, X, y)[spec.promotion.metric]


def train_until(spec: ModelSpec, frame: pd.DataFrame, until: date) -> tuple[Any, bool]:
    """A model on the window ending at ``until``; and whether it beats the trivial baseline
    on that window's holdout (the gate's first test)."""
    window = training.training_window(spec, until)
    train, hold = training.split_by_window(spec, frame, window)
    X, y = training.training_frame(spec, train)
    X_hold, y_hold = training.training_frame(spec, hold)
    model = training.fit(spec, X, y, threads=os.cpu_count() or 1)
    metric = spec.promotion.metric
    cand = training.score(spec, model, X_hold, y_hold)[metric]
    base = training.baseline_score(spec, y, X_hold, y_hold)[metric]
    return model, training.is_better(spec, cand, base)


def run_arm(
    spec: ModelSpec,
    frame: pd.DataFrame,
    weeks: list[tuple[date, date]],
    retrain_every: int,
    samples: dict[date, pd.DataFrame],
    say: Callable[[str], None] = print,
) -> Arm:
    """The loop for one window length over ``weeks``, against its frozen model."""
    arm = Arm(spec.train_weeks, spec.holdout_weeks)
    frozen, _ = train_until(spec, frame, weeks[0][0])
    champion, champion_until = frozen, weeks[0][0]
    for i, (first, after) in enumerate(weeks):
        week = rows_between(spec, frame, first, after)
        arm.weeks.append(
            WeekScore(
                week=first.isoformat(),
                champion_until=champion_until.isoformat(),
                closed_loop=metric_on(spec, champion, week),
                frozen=metric_on(spec, frozen, week),
                closed_loop_sampled=metric_on(spec, champion, samples[first]),
                frozen_sampled=metric_on(spec, frozen, samples[first]),
            )
        )
        if (i + 1) % retrain_every:
            continue
        challenger, beats_baseline = train_until(spec, frame, after)
        window = training.training_window(spec, after)
        hold = rows_between(spec, frame, window.split, window.end)
        gain = training.is_better(
            spec, metric_on(spec, challenger, hold), metric_on(spec, champion, hold)
        )
        if gain and beats_baseline:
            champion, champion_until = challenger, after
            arm.promotions.append(after.isoformat())
    closed, frozen_mean = arm.mean("closed_loop"), arm.mean("frozen")
    say(
        f"  {spec.train_weeks} weeks: closed loop {closed:.4f}, frozen {frozen_mean:.4f}, "
        f"{len(arm.promotions)} promotions"
    )
    return arm


def live_weeks(start: date, end: date) -> list[tuple[date, date]]:
    """Whole weeks ``(first, after)`` from ``start`` whose last day is on or before ``end``."""
    out = []
    first = start
    while first + timedelta(days=6) <= end:
        out.append((first, first + timedelta(days=7)))
        first += timedelta(days=7)
    return out


def run_window_bench(
    model: str,
    train_weeks: tuple[int, ...],
    start: date = LIVE_START,
    end: date = date(2013, 12, 30),
    retrain_every: int = 2,
    sample: int | None = QUICK_SAMPLE,
    out_dir: Path = RESULTS_DIR,
    say: Callable[[str], None] = print,
) -> WindowBench:
    spec = get_model(model)
    weeks = live_weeks(start, end)
    if not weeks:
        raise ValueError(f"{start}..{end} holds no whole week")
    if retrain_every < 1:
        raise ValueError("retrain_every must be at least 1")
    t0 = time.perf_counter()
    first_day = spec.dataset.first_day or weeks[0][0] - timedelta(weeks=spec.train_weeks)
    say(f"{model}: ETL rows {first_day}..{weeks[-1][1] - timedelta(days=1)}")
    frame = load_rows(spec, first_day, weeks[-1][1] - timedelta(days=1))
    samples = {
        first: sample_rows(spec.dataset, rows_between(spec, frame, first, after), sample, SEED)
        for first, after in weeks
    }
    arms = [
        run_arm(
            spec.model_copy(update={"train_weeks": n}), frame, weeks, retrain_every, samples, say
        )
        for n in train_weeks
    ]
    bench = WindowBench(
        model=spec.name,
        metric=spec.promotion.metric,
        greater_is_better=spec.promotion.greater_is_better,
        start=weeks[0][0].isoformat(),
        end=(weeks[-1][1] - timedelta(days=1)).isoformat(),
        retrain_every=retrain_every,
        sample=sample,
        catalog_train_weeks=spec.train_weeks,
        arms=arms,
        seconds=round(time.perf_counter() - t0, 1),
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"window-{spec.name}"
    bench.json_path = out_dir / f"{stem}.json"
    bench.markdown_path = out_dir / f"{stem}.md"
    data = {"measured_at": datetime.now(UTC).isoformat(timespec="seconds"), **bench.summary()}
    bench.json_path.write_text(json.dumps(data, indent=1) + "\n")
    bench.markdown_path.write_text(bench.markdown())
    return bench
