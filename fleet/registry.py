"""MLflow registration and the champion gate.

Every training is one MLflow run in the model's experiment (artifacts under
``$FLEET_HOME/mlflow/artifacts/<model>``) and every candidate becomes a registered
version. The alias ``champion`` moves only through :func:`promote_if_better` (candidate
beats the champion, and the trivial baseline, by the spec's margin on the same
holdout) or :func:`rollback`. What the serving, monitoring and CLI layers need is on
the version as tags:

- lineage: ``run_id``, ``window_start``/``window_split``/``window_end``,
  ``partitions_digest``, ``partitions`` (count), ``dataset``; the partition list is the
  run artifact ``lineage/partitions.json``;
- the gate: ``decision`` (promoted/rejected), ``reason``, ``metric``,
  ``candidate_score``, ``champion_score``, ``baseline_score``, ``champion_before``,
  ``decided_at``;
- rollback: the version a champion replaced is its ``champion_before`` tag, so
  rollbacks walk back the chain of champions; every alias move is also appended to the
  registered model's ``champion_history`` tag (JSON) for auditing.

Serialization: cloudpickle, for every model of the fleet, on purpose. MLflow 3.17
defaults to skops, but (1) the HistGradientBoosting pipelines hold types skops does not
trust by default (``functools.partial``, ``TreePredictor``, ``check_array``), and
trusting ``functools.partial`` gives away what skops protects; (2) importing skops.io
costs 3-6 s per process here (it enumerates every scikit-learn estimator), paid by every
training and serving process; (3) MLflow 3.17 gates *every* format, skops included,
behind the same ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION`` flag, because a skops model's
trusted-type list is read from the artifact itself. The registry is the fleet's own
trusted store; one format keeps the serving side simple.

The tracking URI is always taken from ``Settings`` and set inside the functions, never at
import time.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from fleet import catalog, lake, stats, training
from fleet.catalog import ModelSpec, get_model
from fleet.training import Window

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from fleet.settings import Settings

CHAMPION = "champion"
CHALLENGER = "challenger"  # an undecided candidate, served in shadow (monitoring.shadow)
HISTORY_TAG = "champion_history"
HISTORY_KEEP = 50  # entries kept in the registered-model tag (the versions keep the rest)
MODEL_ARTIFACT = "model"
PROMOTING = "promoting"  # decided, alias not yet moved: a crash here is repaired later
INTERRUPTED = "interrupted"  # was promoting when its process died; the alias never moved
LOCK_TIMEOUT_S = 900.0  # how long a promotion waits for another of the same model
SERIALIZATION_FORMAT = "cloudpickle"  # see the module docstring


class RegistryError(RuntimeError):
    """A registry operation cannot proceed; the message says why and what to do."""


class NoPreviousChampion(RegistryError):
    """Rollback asked for, but there is no earlier champion to go back to."""


@dataclass(frozen=True)
class Candidate:
    """A trained, logged and registered model version awaiting the champion gate."""

    model_name: str
    version: int
    run_id: str
    window: Window
    partitions_digest: str
    metrics: dict[str, float]  # candidate on the holdout
    baseline: dict[str, float]  # trivial baseline on the same holdout

    @property
    def model_uri(self) -> str:
        return f"models:/{self.model_name}/{self.version}"


@dataclass(frozen=True)
class Decision:
    """Outcome of the champion gate for one candidate, as recorded on its version."""

    model_name: str
    version: int
    promoted: bool
    reason: str
    metric: str
    candidate_score: float
    champion_score: float | None
    baseline_score: float
    champion_before: int | None
    champion_after: int | None
    challenger: bool = False  # not promoted, but served as @challenger until traffic decides

    @property
    def label(self) -> str:
        if self.challenger:
            return CHALLENGER
        return "promoted" if self.promoted else "rejected"


@dataclass(frozen=True)
class ChampionInfo:
    """The current champion of a model and where its training data came from."""

    model_name: str
    version: int
    run_id: str
    window: Window
    partitions_digest: str
    metric: str
    score: float | None
    tags: dict[str, str]


@dataclass(frozen=True)
class ModelRow:
    """One line of ``fleet models``."""

    model: str
    task: str
    metric: str
    registered: bool
    versions: int = 0
    champion_version: int | None = None
    champion_score: float | None = None
    window: str | None = None
    last_version: int | None = None
    last_decision: str | None = None
    champion_gain: str = ""  # what promoted the champion: its gain, with the interval
    last_gain: str = ""  # the last decided version's, likewise
    challenger_version: int | None = None
    challenger_note: str = ""  # how far the shadow test has come
    note: str = ""


@dataclass
class TrainResult:
    """Everything one ``train_and_promote`` call did, with wall times per stage (s)."""

    candidate: Candidate
    decision: Decision
    rows_train: int
    rows_holdout: int
    timings: dict[str, float] = field(default_factory=dict)


# --- connection ------------------------------------------------------------------------


def client(settings: Settings) -> MlflowClient:
    """An MLflow client on the fleet's store; also points the fluent API at it."""
    import mlflow
    from mlflow import MlflowClient

    # the fluent API (start_run, log_model) reads the global URI; set it here, not at import
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    if settings.tracking_uri.startswith("sqlite:///"):
        Path(settings.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(
            parents=True, exist_ok=True
        )
    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)


def experiment_id(settings: Settings, spec: ModelSpec, mlc: MlflowClient | None = None) -> str:
    """The model's experiment, created with its artifacts under ``settings.artifact_root``."""
    mlc = mlc or client(settings)
    found = mlc.get_experiment_by_name(spec.name)
    if found is not None:
        return found.experiment_id
    location = settings.artifact_root / spec.name
    location.mkdir(parents=True, exist_ok=True)
    return mlc.create_experiment(
        spec.name, artifact_location=location.as_uri(), tags={"fleet.task": spec.task}
    )


# --- serialization and environment ----------------------------------------------------


_BY_VALUE = 0
_BY_VALUE_LOCK = threading.Lock()


@contextmanager
def portable_pickles() -> Iterator[None]:
    """Pickle this package's classes by value, so a logged model loads without it.

    The tabular pipelines hold :class:`fleet.encoding.FrameEncoder`; cloudpickle stores
    importable classes by reference (``fleet.encoding.FrameEncoder``), which fails with
    ``No module named 'fleet'`` wherever this package is not installed (``mlflow models
    serve``, a notebook). By value, the class's code travels inside the pickle and the
    model needs only the pinned libraries of :func:`pip_requirements`. Chosen over
    MLflow's ``code_paths`` (which would copy the whole package, with its own imports,
    into every model version) and over dropping the encoder (a sixth of the per-row cost).
    Only for the block: by value for everything cloudpickle sends would also copy
    ``fleet`` classes into task pickles (Dask), which must stay references.
    """
    import cloudpickle

    import fleet

    global _BY_VALUE
    with _BY_VALUE_LOCK:  # models log from several threads at once: count the holders
        if _BY_VALUE == 0:
            cloudpickle.register_pickle_by_value(fleet)
        _BY_VALUE += 1
    try:
        yield
    finally:
        with _BY_VALUE_LOCK:
            _BY_VALUE -= 1
            if _BY_VALUE == 0:
                cloudpickle.unregister_pickle_by_value(fleet)


def pip_requirements(serialization_format: str = SERIALIZATION_FORMAT) -> list[str]:
    """Pins from the installed versions: log_model would spend seconds inferring them."""
    dists = ["mlflow", "scikit-learn", "pandas", "numpy", "scipy"]
    dists.append("skops" if serialization_format == "skops" else "cloudpickle")
    return [f"{d}=={metadata.version(d)}" for d in dists]


@contextmanager
def _quiet_mlflow() -> Iterator[None]:
    """Silence MLflow's known-harmless chatter around log_model / log_input: the
    cloudpickle caution (decided above), pip's version when pip is not installed, the
    local dataset source registered twice, the integer-column schema hint (integer
    features are never null by the catalog)."""
    names = ("mlflow.sklearn", "mlflow.utils.environment", "mlflow.utils.uv_utils")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module=r"mlflow\.")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


# --- logging a candidate --------------------------------------------------------------


def _estimator_params(model: Any) -> dict[str, Any]:
    final = model.steps[-1][1] if hasattr(model, "steps") else model
    params = {"estimator": type(final).__name__}
    for key, value in final.get_params(deep=False).items():
        text = repr(value) if not isinstance(value, str) else value
        params[f"model.{key}"] = text[:500]  # categorical masks can be long
    return params


def _fmt(value: float | None) -> str:
    return "none" if value is None else f"{value:.6g}"


def log_candidate(
    settings: Settings,
    spec: ModelSpec,
    model: Any,
    X_train: pd.DataFrame,
    y_train: pd.Series,
    X_hold: pd.DataFrame,
    y_hold: pd.Series,
    window: Window,
    partitions: list[Path],
    metrics: dict[str, float],
    baseline: dict[str, float],
    plot_path: Path | None,
) -> Candidate:
    """One MLflow run for one training, the model registered as a new version of
    ``spec.name``; returns the candidate (not yet promoted)."""
    import mlflow
    from mlflow.models import infer_signature

    mlc = client(settings)
    exp = experiment_id(settings, spec, mlc)
    data_digest = lake.digest(partitions)
    rel = [str(p.relative_to(settings.lake_dir)) if p.is_relative_to(settings.lake_dir)
           else str(p) for p in partitions]  # fmt: skip
    lineage = {
        "run_model": spec.name,
        "dataset": spec.dataset.name,
        "partitions_digest": data_digest,
        "partitions": str(len(partitions)),
        **window.to_tags(),
    }
    fmt = SERIALIZATION_FORMAT
    source = str(settings.lake_dir / spec.dataset.name)

    with (
        _quiet_mlflow(),
        mlflow.start_run(experiment_id=exp, run_name=f"{spec.name} {window.end}") as run,
    ):
        run_id = run.info.run_id
        mlflow.log_params(
            {
                **_estimator_params(model),
                "features": ",".join(spec.features),
                "target": spec.target,
                "rows_train": len(X_train),
                "rows_holdout": len(X_hold),
                "serialization": fmt,
                **window.to_tags(),
            }
        )
        mlflow.log_metrics({f"holdout_{k}": v for k, v in metrics.items() if v == v})
        mlflow.log_metrics({f"baseline_{k}": v for k, v in baseline.items() if v == v})
        mlflow.set_tags(lineage)
        # lineage: the exact rows, named by the digest of the partitions they came from
        for context, X, y, (first, last) in (
            ("training", X_train, y_train, window.train_days),
            ("evaluation", X_hold, y_hold, window.holdout_days),
        ):
            ds = mlflow.data.from_pandas(
                X.assign(**{spec.target: y.to_numpy()}),
                source=source,
                targets=spec.target,
                name=f"{spec.dataset.name}-{first}-{last}",
                digest=data_digest,
            )
            mlflow.log_input(ds, context=context)
        with tempfile.TemporaryDirectory() as tmp:
            listing = Path(tmp) / "partitions.json"
            listing.write_text(json.dumps({"digest": data_digest, "partitions": rel}, indent=1))
            mlflow.log_artifact(str(listing), artifact_path="lineage")
        if plot_path is not None:
            mlflow.log_artifact(str(plot_path), artifact_path="evaluation")

        example = X_hold.head(5) if len(X_hold) else X_train.head(5)
        # classifiers answer with class probabilities everywhere, as the fleet's services do
        predict_fn = "predict_proba" if spec.task == "classification" else "predict"
        with portable_pickles():
            info = mlflow.sklearn.log_model(
                model,
                name=MODEL_ARTIFACT,
                signature=infer_signature(example, getattr(model, predict_fn)(example)),
                input_example=example,
                pip_requirements=pip_requirements(fmt),
                serialization_format=fmt,
                pyfunc_predict_fn=predict_fn,
            )

    _ensure_registered_model(mlc, spec)
    primary = spec.promotion.metric
    # the client call, not mlflow.register_model: that one prints "already exists" to
    # stderr for every version of a model the fleet registered on purpose just above
    version = mlc.create_model_version(
        spec.name,
        info.model_uri,
        run_id=run_id,
        model_id=info.model_id,
        tags={
            **lineage,
            "run_id": run_id,
            "metric": primary,
            f"holdout_{primary}": _fmt(metrics.get(primary)),
            f"baseline_{primary}": _fmt(baseline.get(primary)),
            "decision": "pending",
        },
    )
    return Candidate(
        model_name=spec.name,
        version=int(version.version),
        run_id=run_id,
        window=window,
        partitions_digest=data_digest,
        metrics=dict(metrics),
        baseline=dict(baseline),
    )


def _ensure_registered_model(mlc: MlflowClient, spec: ModelSpec) -> None:
    from mlflow.exceptions import MlflowException

    try:
        mlc.get_registered_model(spec.name)
    except MlflowException:
        mlc.create_registered_model(
            spec.name, tags={"task": spec.task}, description=spec.description
        )


# --- the champion gate ----------------------------------------------------------------


def _alias_version(mlc: MlflowClient, name: str, alias: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return mlc.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _champion_version(mlc: MlflowClient, name: str) -> Any | None:
    return _alias_version(mlc, name, CHAMPION)


def load_version(settings: Settings, model_name: str, version: int | str) -> Any:
    """The scikit-learn model stored as ``models:/<name>/<version>``."""
    import mlflow.sklearn

    client(settings)
    return mlflow.sklearn.load_model(f"models:/{model_name}/{version}")


def _append_history(mlc: MlflowClient, name: str, entry: dict[str, Any]) -> None:
    model = mlc.get_registered_model(name)
    history = json.loads(model.tags.get(HISTORY_TAG, "[]"))
    history.append(entry)
    mlc.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history[-HISTORY_KEEP:]))


def champion_history(settings: Settings, model_name: str) -> list[dict[str, Any]]:
    """Alias moves of a model, oldest first (the last ``HISTORY_KEEP``)."""
    model = client(settings).get_registered_model(model_name)
    return json.loads(model.tags.get(HISTORY_TAG, "[]"))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def champion_lock(settings: Settings, model_name: str, timeout_s: float = LOCK_TIMEOUT_S):
    """The lease every move of a model's ``@champion`` holds (``fleet.locks``)."""
    from fleet import locks

    return locks.hold(
        settings.state_db_url, f"champion-{model_name}", timeout_s=timeout_s,
        note=f"moving {model_name}@{CHAMPION}",
    )  # fmt: skip


def _set_tags(mlc: MlflowClient, name: str, version: int | str, tags: dict[str, str]) -> None:
    for key, value in tags.items():
        mlc.set_model_version_tag(name, str(version), key, value)


def repair(mlc: MlflowClient, name: str) -> list[int]:
    """Finish what a process that died mid-promotion left (call under the lock).

    A version tagged ``promoting`` either got the alias before the crash (it is the
    champion: the promotion happened, so it becomes ``promoted``) or did not (the alias
    never moved: ``interrupted``). Returns the versions repaired.
    """
    champ = _champion_version(mlc, name)
    champion = int(champ.version) if champ is not None else None
    fixed = []
    for mv in mlc.search_model_versions(f"name = '{name}'"):
        if mv.tags.get("decision") != PROMOTING:
            continue
        version = int(mv.version)
        if version == champion:
            _set_tags(mlc, name, version, {"decision": "promoted"})
            _append_history(
                mlc, name,
                {"version": version, "at": _now(), "event": "promoted",
                 "from": _int_or_none(mv.tags.get("champion_before")),
                 "reason": "promotion completed after an interruption"},
            )  # fmt: skip
        else:
            _set_tags(
                mlc, name, version,
                {"decision": INTERRUPTED,
                 "reason": f"{mv.tags.get('reason', '')}; interrupted before the alias moved"},
            )  # fmt: skip
        fixed.append(version)
    return fixed


def _int_or_none(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


def gain_text(tags: dict[str, str]) -> str:
    """``+0.0120 [+0.0040, +0.0200] at 95%``: a decided version's gain over the champion
    it was judged against, with its interval; empty when it was not compared."""
    try:
        gain, low, high = (float(tags[k]) for k in ("gain", "gain_low", "gain_high"))
    except (KeyError, ValueError):
        return ""
    return f"{gain:+.4f} [{low:+.4f}, {high:+.4f}] at {tags.get('gain_confidence', '?')}"


def judge(
    spec: ModelSpec,
    candidate: Any,
    champion: Any | None,
    X_hold: pd.DataFrame,
    y_hold: pd.Series,
    baseline_score: float,
) -> tuple[bool, str, dict[str, str]]:
    """The champion gate as a pure function: (promote, reason, tags to record).

    Candidate and champion answer the same held-out rows; the candidate is promoted when
    its gain's lower confidence bound (``promotion.confidence``, one-sided, from the
    paired test of ``fleet.stats.compare``) reaches ``promotion.margin`` and it beats
    the trivial baseline by the margin. The first champion needs only the baseline.
    """
    rule = spec.promotion
    metric = rule.metric
    cand_pred = training.predict(spec, candidate, X_hold)
    own = stats.estimate(spec, y_hold, cand_pred)
    cand_score = own.value
    beats_baseline = training.is_better(spec, cand_score, baseline_score)
    vs_base = f"the trivial baseline {baseline_score:.4f}"
    tags = {"candidate_score": _fmt(cand_score), "candidate_se": _fmt(own.se)}
    if champion is None:
        verdict = "beats" if beats_baseline else "does not beat"
        reason = f"first champion: {metric} {cand_score:.4f} {verdict} {vs_base}"
        if not beats_baseline:
            reason = reason.removeprefix("first champion: ")
        return beats_baseline, reason + f" by {rule.margin} or more", tags
    champ_pred = training.predict(spec, champion, X_hold)
    champ_score = training.prediction_scores(spec, y_hold, **champ_pred.as_kwargs())[metric]
    compared = stats.compare(spec, y_hold, cand_pred, champ_pred)
    low, high = compared.interval(rule.confidence)
    level = f"{rule.confidence:.0%}"
    clears = bool(math.isfinite(low) and low > rule.margin)
    promoted = clears and beats_baseline
    tags.update(
        {
            "champion_score": _fmt(champ_score),
            "gain": _fmt(compared.gain),
            "gain_low": _fmt(low),
            "gain_high": _fmt(high),
            "gain_confidence": level,
            "gain_test": compared.method,
        }
    )
    verdict = "clears" if clears else "does not clear"
    reason = (
        f"{metric} {cand_score:.4f} against {champ_score:.4f}: gain {compared.gain:+.4f}, "
        f"{level} lower bound {low:+.4f} ({compared.method}, {compared.rows} rows) {verdict} "
        f"the margin {rule.margin}"
    )
    if clears and not beats_baseline:
        reason += f", but does not beat {vs_base}"
    return promoted, reason, tags


def undecided(spec: ModelSpec, tags: dict[str, str], baseline_score: float) -> bool:
    """Whether a candidate the gate did not promote goes on as ``@challenger``: shadowing
    is on, its gain's interval still reaches above the margin (more rows could show
    it), and it beats the trivial baseline."""
    rule = spec.promotion
    if not rule.shadow.enabled or "gain_high" not in tags:
        return False
    low, high = float(tags["gain_low"]), float(tags["gain_high"])
    return (
        math.isfinite(high)
        and low <= rule.margin < high
        and training.is_better(spec, float(tags["candidate_score"]), baseline_score)
    )


def _retire_challenger(mlc: MlflowClient, name: str, keep: int, why: str) -> None:
    """Drop ``@challenger`` (unless it is version ``keep``): it is ``superseded``."""
    current = _alias_version(mlc, name, CHALLENGER)
    if current is None or int(current.version) == keep:
        return
    mlc.delete_registered_model_alias(name, CHALLENGER)
    _set_tags(mlc, name, current.version, {"decision": "superseded", "reason": why})


def promote_if_better(
    settings: Settings,
    spec: ModelSpec,
    candidate: Candidate,
    X_hold: pd.DataFrame,
    y_hold: pd.Series,
    lock_timeout_s: float = LOCK_TIMEOUT_S,
) -> Decision:
    """Judge the candidate against the current champion on the same holdout
    (:func:`judge`); move ``@champion`` only if it wins.

    Serialised per model: the champion is read, scored and replaced under the model's
    lease, so two promotions racing end with the better model as champion. The decision
    and its reasons are written on the candidate *before* the alias moves (``decision``
    is ``promoting`` until it has), so a crash at any step leaves the previous champion
    in place or the new one fully explained, and the next holder finishes the record
    (:func:`repair`).

    A candidate the holdout cannot decide (:func:`undecided`) becomes ``@challenger``
    in place of any earlier one; a promotion retires the challenger, which was judged
    against the champion it replaces.
    """
    mlc = client(settings)
    metric = spec.promotion.metric
    name = spec.name
    # both models come back from the registry: what is judged is what will be served
    cand_model = load_version(settings, name, candidate.version)
    base_score = candidate.baseline[metric]

    with champion_lock(settings, name, lock_timeout_s) as lease:
        repair(mlc, name)
        champ = _champion_version(mlc, name)  # read again, under the lease
        champ_version = int(champ.version) if champ is not None else None
        if champ_version == candidate.version:
            raise RegistryError(f"{name} v{candidate.version} is already the champion")
        champ_model = None if champ is None else load_version(settings, name, champ.version)
        promoted, reason, judged = judge(spec, cand_model, champ_model, X_hold, y_hold, base_score)
        if champ_version is not None:
            reason = reason.replace(" against ", f" against champion v{champ_version}'s ", 1)
        shadow = not promoted and champ_version is not None and undecided(spec, judged, base_score)
        if shadow:
            reason += f"; served as @{CHALLENGER} until labelled traffic decides"
        cand_score = float(judged["candidate_score"])
        champ_score = float(judged["champion_score"]) if "champion_score" in judged else None

        decided_at = _now()
        tags = {
            **judged,
            "decision": PROMOTING if promoted else CHALLENGER if shadow else "rejected",
            "reason": reason,
            "metric": metric,
            "champion_score": _fmt(champ_score),
            "baseline_score": _fmt(base_score),
            "champion_before": str(champ_version) if champ_version is not None else "none",
            "decided_at": decided_at,
            "holdout_rows": str(len(y_hold)),
        }
        lease.check()
        _set_tags(mlc, name, candidate.version, tags)  # the decision first, explained
        if promoted:
            lease.check()
            mlc.set_registered_model_alias(name, CHAMPION, str(candidate.version))
            _append_history(
                mlc, name,
                {"version": candidate.version, "at": decided_at, "event": "promoted",
                 "from": champ_version, "reason": reason},
            )  # fmt: skip
            _set_tags(mlc, name, candidate.version, {"decision": "promoted"})
            why = f"v{candidate.version} became champion; this was judged against v{champ_version}"
            _retire_challenger(mlc, name, candidate.version, why)
        elif shadow:
            lease.check()
            _retire_challenger(mlc, name, candidate.version,
                               f"v{candidate.version} is the newer @{CHALLENGER}")  # fmt: skip
            mlc.set_registered_model_alias(name, CHALLENGER, str(candidate.version))
            _append_history(
                mlc, name,
                {"version": candidate.version, "at": decided_at, "event": CHALLENGER,
                 "from": champ_version, "reason": reason},
            )  # fmt: skip
    return Decision(
        model_name=name,
        version=candidate.version,
        promoted=promoted,
        reason=reason,
        metric=metric,
        candidate_score=cand_score,
        champion_score=champ_score,
        baseline_score=base_score,
        champion_before=champ_version,
        champion_after=candidate.version if promoted else champ_version,
        challenger=shadow,
    )


def challenger_info(settings: Settings, model_name: str) -> ChampionInfo | None:
    """The model's ``@challenger`` (same fields as a champion's), or None."""
    mv = _alias_version(client(settings), model_name, CHALLENGER)
    return None if mv is None else _version_info(model_name, mv)


def promote_challenger(settings: Settings, model_name: str, reason: str) -> tuple[int | None, int]:
    """Move ``@champion`` to the ``@challenger`` (by hand, or the shadow test decided);
    returns (previous champion, new champion). Same lease and crash protocol as
    :func:`promote_if_better`; the previous champion is the new one's rollback."""
    mlc = client(settings)
    with champion_lock(settings, model_name) as lease:
        repair(mlc, model_name)
        chall = _alias_version(mlc, model_name, CHALLENGER)
        if chall is None:
            raise RegistryError(f"{model_name} has no @{CHALLENGER} to promote")
        champ = _champion_version(mlc, model_name)
        before = int(champ.version) if champ is not None else None
        at = _now()
        lease.check()
        _set_tags(
            mlc, model_name, chall.version,
            {"decision": PROMOTING, "reason": reason, "decided_at": at,
             "champion_before": str(before) if before is not None else "none"},
        )  # fmt: skip
        lease.check()
        mlc.set_registered_model_alias(model_name, CHAMPION, chall.version)
        mlc.delete_registered_model_alias(model_name, CHALLENGER)
        _append_history(
            mlc, model_name,
            {"version": int(chall.version), "at": at, "event": "promoted", "from": before,
             "reason": reason},
        )  # fmt: skip
        _set_tags(mlc, model_name, chall.version, {"decision": "promoted"})
    return before, int(chall.version)


def reject_challenger(settings: Settings, model_name: str, reason: str) -> int:
    """Drop ``@challenger``; its version is ``rejected`` with ``reason``. Returns it."""
    mlc = client(settings)
    with champion_lock(settings, model_name) as lease:
        chall = _alias_version(mlc, model_name, CHALLENGER)
        if chall is None:
            raise RegistryError(f"{model_name} has no @{CHALLENGER} to reject")
        lease.check()
        mlc.delete_registered_model_alias(model_name, CHALLENGER)
        _set_tags(mlc, model_name, chall.version,
                  {"decision": "rejected", "reason": reason, "decided_at": _now()})  # fmt: skip
        _append_history(
            mlc, model_name,
            {"version": int(chall.version), "at": _now(), "event": "challenger rejected",
             "reason": reason},
        )  # fmt: skip
    return int(chall.version)


def set_version_tags(
    settings: Settings, model_name: str, version: int, tags: dict[str, str]
) -> None:
    """Record ``tags`` on one version (the shadow test's looks)."""
    _set_tags(client(settings), model_name, version, tags)


def shadow_text(tags: dict[str, str]) -> str:
    """How far a challenger's shadow test has come, from its tags."""
    looks = tags.get("shadow_looks")
    if not looks:
        return "shadowing, no look at labelled traffic yet"
    text = f"look {looks}, {tags.get('shadow_rows', '?')} paired rows"
    gain = gain_text({k.removeprefix("shadow_"): v for k, v in tags.items()
                      if k.startswith("shadow_gain")})  # fmt: skip
    return f"{text}, gain {gain}" if gain else text


def rollback(settings: Settings, model_name: str) -> tuple[int, int]:
    """Move ``@champion`` back to the champion the current one replaced.

    Returns (from_version, to_version). Raises :class:`NoPreviousChampion` when the
    current champion was the first one, :class:`RegistryError` when there is none.
    Holds the model's champion lease, as promotions do.
    """
    from mlflow.exceptions import MlflowException

    mlc = client(settings)
    try:
        mlc.get_registered_model(model_name)
    except MlflowException:
        raise RegistryError(
            f"{model_name} has no registered versions yet; run `fleet train {model_name}`"
        ) from None
    with champion_lock(settings, model_name) as lease:
        repair(mlc, model_name)
        current = _champion_version(mlc, model_name)
        if current is None:
            raise RegistryError(
                f"{model_name} has no champion; nothing to roll back "
                f"(run `fleet train {model_name}`)"
            )
        before = current.tags.get("champion_before", "none")
        if before in ("", "none"):
            raise NoPreviousChampion(
                f"{model_name} v{current.version} is the first champion: there is no previous "
                "champion to roll back to"
            )
        try:
            mlc.get_model_version(model_name, before)
        except MlflowException:
            raise RegistryError(
                f"{model_name}: previous champion v{before} no longer exists in the registry"
            ) from None
        at = _now()
        lease.check()
        _set_tags(mlc, model_name, current.version, {"rolled_back_at": at})
        mlc.set_registered_model_alias(model_name, CHAMPION, before)
        mlc.set_model_version_tag(model_name, before, "restored_at", at)
        _append_history(
            mlc, model_name,
            {"version": int(before), "at": at, "event": "rollback", "from": int(current.version),
             "reason": f"rollback from v{current.version}"},
        )  # fmt: skip
    return int(current.version), int(before)


# --- reading the fleet ----------------------------------------------------------------


def champion_info(settings: Settings, model_name: str) -> ChampionInfo | None:
    """The current champion with its training window and data digest, or None."""
    mlc = client(settings)
    try:
        mv = _champion_version(mlc, model_name)
    except Exception:
        return None
    return None if mv is None else _version_info(model_name, mv)


def _version_info(model_name: str, mv: Any) -> ChampionInfo:
    tags = dict(mv.tags)
    metric = tags.get("metric", get_model(model_name).promotion.metric)
    raw = tags.get("candidate_score", tags.get(f"holdout_{metric}", "none"))
    return ChampionInfo(
        model_name=model_name,
        version=int(mv.version),
        run_id=tags.get("run_id", mv.run_id or ""),
        window=Window.from_tags(tags),
        partitions_digest=tags.get("partitions_digest", ""),
        metric=metric,
        score=None if raw == "none" else float(raw),
        tags=tags,
    )


def _champion_gain(tags: dict[str, str]) -> str:
    """The gain that made the champion: on live traffic when the shadow test promoted it."""
    if tags.get("shadow_looks"):
        return f"on live traffic: {shadow_text(tags)}"
    holdout = gain_text(tags)
    return f"gain {holdout}" if holdout else ""


def fleet_table(settings: Settings) -> list[ModelRow]:
    """One row per catalog model: champion, its metric and window, last decision."""
    from mlflow.exceptions import MlflowException

    mlc = client(settings)
    rows = []
    for spec in catalog.models().values():
        metric = spec.promotion.metric
        try:
            mlc.get_registered_model(spec.name)
        except MlflowException:
            rows.append(
                ModelRow(spec.name, spec.task, metric, registered=False,
                         note=f"not trained yet: fleet train {spec.name}")
            )  # fmt: skip
            continue
        versions = mlc.search_model_versions(f"name = '{spec.name}'")
        latest = max(versions, key=lambda v: int(v.version)) if versions else None
        champ = champion_info(settings, spec.name)
        chall = challenger_info(settings, spec.name)
        # read-only: an interrupted promotion is shown, the next writer repairs it
        broken = [
            f"v{v.version} {v.tags.get('decision')} (its process died while promoting)"
            for v in versions
            if v.tags.get("decision") in (PROMOTING, INTERRUPTED)
            and (champ is None or int(v.version) != champ.version)
        ]
        rows.append(
            ModelRow(
                model=spec.name,
                task=spec.task,
                metric=metric,
                registered=True,
                versions=len(versions),
                champion_version=champ.version if champ else None,
                champion_score=champ.score if champ else None,
                window=str(champ.window) if champ else None,
                last_version=int(latest.version) if latest else None,
                last_decision=latest.tags.get("decision") if latest else None,
                champion_gain=_champion_gain(champ.tags) if champ else "",
                last_gain=gain_text(dict(latest.tags)) if latest else "",
                challenger_version=chall.version if chall else None,
                challenger_note=shadow_text(chall.tags) if chall else "",
                note="; ".join(
                    ([] if champ else ["no champion: no version passed the gate"]) + broken
                ),
            )
        )
    return rows


# --- the whole step, for flows and the CLI --------------------------------------------


def train_and_promote(
    settings: Settings,
    spec: ModelSpec,
    until: date,
    frame: pd.DataFrame | None = None,
    threads: int = 1,
) -> TrainResult:
    """Window -> lake partitions -> fit -> evaluate -> log + register -> champion gate.

    ``frame`` may carry the window's rows already read (the partitions are still listed
    for the lineage digest); otherwise they are read from the lake. ``threads`` caps
    OpenMP/BLAS threads while fitting (see ``training.limit_threads``).
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal t0
        now = time.perf_counter()
        timings[stage] = round(now - t0, 3)
        t0 = now

    window = training.training_window(spec, until)
    partitions = training.window_partitions(settings.lake_dir, spec, window)
    if not partitions:
        first, last = window.days
        raise RegistryError(
            f"{spec.name}: no {spec.dataset.name} partitions in {first}..{last}; "
            f"run `fleet etl --start {first} --end {last}` first"
        )
    if frame is None:
        frame = lake.read_partitions(partitions)
    train_rows, hold_rows = training.split_by_window(spec, frame, window)
    X_train, y_train = training.training_frame(spec, train_rows)
    X_hold, y_hold = training.training_frame(spec, hold_rows)
    if len(X_hold) == 0:
        raise RegistryError(f"{spec.name}: no labelled rows in the holdout of {window}")
    lap("read")
    model = training.fit(spec, X_train, y_train, threads=threads)
    lap("fit")
    metrics = training.score(spec, model, X_hold, y_hold)
    baseline = training.baseline_score(spec, y_train, X_hold, y_hold)
    with tempfile.TemporaryDirectory() as tmp:
        plot = training.evaluation_plot(spec, model, X_hold, y_hold, Path(tmp) / "evaluation.png")
        lap("evaluate")
        candidate = log_candidate(
            settings, spec, model, X_train, y_train, X_hold, y_hold, window, partitions,
            metrics, baseline, plot,
        )  # fmt: skip
    lap("log_model")
    decision = promote_if_better(settings, spec, candidate, X_hold, y_hold)
    lap("promotion")
    return TrainResult(candidate, decision, len(X_train), len(X_hold), timings)
