"""Where each served model runs: a placement plan, from a file or from traffic.

A model is ``dedicated`` (its own ``bentoml serve`` process with a number of workers,
called over HTTP by the gateway) or ``shared`` (loaded in the gateway's own process with
the other shared models). ``micro`` and ``mono`` are the two extreme plans; anything in
between is a hybrid fleet, which the gateway routes in one request.

``auto`` reads the prediction log's most recent window of traffic (requests per second
and which models each request needed), takes the per-call costs of the last
``fleet bench topology`` calibration, and asks the simulator (``fleet.simulation``) which
models to consolidate into the gateway: every split of the fleet is simulated at the
observed rate on this machine, the one with the lowest p99 that keeps up wins, and near
ties go to the more consolidated one (fewer processes, less memory). Workers follow the
CPU demand of each component (the gateway's included), one per core in all. The plan
carries its reasons.

Plan files are YAML (or JSON)::

    gateway_workers: 1
    models:
      flight_delay: {placement: dedicated, workers: 2}
      arrival_delay: shared
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import yaml

from fleet import catalog, simulation
from fleet.files import write_text_atomic
from fleet.settings import REPO_ROOT, Settings

Kind = Literal["dedicated", "shared"]
KINDS: tuple[str, ...] = ("dedicated", "shared")
# the calibration `fleet bench topology` writes (per-call costs measured on one machine)
DEFAULT_CALIBRATION = REPO_ROOT / "bench" / "results" / "topology.json"
DEFAULT_WINDOW = timedelta(hours=1)
MAX_TRAFFIC_ROWS = 200_000  # the newest rows of the window that give the request mix
NEAR_TIE = 1.10  # a p99 within 10 % of the best counts as a tie
SIMULATED_REQUESTS = 1500


class PlacementError(ValueError):
    """A plan that cannot be served: the message says what to change."""


@dataclass(frozen=True)
class ModelPlacement:
    kind: Kind
    workers: int = 1  # dedicated: the service's workers (BentoML's own processes)
    reason: str = ""


@dataclass(frozen=True)
class Placement:
    models: dict[str, ModelPlacement]  # catalog order
    gateway_workers: int = 1
    source: str = ""  # micro, mono, auto or the plan file
    notes: tuple[str, ...] = ()

    @property
    def dedicated(self) -> dict[str, int]:
        """Dedicated models and their workers."""
        return {m: p.workers for m, p in self.models.items() if p.kind == "dedicated"}

    @property
    def shared(self) -> list[str]:
        return [m for m, p in self.models.items() if p.kind == "shared"]

    @property
    def topology(self) -> str:
        """micro (nothing shared), mono (nothing dedicated) or hybrid."""
        if not self.shared:
            return "micro"
        return "mono" if not self.dedicated else "hybrid"

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "topology": self.topology,
            "gateway_workers": self.gateway_workers,
            "models": {m: asdict(p) for m, p in self.models.items()},
            "notes": list(self.notes),
        }

    def lines(self) -> list[str]:
        """The plan as ``fleet serve`` prints it."""
        out = [f"placement ({self.source}): {self.topology}, gateway {self.gateway_workers} "
               f"worker(s)"]  # fmt: skip
        for name, p in self.models.items():
            where = f"dedicated, {p.workers} worker(s)" if p.kind == "dedicated" else "shared"
            out.append(f"  {name}: {where}" + (f" ({p.reason})" if p.reason else ""))
        out += [f"  note: {note}" for note in self.notes]
        return out


def ordered(models: dict[str, ModelPlacement]) -> dict[str, ModelPlacement]:
    order = list(catalog.models())
    unknown = [m for m in models if m not in order]
    if unknown:
        raise PlacementError(
            f"unknown model(s) in the plan: {', '.join(unknown)}; the catalog has "
            f"{', '.join(order)}"
        )
    return {m: models[m] for m in order if m in models}


def micro(models: list[str]) -> Placement:
    """Every model dedicated, workers from its spec."""
    specs = catalog.models()
    placed = {m: ModelPlacement("dedicated", specs[m].serving.workers) for m in models}
    return Placement(ordered(placed), source="micro")


def mono(models: list[str]) -> Placement:
    """Every model shared in the gateway."""
    return Placement(ordered({m: ModelPlacement("shared") for m in models}), source="mono")


def from_dict(data: Any, source: str) -> Placement:
    """A plan from its file's content (see the module docstring)."""
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise PlacementError(f"{source}: a plan needs a `models:` mapping of model -> placement")
    specs = catalog.models()
    placed = {}
    for name, entry in data["models"].items():
        if isinstance(entry, str):
            entry = {"placement": entry}
        if not isinstance(entry, dict) or entry.get("placement") not in KINDS:
            raise PlacementError(
                f"{source}: {name}: placement must be one of {', '.join(KINDS)}, got {entry!r}"
            )
        workers = entry.get("workers", specs[name].serving.workers if name in specs else 1)
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise PlacementError(f"{source}: {name}: workers must be a whole number >= 1")
        placed[name] = ModelPlacement(entry["placement"], workers, str(entry.get("reason", "")))
    gateway_workers = data.get("gateway_workers", 1)
    if not isinstance(gateway_workers, int) or gateway_workers < 1:
        raise PlacementError(f"{source}: gateway_workers must be a whole number >= 1")
    if not placed:
        raise PlacementError(f"{source}: the plan places no model")
    return Placement(ordered(placed), gateway_workers, source, tuple(data.get("notes", ())))


def load(path: Path) -> Placement:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise PlacementError(f"cannot read the plan {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise PlacementError(f"{path} is not YAML or JSON: {exc}") from None
    return from_dict(data, str(path))


def state_file(settings: Settings) -> Path:
    """The plan the running fleet serves, with its reasons (the serving state)."""
    return settings.serving_dir / "placement.json"


def write_state(settings: Settings, plan: Placement) -> None:
    write_text_atomic(state_file(settings), json.dumps(plan.as_dict(), indent=2) + "\n")


def read_state(settings: Settings) -> Placement | None:
    try:
        return from_dict(json.loads(state_file(settings).read_text()), "serving state")
    except (OSError, ValueError):
        return None


# --- auto: from the prediction log and the calibrated simulator -------------------------


@dataclass(frozen=True)
class Traffic:
    """Logged requests in a window: how many per second and which models each needed."""

    start: datetime | None
    end: datetime | None
    requests: int
    classes: dict[tuple[str, ...], int] = field(default_factory=dict)  # models -> requests

    @property
    def seconds(self) -> float:
        if self.start is None or self.end is None:
            return 0.0
        return max(1.0, (self.end - self.start).total_seconds())

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def model_rates(self) -> dict[str, float]:
        calls: Counter[str] = Counter()
        for models, n in self.classes.items():
            for m in models:
                calls[m] += n
        return {m: n / self.seconds for m, n in calls.items()} if self.seconds else {}


def observed_traffic(settings: Settings, window: timedelta = DEFAULT_WINDOW) -> Traffic:
    """The last ``window`` of logged answers (by log time, ending at the newest row):
    requests grouped by request id into the sets of models they needed."""
    import sqlalchemy as sa

    from fleet.predictions import PredictionLog, PredictionRow, as_utc

    log = PredictionLog(settings.predictions_db_url).create()
    try:
        with log.engine.connect() as conn:
            last = conn.execute(
                sa.select(sa.func.max(PredictionRow.logged_at)).where(~PredictionRow.shadow)
            ).scalar_one()
            if last is None:
                return Traffic(None, None, 0)
            end = as_utc(last)
            rows = conn.execute(
                sa.select(PredictionRow.request_id, PredictionRow.model, PredictionRow.logged_at)
                .where(~PredictionRow.shadow, PredictionRow.logged_at >= end - window)
                .order_by(PredictionRow.id.desc())
                .limit(MAX_TRAFFIC_ROWS)
            ).all()
    finally:
        log.dispose()
    needed: dict[str, set[str]] = {}
    for request_id, model, _ in rows:
        needed.setdefault(request_id, set()).add(model)
    order = list(catalog.models())
    classes = Counter(tuple(sorted(ms, key=order.index)) for ms in needed.values())
    start = min(as_utc(r[2]) for r in rows)
    return Traffic(start, end, len(needed), dict(classes))


def load_calibration(path: Path) -> simulation.Calibration:
    """The ``calibration`` of a ``fleet bench topology`` result."""
    try:
        data = json.loads(path.read_text())["calibration"]
        return simulation.Calibration(**data)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PlacementError(
            f"no calibration in {path} ({exc}); run `fleet bench topology` or pass "
            "--calibration FILE"
        ) from None


def _with_all_models(
    calibration: simulation.Calibration, models: list[str]
) -> tuple[simulation.Calibration, list[str]]:
    """Models the calibration did not measure get its slowest predict (a cautious guess)."""
    missing = [m for m in models if m not in calibration.predict_s]
    if not missing:
        return calibration, []
    slowest = max(calibration.predict_s.values())
    costs = {**calibration.predict_s, **{m: slowest for m in missing}}
    note = (f"no measured predict cost for {', '.join(missing)}; assumed the slowest "
            f"measured ({slowest * 1000:.1f} ms)")  # fmt: skip
    return simulation.with_costs(calibration, predict_s=costs), [note]


def _workers(
    calibration: simulation.Calibration,
    classes: dict[str, simulation.RequestClass],
    mix: dict[str, float],
    local: frozenset[str],
    models: list[str],
    cores: int,
) -> dict[str, int]:
    """One worker per core, split over the gateway and the dedicated models in
    proportion to their CPU demand (at least one each)."""
    demand = simulation.component_demand(calibration, classes, mix, local)
    for m in models:
        if m not in local:
            demand.setdefault(m, 0.0)
    if sum(demand.values()) <= 0:
        return dict.fromkeys(demand, 1)
    return simulation.allocate(demand, cores)


def _deployment(
    local: frozenset[str], workers: dict[str, int], cores: int
) -> simulation.Deployment:
    gateway = simulation.Proc(
        simulation.GATEWAY, 0, workers[simulation.GATEWAY], local, gateway=True
    )
    services = [
        simulation.Proc(m, 0, n, frozenset({m}))
        for m, n in workers.items()
        if m != simulation.GATEWAY
    ]
    return simulation.Deployment((cores,), (gateway, *services))


@dataclass(frozen=True)
class _Scored:
    local: frozenset[str]
    keeps_up: bool
    throughput: float
    p99_ms: float
    workers: dict[str, int]


def auto(
    models: list[str],
    traffic: Traffic,
    calibration: simulation.Calibration,
    cores: int | None = None,
    seed: int = 1,
) -> Placement:
    """The plan for ``traffic`` on a machine of ``cores`` (default: this one's)."""
    cores = cores or os.cpu_count() or 1
    models = list(ordered({m: ModelPlacement("shared") for m in models}))
    window = (
        f"{traffic.requests} requests in {traffic.seconds:.0f} s of logged traffic "
        f"({traffic.rate:.1f} req/s)"
    )
    classes_seen = {ms: n for ms, n in traffic.classes.items() if set(ms) <= set(models)}
    if not classes_seen:
        notes = ("no logged traffic for these models: everything consolidated",)
        return Placement(
            {m: ModelPlacement("shared", reason="no requests") for m in models},
            source="auto",
            notes=notes,
        )
    calibration, notes = _with_all_models(calibration, models)
    classes = {"+".join(ms): simulation.RequestClass("+".join(ms), ms) for ms in classes_seen}
    mix = {"+".join(ms): float(n) for ms, n in classes_seen.items()}
    rate = traffic.rate
    scored = []
    called = traffic.model_rates()
    idle = frozenset(m for m in models if not called.get(m))  # idle models are consolidated
    for active in simulation.layouts([m for m in models if m not in idle]):
        local = active | idle
        workers = _workers(calibration, classes, mix, local, models, cores)
        deployment = _deployment(local, workers, cores)
        result = simulation.simulate_open(
            deployment, calibration, classes, mix, rate, SIMULATED_REQUESTS, seed
        )
        scored.append(_Scored(local, result.keeps_up(), result.throughput, result.p99_ms, workers))
    able = [s for s in scored if s.keeps_up]
    if able:
        best_p99 = min(s.p99_ms for s in able)
        near = [s for s in able if s.p99_ms <= best_p99 * NEAR_TIE]
        chosen = min(near, key=lambda s: (-len(s.local), s.p99_ms))
    else:  # overloaded whatever the split: the one that serves the most
        chosen = max(scored, key=lambda s: (s.throughput, len(s.local)))
        best_p99 = chosen.p99_ms
    if not chosen.keeps_up:
        notes.append(f"no split keeps up with {rate:.1f} req/s on {cores} core(s) in the "
                     "simulation; this one falls behind least")  # fmt: skip
    demand = simulation.component_demand(calibration, classes, mix, chosen.local)
    total = sum(demand.values())
    placed = {}
    for m in models:
        calls = f"{called.get(m, 0.0):.1f} calls/s"
        if m in idle:
            placed[m] = ModelPlacement("shared", reason="no calls in the window; consolidated")
        elif m in chosen.local:
            reason = f"{calls}; consolidated in the gateway"
            placed[m] = ModelPlacement("shared", reason=reason)
        else:
            share = demand.get(m, 0.0) / total if total else 0.0
            reason = f"{calls}, {share:.0%} of the fleet's CPU as its own service"
            placed[m] = ModelPlacement("dedicated", chosen.workers.get(m, 1), reason)
    notes.insert(0, f"{window}; simulated p99 {chosen.p99_ms:.1f} ms on {cores} core(s) "
                    f"(the best split: {best_p99:.1f} ms)")  # fmt: skip
    return Placement(placed, chosen.workers[simulation.GATEWAY], "auto", tuple(notes))


def resolve(
    settings: Settings,
    choice: str,
    models: list[str] | None = None,
    window: timedelta = DEFAULT_WINDOW,
    calibration: Path | None = None,
) -> Placement:
    """``micro``, ``mono``, ``auto`` or a plan file; ``models`` (default: all, or what a
    plan file names) are the models to serve."""
    names = list(catalog.models()) if models is None else models
    if choice == "micro":
        return micro(names)
    if choice == "mono":
        return mono(names)
    if choice == "auto":
        costs = load_calibration(calibration or DEFAULT_CALIBRATION)
        return auto(names, observed_traffic(settings, window), costs)
    plan = load(Path(choice))
    left_out = [m for m in models or [] if m not in plan.models]
    if left_out:
        raise PlacementError(f"{choice} does not place {', '.join(left_out)}")
    return plan
