"""The replay: 2013 streamed through the fleet, week by week, as the closed loop runs.

Bootstrap: the lake gets the weeks before ``start`` and every model is trained on them;
the first champions are also kept as the *frozen* fleet, which never retrains. Then,
for each step: that week's flights and reviews go through the gateway over HTTP as live
traffic (request id = the record's business key, event time = its own timestamp), the
week's labels are delivered (the ETL loads the week into the lake, through the GX
gate), each model's drift job runs on its recent log, and when a policy fires the
retrain flow trains, gates and promotes, and the serving side moves to the new champion
without downtime. Each week's served predictions are scored against the labels, and
the frozen champions are scored on the same rows in-process.

These are plain functions; ``flows/replay.py`` is the Prefect shell and
``fleet.replay_report`` renders the timeline.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pandas as pd

from fleet import catalog, etl, lake, routing, serving, training
from fleet.arms import ScheduledArm
from fleet.catalog import Dataset, ModelSpec, get_model
from fleet.settings import Settings

LIVE_START = date(2013, 2, 26)  # after eight weeks of bootstrap data
# the weather table has no rows for 2013-12-31: a week made of it fails the GX gate
LIVE_END = date(2013, 12, 30)
QUICK_END = date(2013, 6, 3)  # fourteen weeks of live traffic
# rows a week per dataset: two weeks of 300 flights fill a drift window above the flight
# models' 500-row minimum; reviews (~100 a week) are all sent
QUICK_SAMPLE = 300


class ReplayError(RuntimeError):
    """The replay cannot go on; the message says why."""


@dataclass(frozen=True)
class ReplayConfig:
    start: date = LIVE_START  # first day of live traffic; the bootstrap trains before it
    end: date = LIVE_END  # last day of live traffic (inclusive)
    step_days: int = 7
    # rows sent per step and dataset (None: all); a sample keeps the quick replay short
    sample: int | None = None
    monitor_days: int = 14  # each drift job looks at this many days of log up to the step
    concurrency: int = 8
    topology: str = "micro"
    seed: int = 2013
    models: tuple[str, ...] = field(default_factory=lambda: tuple(catalog.model_names()))
    scheduled: bool = True  # also score the scheduled arm (a weekly retrain, fleet.arms)

    def __post_init__(self) -> None:
        first, last = self.coverage()
        if self.start <= first + timedelta(days=7):
            raise ReplayError(
                f"start {self.start} leaves no bootstrap weeks; start on "
                f"{first + timedelta(days=14)} or later"
            )
        if self.end < self.start or self.end > last:
            raise ReplayError(f"end {self.end} must lie in {self.start}..{last}")

    def coverage(self) -> tuple[date, date]:
        """The days every replayed model's data covers (first_day..last_day of the specs)."""
        specs = [get_model(name).dataset for name in self.models]
        missing = [d.name for d in specs if d.first_day is None or d.last_day is None]
        if missing:
            raise ReplayError(
                f"the replay needs first_day and last_day in the specs of {sorted(set(missing))}"
            )
        return max(d.first_day for d in specs), min(d.last_day for d in specs)  # type: ignore[type-var]
        if self.step_days < 1 or self.monitor_days < self.step_days:
            raise ReplayError("step_days must be >= 1 and monitor_days >= step_days")

    @classmethod
    def quick(cls, **overrides: Any) -> ReplayConfig:
        """March to May, at most 300 rows a week per dataset, one serving process.

        Mono: a promotion swaps the model inside the running process in about a second,
        where micro starts a new service process (~25 s on two busy cores) per promotion.
        """
        values: dict[str, Any] = {
            "end": QUICK_END, "sample": QUICK_SAMPLE, "topology": "mono",
        }  # fmt: skip
        return cls(**{**values, **overrides})

    def weeks(self) -> list[tuple[date, date]]:
        """Steps as ``(first day, day after the last)``; the last one may be shorter."""
        out = []
        first = self.start
        while first <= self.end:
            after = min(first + timedelta(days=self.step_days), self.end + timedelta(days=1))
            out.append((first, after))
            first = after
        return out


@dataclass
class ModelWeek:
    """One model in one step of the replay."""

    model: str
    metric: str
    served_version: str  # the version(s) that answered this week's traffic
    rows: int  # predictions logged this week
    labelled: int
    closed_loop: float | None  # the served predictions' metric on this week's labels
    frozen: float | None  # the bootstrap champion's metric on the same rows
    scheduled: float | None = None  # the scheduled arm's champion's, same rows
    scheduled_retrain: str = ""  # what the scheduled arm's retraining ended as
    drift_share: float | None = None
    drifted_columns: list[str] = field(default_factory=list)
    fired: bool = False
    decision: str = ""
    retrain: str = ""  # promoted | challenger | kept | failed | skipped | "" (none)
    shadow: str = ""  # the challenger's shadow test this week: promote | reject | wait
    shadow_note: str = ""  # and why, with what serving did
    champion_after: str = ""
    retrain_seconds: float | None = None  # decision -> retrained, gated, serving moved
    train_seconds: float | None = None  # of which fitting the model
    report: str = ""


@dataclass
class WeekResult:
    start: date
    end: date  # exclusive
    sent: dict[str, int]  # requests sent per dataset
    errors: int  # requests that did not get a full answer
    models: dict[str, ModelWeek]
    seconds: float


@dataclass
class TrafficResult:
    sent: int
    ok: int
    errors: int
    samples: list[str]


# --- state root -----------------------------------------------------------------------------

MARKER = ".replay"


def prepare_state_root(settings: Settings) -> list[str]:
    """Give the replay a clean state root; returns what an earlier replay left and was reset.

    A replay starts from nothing: its bootstrap trains version 1s and its monitors read
    the prediction log. It resets a root that an earlier replay made (so ``make run``
    can run again) and refuses a root holding a lake or registry it did not make.
    """
    import shutil

    from fleet import topology

    if topology.running(settings):
        raise ReplayError(
            f"a fleet is being served from {settings.root}; stop it with `fleet stop` first"
        )
    marker = settings.root / MARKER
    parts = [
        settings.lake_dir, settings.quarantine_dir, settings.mlflow_dir, settings.gx_dir,
        settings.reports_dir, settings.serving_dir, settings.root / "bentoml",
    ]  # fmt: skip
    used = [p for p in (settings.lake_dir, settings.mlflow_dir) if p.is_dir() and any(p.iterdir())]
    if used and not marker.exists():
        found = ", ".join(p.name for p in used)
        raise ReplayError(
            f"{settings.root} already holds data no replay made ({found}); the replay "
            "starts from scratch: set FLEET_HOME to another folder"
        )
    reset = [p.name for p in parts if p.exists()] if marker.exists() else []
    for path in parts if reset else []:
        shutil.rmtree(path, ignore_errors=True)
    settings.root.mkdir(parents=True, exist_ok=True)
    marker.write_text("state made by `fleet replay`; the next replay resets it\n")
    return reset


# --- traffic -----------------------------------------------------------------------------


def week_rows(
    dataset: Dataset, first: date, after: date, sample: int | None, seed: int
) -> pd.DataFrame:
    """The week's ETL rows of ``dataset`` (as the lake will get them), sampled."""
    parts = etl.read_days(dataset, lake.days(first, after - timedelta(days=1)))
    return sample_rows(dataset, etl.concat_partitions(dataset, parts), sample, seed)


def sample_rows(
    dataset: Dataset, rows: pd.DataFrame, sample: int | None, seed: int
) -> pd.DataFrame:
    """At most ``sample`` of a week's rows (fixed seed), in time order."""
    if sample is not None and len(rows) > sample:
        rows = rows.sample(n=sample, random_state=seed)
    return rows.sort_values(dataset.timestamp, kind="stable").reset_index(drop=True)


def traffic_datasets(models: tuple[str, ...]) -> list[Dataset]:
    """The datasets whose records the replayed models read, catalog order."""
    used = {get_model(name).dataset.name for name in models}
    return [d for d in catalog.datasets().values() if d.name in used]


def gateway_bodies(dataset: Dataset, rows: pd.DataFrame, models: tuple[str, ...]) -> list[dict]:
    """Gateway requests for ``rows``: key as request id, own timestamp as event time.

    Each body carries the record the gateway expects for the dataset (every feature its
    models read) and asks for the replayed models of that dataset only.
    """
    _, features = routing.input_features(dataset.record)
    wanted = [m for m in models if get_model(m).dataset.name == dataset.name]
    stamps = pd.to_datetime(rows[dataset.timestamp])
    records = serving.records_of([dataset.column(f) for f in features], rows)
    return [
        {
            "request_id": str(key),
            "event_time": stamp.to_pydatetime().replace(tzinfo=UTC).isoformat(),
            "models": wanted,
            dataset.record: record,
        }
        for key, stamp, record in zip(rows[dataset.key], stamps, records, strict=True)
    ]


def _answered(response: httpx.Response, models: list[str]) -> str | None:
    if response.status_code != 200:
        return f"HTTP {response.status_code}: {response.text[:200]}"
    body = response.json()
    errors = body.get("errors") or {}
    missing = [m for m in models if m not in (body.get("results") or {})]
    if errors or missing:
        return f"per-model errors {errors or missing}"
    return None


async def _send_all(
    url: str, bodies: list[dict], concurrency: int, timeout: float, headers: dict[str, str]
) -> TrafficResult:
    queue = list(reversed(bodies))
    result = TrafficResult(sent=len(bodies), ok=0, errors=0, samples=[])

    async def worker(client: httpx.AsyncClient) -> None:
        while queue:
            body = queue.pop()
            try:
                problem = _answered(await client.post(url, json=body), body["models"])
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if problem is None:
                result.ok += 1
            else:
                result.errors += 1
                if len(result.samples) < 3:
                    result.samples.append(problem)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=timeout, limits=limits, headers=headers) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return result


def send_traffic(
    url: str,
    bodies: list[dict],
    concurrency: int,
    timeout: float = 30.0,
    headers: dict[str, str] | None = None,
) -> TrafficResult:
    """POST every body once to the gateway's /predict, ``concurrency`` at a time
    (``headers``: the fleet's token, when it has one)."""
    target = url.rstrip("/") + "/predict"
    return asyncio.run(_send_all(target, bodies, concurrency, timeout, headers or {}))


# --- scoring -------------------------------------------------------------------------------


def served_and_frozen(
    spec: ModelSpec, labelled: pd.DataFrame, frozen_model: Any
) -> tuple[float | None, float | None]:
    """The week's metric of the served predictions and of the frozen model, same rows."""
    if len(labelled) == 0:
        return None, None
    y = labelled[spec.target]
    if spec.task == "regression":
        served = training.prediction_scores(spec, y, value=labelled["prediction_value"].to_numpy())
    else:
        served = training.prediction_scores(
            spec,
            y,
            probability=labelled["prediction_probability"].to_numpy(),
            label=labelled["prediction_label"].to_numpy(),
        )
    X = training.feature_frame(spec, labelled[list(spec.features)])
    frozen = training.score(spec, frozen_model, X, y)
    metric = spec.promotion.metric
    return _finite(served[metric]), _finite(frozen[metric])


def _finite(value: float) -> float | None:
    return None if value is None or math.isnan(value) else round(float(value), 5)


def mean_metric(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(sum(present) / len(present), 5) if present else None


# --- the loop ------------------------------------------------------------------------------


@dataclass
class Replay:
    """The steps a replay takes; the flow passes Prefect-aware callables in."""

    settings: Settings
    config: ReplayConfig
    etl: Callable[[date, date], object]  # load [first, last] into the lake (labels)
    train_all: Callable[[date], list[Any]]  # bootstrap: train every model up to a day
    # (model, until, reason, firing) -> ModelOutcome; the firing the monitor claimed
    retrain: Callable[[str, date, str, str], Any]
    # (settings, spec, start, end) -> (logged rows, the same joined with their labels)
    read_log: Callable[[Settings, ModelSpec, datetime, datetime], tuple[Any, Any]]
    # (settings, model, start, end, now) -> (DriftSummary, TriggerDecision): the drift job
    monitor: Callable[[Settings, str, datetime, datetime, datetime], tuple[Any, Any]]
    log: Callable[[str], None] = print
    # told about every decision that fires, before the retraining (the flow emits the event)
    on_fire: Callable[[Any, Any], None] = lambda summary, decision: None
    frozen: dict[str, Any] = field(default_factory=dict)
    frozen_versions: dict[str, int] = field(default_factory=dict)
    promotions: list[dict[str, Any]] = field(default_factory=list)
    weeks: list[WeekResult] = field(default_factory=list)
    scheduled: ScheduledArm | None = None

    def bootstrap(self) -> None:
        from fleet import registry

        reset = prepare_state_root(self.settings)
        if reset:
            self.log(f"reset the previous replay's state under {self.settings.root}")
        last = self.config.start - timedelta(days=1)
        first = self.config.coverage()[0]
        self.log(f"bootstrap: loading {first}..{last} and training every model")
        self.etl(first, last)
        for outcome in self.train_all(self.config.start):
            if outcome.status == "failed":
                raise ReplayError(
                    f"bootstrap training of {outcome.model} failed: {outcome.message}"
                )
        for name in self.config.models:
            champion = registry.champion_info(self.settings, name)
            if champion is None:
                raise ReplayError(f"{name}: no champion after the bootstrap")
            self.frozen_versions[name] = champion.version
            self.frozen[name] = registry.load_version(self.settings, name, champion.version)
            self.log(f"  {name}: frozen at v{champion.version} ({champion.window})")
        if self.config.scheduled:
            self.scheduled = ScheduledArm.starting_from(self.settings, self.frozen)

    def step(self, gateway_url: str, first: date, after: date) -> WeekResult:
        t0 = time.perf_counter()
        cfg = self.config
        sent: dict[str, int] = {}
        errors = 0
        for dataset in traffic_datasets(cfg.models):
            rows = week_rows(dataset, first, after, cfg.sample, cfg.seed)
            bodies = gateway_bodies(dataset, rows, cfg.models)
            traffic = send_traffic(
                gateway_url, bodies, cfg.concurrency, headers=self.settings.auth_headers()
            )
            sent[dataset.name] = traffic.sent
            errors += traffic.errors
            if traffic.errors:
                self.log(
                    f"  {dataset.name}: {traffic.errors} of {traffic.sent} failed: "
                    f"{traffic.samples}"
                )
        self.etl(first, after - timedelta(days=1))  # the week's labels arrive
        models = {name: self._monitor_and_act(name, first, after) for name in cfg.models}
        week = WeekResult(first, after, sent, errors, models, round(time.perf_counter() - t0, 1))
        self.weeks.append(week)
        return week

    def _monitor_and_act(self, name: str, first: date, after: date) -> ModelWeek:
        spec = get_model(name)
        start, end = _utc(first), _utc(after)
        logged, joined = self.read_log(self.settings, spec, start, end)
        labelled = joined[joined[spec.target].notna()]
        closed, frozen = served_and_frozen(spec, labelled, self.frozen[name])
        versions = sorted({str(v) for v in logged.get("version", [])}, key=_version_key)
        week = ModelWeek(
            model=name,
            metric=spec.promotion.metric,
            served_version=",".join(versions),
            rows=len(logged),
            labelled=len(labelled),
            closed_loop=closed,
            frozen=frozen,
        )
        if self.scheduled is not None:
            week.scheduled = _finite(self.scheduled.score(name, labelled))
            # the cron job's weekly retraining, on the same labels the loop now has
            week.scheduled_retrain = self.scheduled.retrain(name, after)
        monitor_start = _utc(after - timedelta(days=self.config.monitor_days))
        summary, decision = self.monitor(self.settings, name, monitor_start, end, end)
        week.drift_share = round(summary.drift_share, 4)
        week.drifted_columns = list(summary.drifted_columns)
        week.fired = decision.fire
        week.decision = decision.reason
        week.report = summary.report_path
        week.shadow, week.shadow_note = summary.shadow_action, summary.shadow_note
        if summary.shadow_action == "promote":  # the challenger won on this week's labels
            self.promotions.append(
                {
                    "model": name,
                    "week": first.isoformat(),
                    "at": after.isoformat(),
                    "version": str(summary.challenger_version),
                    "metric": spec.promotion.metric,
                    "score": None,
                    "reason": summary.shadow_note,
                    "seconds_to_serving": None,
                }
            )
        if decision.fire:
            self.on_fire(summary, decision)
            t_fired = time.perf_counter()
            outcome = self.retrain(name, after, decision.reason, decision.firing or "")
            week.retrain_seconds = round(time.perf_counter() - t_fired, 1)
            week.retrain = outcome.status
            week.train_seconds = outcome.timings.get("fit")
            week.champion_after = outcome.champion_after or ""
            if outcome.status == "promoted":
                self.promotions.append(
                    {
                        "model": name,
                        "week": first.isoformat(),
                        "at": after.isoformat(),  # retrained once the week's labels were in
                        "version": outcome.version,
                        "metric": spec.promotion.metric,
                        "score": outcome.candidate_score,
                        "reason": decision.reason,
                        "seconds_to_serving": week.retrain_seconds,
                    }
                )
        return week

    def summary(self) -> dict[str, Any]:
        """``replay.json``: per model and in all, closed loop against frozen."""
        by_model: dict[str, Any] = {}
        for name in self.config.models:
            rows = [w.models[name] for w in self.weeks]
            spec = get_model(name)
            by_model[name] = {
                "metric": spec.promotion.metric,
                "greater_is_better": spec.promotion.greater_is_better,
                "closed_loop": mean_metric([r.closed_loop for r in rows]),
                "frozen": mean_metric([r.frozen for r in rows]),
                "frozen_version": self.frozen_versions.get(name),
                "retrainings": sum(1 for r in rows if r.retrain),
                "promotions": sum(1 for p in self.promotions if p["model"] == name),
            }
        headline = self.config.models[0]
        return {
            "arms": self.arms(),
            "config": _jsonable(asdict(self.config)),
            "headline_model": headline,
            "closed_loop": {
                "mean_metric": by_model[headline]["closed_loop"],
                "metric": by_model[headline]["metric"],
                "by_model": {m: v["closed_loop"] for m, v in by_model.items()},
            },
            "frozen": {
                "mean_metric": by_model[headline]["frozen"],
                "metric": by_model[headline]["metric"],
                "by_model": {m: v["frozen"] for m, v in by_model.items()},
            },
            "models": by_model,
            "drift_to_serving": self.drift_to_serving(),
            "promotions": self.promotions,
            "weeks": [_jsonable(asdict(w)) for w in self.weeks],
        }

    def arms(self) -> dict[str, dict[str, dict[str, Any]]]:
        """``arms.<arm>.<model>``: mean metric, retrains run, promotions, seconds fitting."""
        out: dict[str, dict[str, dict[str, Any]]] = {"frozen": {}, "closed_loop": {}}
        if self.scheduled is not None:
            out["scheduled"] = {}
        for name in self.config.models:
            rows = [w.models[name] for w in self.weeks]
            out["frozen"][name] = {
                "mean_metric": mean_metric([r.frozen for r in rows]),
                "retrains": 0, "promotions": 0, "train_seconds": 0.0,
            }  # fmt: skip
            out["closed_loop"][name] = {
                "mean_metric": mean_metric([r.closed_loop for r in rows]),
                "retrains": sum(1 for r in rows if r.retrain),
                "promotions": sum(1 for p in self.promotions if p["model"] == name),
                "train_seconds": round(sum(r.train_seconds or 0.0 for r in rows), 2),
            }
            if self.scheduled is not None:
                arm = self.scheduled.models[name]
                out["scheduled"][name] = {
                    "mean_metric": mean_metric([r.scheduled for r in rows]),
                    "retrains": arm.retrains,
                    "promotions": len(arm.promotions),
                    "train_seconds": round(arm.train_seconds, 2),
                }
        return out

    def drift_to_serving(self) -> dict[str, Any]:
        """Per model: the first week a trigger fired, and when a new champion first served.

        ``seconds`` is the wall time of that promoting retraining (train, gate, register,
        promote, serving moved); ``weeks`` is how much simulated time passed in between.
        """
        out: dict[str, Any] = {}
        for name in self.config.models:
            fired = [w for w in self.weeks if w.models[name].fired]
            promoted = [w for w in self.weeks if w.models[name].retrain == "promoted"]
            if not fired:
                continue
            first = fired[0]
            entry: dict[str, Any] = {"first_fired_week": first.start.isoformat()}
            if promoted:
                done = promoted[0]
                entry["first_promotion_week"] = done.start.isoformat()
                entry["weeks"] = (done.start - first.start).days // self.config.step_days
                entry["seconds"] = done.models[name].retrain_seconds
            out[name] = entry
        return out


def _utc(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (1 << 30, version)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, date | datetime):
        return value.isoformat()
    return value
