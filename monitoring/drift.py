"""The Evidently drift job: data drift per monitored column, quality once labels exist.

Everything Evidently needs is derived from the catalog spec (no second schema): the
column kinds give the ``DataDefinition``, the task gives the quality metrics, text
features get text descriptors.

Drift methods are explicit. Evidently's defaults switch with sample size (p-value tests
below ~1,000 rows, distances above), so the same threshold would mean different things
for a quiet week and a busy one; distances keep one meaning at every size:

- numeric and integer columns: Wasserstein distance normed by the reference's standard
  deviation, drifted at >= 0.1 (a tenth of a standard deviation of mass moved);
- categorical columns: Jensen-Shannon distance, drifted at >= 0.1;
- text columns: a domain classifier tells current from reference texts; drifted when
  its ROC AUC beats the 95th percentile of a random classifier's on the same split;
- text descriptors (length in characters, words): as numeric columns. Only descriptors
  that need no downloads (no NLTK data, no models).

Large windows are sampled (a fixed seed, at most ``max_rows`` per side): the cost of an
Evidently run grows faster than its rows, while two 10k-row samples of the same real
weeks differ by 0.005-0.04 in these distances, well under the 0.1 thresholds above.
"""

from __future__ import annotations

import dataclasses
import html
import math
import os
import shutil
import threading
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fleet import stats, training
from fleet.files import write_text_atomic
from fleet.stats import Estimate
from fleet.training import Predictions

if TYPE_CHECKING:
    from fleet.catalog import ModelSpec

NUMERIC_METHOD, NUMERIC_THRESHOLD = "wasserstein", 0.1
CATEGORICAL_METHOD, CATEGORICAL_THRESHOLD = "jensenshannon", 0.1
TEXT_METHOD, TEXT_THRESHOLD = "perc_text_content_drift", 0.95
DEFAULT_MAX_ROWS = 10_000
DEFAULT_SEED = 2013

PROBABILITY = "prediction_probability"
LABEL = "prediction_label"
VALUE = "prediction_value"


@dataclass(frozen=True)
class ColumnDrift:
    column: str
    method: str
    threshold: float
    score: float
    drifted: bool
    counts: bool = True  # False for a watched column: shown, never part of the share


@dataclass
class DriftMeasure:
    """What one Evidently run found; the report file is written alongside."""

    drift_share: float
    drifted_columns: list[str]  # judged columns that drifted
    columns: list[ColumnDrift]
    rows_current: int
    rows_reference: int
    rows_labelled: int
    sampled_current: int
    sampled_reference: int
    quality: float | None  # spec.promotion.metric on the labelled rows, None without labels
    quality_se: float | None  # its standard error (fleet.stats)
    report_path: Path
    seconds: dict[str, float] = field(default_factory=dict)


def text_descriptors(spec: ModelSpec) -> dict[str, tuple[str, str]]:
    """Descriptor column -> (text feature, descriptor kind) for the spec's text features."""
    return spec.text_descriptors


def column_methods(spec: ModelSpec) -> dict[str, tuple[str, float]]:
    """Every measured column (features, then text descriptors) -> (method, threshold).

    A column the spec's ``drift.features`` excludes is left out; one with its own
    threshold gets it; a watched one is measured with its kind's default.
    """
    kinds: dict[str, str] = {c.name: c.kind for c in spec.feature_columns}
    kinds.update({name: "numeric" for name in text_descriptors(spec)})
    defaults = {
        "numeric": (NUMERIC_METHOD, NUMERIC_THRESHOLD),
        "integer": (NUMERIC_METHOD, NUMERIC_THRESHOLD),
        "categorical": (CATEGORICAL_METHOD, CATEGORICAL_THRESHOLD),
        "text": (TEXT_METHOD, TEXT_THRESHOLD),
    }
    methods: dict[str, tuple[str, float]] = {}
    for name, kind in kinds.items():
        if kind not in defaults:
            raise ValueError(f"{spec.name}: feature {name!r} of kind {kind} not monitored")
        judgement = spec.drift.judgement(name)
        if judgement == "exclude":
            continue
        method, threshold = defaults[kind]
        own = isinstance(judgement, float | int)
        methods[name] = (method, float(judgement) if own else threshold)
    return methods


def judged_columns(spec: ModelSpec) -> list[str]:
    """The measured columns that count toward the drift share (not watched)."""
    return [c for c in column_methods(spec) if spec.drift.judgement(c) != "watch"]


def sample(frame: pd.DataFrame, max_rows: int | None, seed: int = DEFAULT_SEED) -> pd.DataFrame:
    """At most ``max_rows`` rows, drawn without replacement with a fixed seed."""
    if max_rows is None or len(frame) <= max_rows:
        return frame.reset_index(drop=True)
    return frame.sample(n=max_rows, random_state=seed).reset_index(drop=True)


def label_strings(spec: ModelSpec, values: pd.Series) -> pd.Series:
    """Class labels as the strings the models answer with (``1`` not ``1.0``)."""

    def one(v: Any) -> Any:
        if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
            return None
        if isinstance(v, (int, np.integer)) or (isinstance(v, float) and v.is_integer()):
            return str(int(v))
        return str(v)

    return values.astype(object).map(one)


def logged_predictions(spec: ModelSpec, rows: pd.DataFrame) -> Predictions:
    """The served answers of logged rows, as :class:`fleet.training.Predictions`."""
    if spec.task == "regression":
        return Predictions(value=rows[VALUE].astype(float).to_numpy())
    return Predictions(
        probability=rows[PROBABILITY].astype(float).to_numpy(),
        label=rows[LABEL].astype(str).to_numpy(),
    )


def labels_of(spec: ModelSpec, labelled: pd.DataFrame) -> pd.Series:
    truth = labelled[spec.target]
    return truth.astype(float) if spec.task == "regression" else label_strings(spec, truth)


def quality(spec: ModelSpec, labelled: pd.DataFrame) -> Estimate:
    """``spec.promotion.metric`` of the logged predictions against the joined labels, with
    its standard error.

    Computed by ``fleet.training.prediction_scores``, the function that scores a
    holdout, so the value compares with the champion's recorded score.
    """
    if len(labelled) == 0:
        raise ValueError(f"{spec.name}: no labelled rows to score")
    return stats.estimate(
        spec, labels_of(spec, labelled).reset_index(drop=True), logged_predictions(spec, labelled)
    )


def _definition(spec: ModelSpec, with_quality: bool) -> Any:
    from evidently import BinaryClassification, DataDefinition, Regression

    numeric = [c.name for c in spec.feature_columns if c.kind in ("numeric", "integer")]
    categorical = [c.name for c in spec.feature_columns if c.kind == "categorical"]
    text = [c.name for c in spec.feature_columns if c.kind == "text"]
    kwargs: dict[str, Any] = {}
    if with_quality and spec.task == "regression":
        numeric += [spec.target, VALUE]
        kwargs["regression"] = [Regression(target=spec.target, prediction=VALUE)]
    elif with_quality:
        numeric.append(PROBABILITY)
        categorical += [spec.target, LABEL]
        positive = spec.labels[-1] if spec.labels else None
        kwargs["classification"] = [
            BinaryClassification(
                target=spec.target,
                prediction_labels=LABEL,
                prediction_probas=PROBABILITY,
                pos_label=positive,
            )
        ]
    return DataDefinition(
        numerical_columns=numeric, categorical_columns=categorical, text_columns=text, **kwargs
    )


def _descriptors(spec: ModelSpec) -> list[Any]:
    from evidently.descriptors import TextLength, WordCount

    made = []
    for name, (column, kind) in text_descriptors(spec).items():
        made.append(
            TextLength(column, alias=name) if kind == "length" else WordCount(column, alias=name)
        )
    return made


def _features(spec: ModelSpec, frame: pd.DataFrame) -> pd.DataFrame:
    out = training.feature_frame(spec, frame)
    # Evidently reads integer features as numbers; float keeps nulls and dtypes aligned
    for col in spec.feature_columns:
        if col.kind == "integer":
            out[col.name] = out[col.name].astype("float64")
    return out


def parse_drift(snapshot: dict[str, Any]) -> tuple[float, list[ColumnDrift]]:
    """(drift share, per-column results) from a snapshot's ``dict()``, read by metric type.

    A column counts as drifted when its ValueDrift test failed, which applies the
    method's own direction (distance at or above the threshold, p-value below it).
    """
    share = None
    scores: dict[str, dict[str, Any]] = {}
    for metric in snapshot["metrics"]:
        config = metric.get("config", {})
        kind = config.get("type", "")
        if kind.endswith(":DriftedColumnsCount"):
            share = float(metric["value"]["share"])
        elif kind.endswith(":ValueDrift"):
            scores[config["column"]] = {
                "method": config["method"],
                "threshold": float(config["threshold"]),
                "score": float(metric["value"]),
            }
    failed = set()
    for test in snapshot["tests"]:
        params = test.get("metric_config", {}).get("params", {})
        if params.get("type", "").endswith(":ValueDrift") and test["status"] == "FAIL":
            failed.add(params["column"])
    if share is None:
        raise ValueError("the snapshot holds no DriftedColumnsCount metric")
    columns = [ColumnDrift(c, s["method"], s["threshold"], s["score"], c in failed)
               for c, s in scores.items()]  # fmt: skip
    return share, columns


# where a report puts the decision once the policy has decided (:func:`stamp_decision`)
DECISION_MARK, DECISION_END = "<!-- fleet: decision -->", "<!-- /fleet: decision -->"
HEADER_STYLE = (
    "font-family:system-ui,sans-serif;margin:1rem 2rem;padding:0.8rem 1rem;"
    "border-left:6px solid {colour};background:#fafafa"
)


def asset_files(assets: Path) -> tuple[str, str]:
    """Evidently's script and icon font, copied once into ``assets`` (file names).

    Every report links these instead of embedding them (3.5 MB each time otherwise);
    the name carries Evidently's version, so reports of an older one keep theirs.
    """
    import evidently
    from evidently.legacy.utils.dashboard import STATIC_PATH

    script = f"evidently-{evidently.__version__}.js"
    font = "material-ui-icons.woff2"
    assets.mkdir(parents=True, exist_ok=True)
    for source, name in (("index.js", script), (font, font)):
        target = assets / name
        if not target.is_file():
            tmp = target.with_suffix(f".tmp-{os.getpid()}-{threading.get_ident()}")
            shutil.copyfile(Path(STATIC_PATH) / source, tmp)
            tmp.replace(target)
    return script, font


def _combined_html(sections: list[tuple[str, Any]], report_path: Path, assets: Path | None) -> str:
    """One page from several snapshots, each under its own heading.

    Evidently renders one snapshot per page; drift runs on every current row but quality
    only on the labelled ones, so they are two runs shown as one report. With ``assets``
    the page links the shared script and font there (works offline, about 1/10 the size);
    without, it embeds them. The page opens with a placeholder for the decision.
    """
    from evidently.core.metric_types import metric_tests_widget, render_widgets
    from evidently.core.report import metric_tests_stats
    from evidently.legacy.model.dashboard import DashboardInfo
    from evidently.legacy.model.widget import AdditionalGraphInfo, BaseWidgetInfo
    from evidently.legacy.renderers.html_widgets import group_widget
    from evidently.legacy.utils import dashboard

    widgets = [group_widget(title=title, widgets=snap._widgets) for title, snap in sections]
    tests = [t for _, snap in sections for t in snap.tests_results]
    if tests:
        widgets += [metric_tests_stats(tests), metric_tests_widget(tests)]
    if assets is None:
        page = render_widgets(widgets, as_iframe=False)
    else:  # Evidently's render_widgets, with a template told to link instead of embed
        script, font = asset_files(assets)
        where = Path(os.path.relpath(assets, report_path.parent)).as_posix()
        graphs: dict[str, Any] = {}
        for widget in widgets:
            for graph in widget.get_additional_graphs():
                info = graph.params if isinstance(graph, AdditionalGraphInfo) else graph
                graphs[f"{graph.id}"] = info.dict() if isinstance(info, BaseWidgetInfo) else info
        page = dashboard.file_html_template(dashboard.TemplateParams(
            dashboard_id="metric_" + uuid.uuid4().hex,
            dashboard_info=DashboardInfo(name="Report", widgets=widgets),
            additional_graphs=graphs,
            embed_font=False,
            embed_lib=False,
            font_file=f"{where}/{font}",
            include_js_files=[f"{where}/{script}"],
        ))  # fmt: skip
    return page.replace("<body>", f"<body>\n{DECISION_MARK}{DECISION_END}", 1)


def stamp_decision(path: Path, title: str, lines: list[str], fired: bool) -> None:
    """Put the decision at the top of a written report: what fired, why, what followed.

    Replaces the decision already there: two jobs on one window (monitors racing) write
    one page, and the last decision stands, as in the index.
    """
    path = Path(path)
    colour = "#b00020" if fired else "#2e7d32"
    items = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
    block = (
        f'<section id="fleet-decision" style="{HEADER_STYLE.format(colour=colour)}">'
        f'<h2 style="margin:0 0 0.4rem">{html.escape(title)}</h2><ul>{items}</ul></section>'
    )
    page = path.read_text(encoding="utf-8")
    start, end = page.find(DECISION_MARK), page.find(DECISION_END)
    if start < 0 or end < start:
        raise ValueError(f"{path}: no decision placeholder (not written by this version)")
    stamped = page[: start + len(DECISION_MARK)] + block + page[end:]
    write_text_atomic(path, stamped)


def measure(
    spec: ModelSpec,
    reference: pd.DataFrame,
    current: pd.DataFrame,
    report_path: Path,
    max_rows: int | None = DEFAULT_MAX_ROWS,
    seed: int = DEFAULT_SEED,
    title: str = "",
    assets: Path | None = None,
) -> DriftMeasure:
    """Run the drift (and, with labels, quality) report and write it to ``report_path``.

    ``reference``: the champion's training rows (at least the feature columns).
    ``current``: logged rows, feature columns plus ``prediction_*`` and ``spec.target``
    (null where no label has arrived yet).
    """
    from evidently import Dataset, Report
    from evidently.metrics import DriftedColumnsCount, ValueDrift
    from evidently.presets import ClassificationQuality, RegressionQuality

    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    if len(current) == 0 or len(reference) == 0:
        raise ValueError(f"{spec.name}: drift needs current and reference rows")
    ref = _features(spec, sample(reference, max_rows, seed))
    cur_rows = sample(current, max_rows, seed)
    cur = _features(spec, cur_rows)
    seconds["sample"] = time.perf_counter() - t0

    methods = column_methods(spec)
    drift_metrics: list[Any] = [
        DriftedColumnsCount(
            columns=judged_columns(spec),
            per_column_method={c: m for c, (m, _) in methods.items()},
            per_column_threshold={c: t for c, (_, t) in methods.items()},
            drift_share=spec.drift.share_threshold,
        )
    ]
    drift_metrics += [ValueDrift(column=c, method=m, threshold=t) for c, (m, t) in methods.items()]
    definition = _definition(spec, with_quality=False)
    descriptors = _descriptors(spec) or None
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        # the domain classifier and sklearn metrics warn on tiny or one-class samples
        warnings.simplefilter("ignore")
        drift_snap = Report(drift_metrics, include_tests=True).run(
            Dataset.from_pandas(cur, data_definition=definition, descriptors=descriptors),
            Dataset.from_pandas(ref, data_definition=definition, descriptors=descriptors),
        )
    seconds["drift"] = time.perf_counter() - t0
    share, columns = parse_drift(drift_snap.dict())
    counted = set(judged_columns(spec))
    columns = [dataclasses.replace(c, counts=c.column in counted) for c in columns]
    sections = [(f"Data drift {title}".strip(), drift_snap)]

    labelled_all = current[current[spec.target].notna()] if spec.target in current else current[:0]
    value = None
    if len(labelled_all):
        t0 = time.perf_counter()
        value = quality(spec, labelled_all.reset_index(drop=True))
        labelled = cur_rows[cur_rows[spec.target].notna()].reset_index(drop=True)
        if len(labelled):
            frame = _features(spec, labelled)
            if spec.task == "regression":
                frame[spec.target] = labelled[spec.target].astype(float)
                frame[VALUE] = labelled[VALUE].astype(float)
                preset: Any = RegressionQuality()
            else:
                frame[spec.target] = label_strings(spec, labelled[spec.target])
                frame[LABEL] = labelled[LABEL].astype(str)
                frame[PROBABILITY] = labelled[PROBABILITY].astype(float)
                preset = ClassificationQuality()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quality_snap = Report([preset]).run(
                    Dataset.from_pandas(frame, data_definition=_definition(spec, True)), None
                )
            sections.append((f"Quality on {len(labelled)} labelled rows", quality_snap))
        seconds["quality"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    report_path = Path(report_path)
    write_text_atomic(report_path, _combined_html(sections, report_path, assets))
    seconds["html"] = time.perf_counter() - t0
    return DriftMeasure(
        drift_share=share,
        drifted_columns=[c.column for c in columns if c.drifted and c.counts],
        columns=columns,
        rows_current=len(current),
        rows_reference=len(reference),
        rows_labelled=len(labelled_all),
        sampled_current=len(cur),
        sampled_reference=len(ref),
        quality=None if value is None else value.value,
        quality_se=None if value is None else value.se,
        report_path=report_path,
        seconds={k: round(v, 3) for k, v in seconds.items()},
    )
