"""Drift monitoring: the Evidently job on real shifted and unshifted flights, the trigger
policy, the report index and `fleet monitor` end to end."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fleet import etl, lake, registry, serving, stats, training
from fleet.catalog import DriftPolicy, PromotionRule, get_dataset, get_model
from fleet.predictions import LoggedPrediction, PredictionLog
from fleet.settings import Settings
from monitoring import drift, index, policy
from monitoring.history import MonitorHistory
from monitoring.job import run_monitor
from tests.serving_fixtures import state_settings

FLIGHTS = get_dataset("flights")

FLIGHT_DELAY = get_model("flight_delay")
T0 = datetime(2013, 7, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def flights_jan_jul() -> pd.DataFrame:
    """Real flights of January and July 2013, transformed by the ETL (read-only)."""
    from fleet import sources

    raw = sources.load_flights()
    return sources.transform_flights(raw[raw["month"].isin([1, 7])], sources.load_weather())


def _days(frame: pd.DataFrame, first: date, last: date) -> pd.DataFrame:
    day = frame["scheduled_departure"].dt.date
    return frame[(day >= first) & (day <= last)].reset_index(drop=True)


def _with_predictions(frame: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Rows as the log returns them: features, made-up answers and the joined label."""
    rng = np.random.default_rng(seed)
    prob = rng.random(len(frame))
    return frame.assign(
        prediction_probability=prob, prediction_label=np.where(prob > 0.5, "1", "0")
    )


# --- the Evidently job on real data ------------------------------------------------------


def test_drift_is_found_on_a_really_shifted_window(flights_jan_jul, tmp_path: Path) -> None:
    reference = _days(flights_jan_jul, date(2013, 1, 1), date(2013, 1, 21))
    july = _with_predictions(_days(flights_jan_jul, date(2013, 7, 1), date(2013, 7, 7)))
    path = tmp_path / "reports" / "july.html"
    found = drift.measure(FLIGHT_DELAY, reference, july, path, max_rows=5000)

    # summer weather is far from January's: temperature and dew point drift, but they are
    # watched (seasonal), shown and never counted; the calendar is not measured at all
    by_column = {c.column: c for c in found.columns}
    assert by_column["temp"].drifted and by_column["dewp"].drifted
    assert not by_column["temp"].counts and "temp" not in found.drifted_columns
    assert "month" not in by_column and "weekday" not in by_column
    assert by_column["dest"].threshold == 0.25  # the spec's own threshold
    # the dataset-level count covers the judged columns only and agrees with the tests
    judged = drift.judged_columns(FLIGHT_DELAY)
    assert set(judged) == {"carrier", "origin", "dest", "distance", "sched_dep_hour"}
    assert found.drift_share == pytest.approx(len(found.drifted_columns) / len(judged))
    assert found.sampled_current == 5000 < found.rows_current
    assert found.sampled_reference == 5000 < found.rows_reference
    # labels present: quality computed on every labelled row, not the sample
    labelled = july["late"].notna().sum()
    assert found.rows_labelled == labelled
    assert 0.4 < found.quality < 0.6  # random answers: AUC near 0.5
    text = path.read_text()
    assert text.lstrip().lower().startswith("<!doctype html") or "<html" in text[:500].lower()
    assert "Data drift" in text and "labelled rows" in text


def test_no_drift_on_an_in_distribution_window(flights_jan_jul, tmp_path: Path) -> None:
    weeks = _days(flights_jan_jul, date(2013, 1, 1), date(2013, 1, 21))
    shuffled = weeks.sample(frac=1.0, random_state=3).reset_index(drop=True)
    half = len(shuffled) // 2
    reference, current = shuffled[:half], shuffled[half:].drop(columns=["late"])
    found = drift.measure(FLIGHT_DELAY, reference, current, tmp_path / "same.html", max_rows=5000)
    assert found.drifted_columns == []
    assert found.drift_share == 0.0
    assert found.quality is None and found.rows_labelled == 0  # no labels, no quality


@pytest.mark.parametrize("model", ["flight_delay", "arrival_delay"])
def test_in_distribution_weeks_fire_nothing(flights_jan_jul, tmp_path: Path, model: str) -> None:
    """Two halves of the same three weeks: the champion fitted on one, its holdout score
    recorded as the gate does; the other half served, logged and labelled. The policy
    must not fire: no drift of the judged columns, no significant quality drop."""
    spec = get_model(model)
    weeks = _days(flights_jan_jul, date(2013, 1, 1), date(2013, 1, 21))
    shuffled = weeks.sample(frac=1.0, random_state=5).reset_index(drop=True)
    third = len(shuffled) // 3
    train, hold, current = shuffled[:third], shuffled[third : 2 * third], shuffled[2 * third :]
    champion = training.fit(spec, *training.training_frame(spec, train), threads=2)
    X_hold, y_hold = training.training_frame(spec, hold)
    recorded = stats.estimate(spec, y_hold, training.predict(spec, champion, X_hold))
    X, y = training.training_frame(spec, current)
    answers = pd.DataFrame(serving.predict(spec, champion, X)).add_prefix("prediction_")
    logged = pd.concat([X, answers], axis=1).assign(**{spec.target: y.to_numpy()})
    found = drift.measure(spec, train, logged, tmp_path / "same.html", max_rows=5000)
    decision = policy.decide(
        spec.drift, spec.promotion, rows=len(logged), labelled=len(logged),
        drift_share=found.drift_share, quality=found.quality, champion_score=recorded.value,
        last_fired=None, now=T0, quality_se=found.quality_se, champion_se=recorded.se,
    )  # fmt: skip
    assert not decision.fire, decision.reason
    assert found.drifted_columns == []
    assert "lower bound" in decision.reason


def test_quality_matches_the_training_metric(flights_jan_jul) -> None:
    """The monitor's metric on logged answers equals fleet.training.score on the rows."""
    rows = _days(flights_jan_jul, date(2013, 1, 1), date(2013, 1, 14))
    X, y = training.training_frame(FLIGHT_DELAY, rows)
    model = training.fit(FLIGHT_DELAY, X, y)
    answers = pd.DataFrame(serving.predict(FLIGHT_DELAY, model, X)).add_prefix("prediction_")
    logged = pd.concat([X, answers], axis=1).assign(late=y.to_numpy())
    expected = training.score(FLIGHT_DELAY, model, X, y)
    assert drift.quality(FLIGHT_DELAY, logged).value == pytest.approx(expected["roc_auc"])
    reviews = get_model("review_sentiment")
    logged = pd.DataFrame(
        {
            "sentiment": ["great", "other", "great"],
            "prediction_label": ["great", "great", "great"],
            "prediction_probability": [0.9, 0.6, 0.8],
        }
    )
    assert drift.quality(reviews, logged).value == pytest.approx(2 / 3)


def test_review_drift_uses_text_descriptors_without_downloads(reviews_table, tmp_path) -> None:
    spec = get_model("review_sentiment")
    assert list(drift.column_methods(spec)) == ["review", "review_length", "review_words"]
    half = len(reviews_table) // 2
    found = drift.measure(
        spec,
        reviews_table[:half],
        reviews_table[half : half + 300].drop(columns=["sentiment"]),
        tmp_path / "r.html",
    )
    assert {c.column for c in found.columns} == {"review", "review_length", "review_words"}
    assert "review_length" in (tmp_path / "r.html").read_text()


def test_parse_drift_reads_results_by_name() -> None:
    snapshot = {
        "metrics": [
            {"config": {"type": "evidently:metric_v2:ValueDrift", "column": "b",
                        "method": "wasserstein", "threshold": 0.1}, "value": 0.3},
            {"config": {"type": "evidently:metric_v2:DriftedColumnsCount"},
             "value": {"count": 1.0, "share": 0.5}},
            {"config": {"type": "evidently:metric_v2:ValueDrift", "column": "a",
                        "method": "jensenshannon", "threshold": 0.1}, "value": 0.01},
        ],
        "tests": [
            {"status": "FAIL", "metric_config": {"params": {
                "type": "evidently:metric_v2:ValueDrift", "column": "b"}}},
            {"status": "SUCCESS", "metric_config": {"params": {
                "type": "evidently:metric_v2:ValueDrift", "column": "a"}}},
        ],
    }  # fmt: skip
    share, columns = drift.parse_drift(snapshot)
    assert share == 0.5
    assert {c.column: c.drifted for c in columns} == {"b": True, "a": False}
    with pytest.raises(ValueError, match="DriftedColumnsCount"):
        drift.parse_drift({"metrics": [], "tests": []})


# --- the trigger policy ------------------------------------------------------------------

POLICY = DriftPolicy(share_threshold=0.5, quality_drop=0.05, min_rows=500, cooldown_days=14)
AUC = PromotionRule(metric="roc_auc", margin=0.005)
MAE = PromotionRule(metric="mae", margin=0.1)


def _decide(now: datetime, last: datetime | None, **changes) -> policy.TriggerDecision:
    args = dict(rows=1000, labelled=0, drift_share=0.6, quality=None, champion_score=0.8)
    args.update(changes)
    return policy.decide(POLICY, AUC, last_fired=last, now=now, **args)


def test_policy_fires_once_under_repeated_drift_inside_the_cooldown() -> None:
    last = None
    fired = []
    for day in range(0, 30):  # a drifted window every day for a month
        now = T0 + timedelta(days=day)
        decision = _decide(now, last)
        if decision.fire:
            fired.append(day)
            last = now
        else:
            assert "cooldown" in decision.reason
    assert fired == [0, 14, 28]


def test_policy_rules() -> None:
    assert not _decide(T0, None, rows=499).fire  # too few new rows
    assert "499 new rows" in _decide(T0, None, rows=499).reason
    assert not _decide(T0, None, drift_share=0.49).fire
    assert _decide(T0, None, drift_share=0.5).fire  # at the threshold fires
    # quality: a drop above 0.05 AUC at its lower bound fires; too few labels do not count
    assert _decide(T0, None, drift_share=0.0, labelled=600, quality=0.74).fire
    assert not _decide(T0, None, drift_share=0.0, labelled=600, quality=0.76).fire
    # the same 0.06 drop, uncertain by 0.01 on each side: its 95% bound is 0.037, no fire
    unsure = _decide(T0, None, drift_share=0.0, labelled=600, quality=0.74,
                     quality_se=0.01, champion_se=0.01)  # fmt: skip
    assert not unsure.fire and "lower bound +0.0367 at 95%" in unsure.reason
    sure = _decide(T0, None, drift_share=0.0, labelled=600, quality=0.70,
                   quality_se=0.01, champion_se=0.01)  # fmt: skip
    assert sure.fire and "at least 0.0767 at 95% confidence" in sure.reason
    assert not _decide(T0, None, drift_share=0.0, labelled=100, quality=0.5).fire
    assert not _decide(T0, None, drift_share=0.0, labelled=600, quality=float("nan")).fire
    # labels lagging: the label-free estimate (CBPE) stands in, judged the same way
    lagging = _decide(T0, None, drift_share=0.0, labelled=20, quality=0.5,
                      estimate=0.70, estimate_se=0.01)  # fmt: skip
    assert lagging.fire and "estimated without labels, CBPE" in lagging.reason
    assert not _decide(T0, None, drift_share=0.0, labelled=20, estimate=0.79,
                       estimate_se=0.01).fire  # fmt: skip
    # MAE: worse means higher
    up = policy.decide(POLICY, MAE, rows=900, labelled=900, drift_share=0.0, quality=12.0,
                       champion_score=11.9, last_fired=None, now=T0)  # fmt: skip
    down = policy.decide(POLICY, MAE, rows=900, labelled=900, drift_share=0.0, quality=8.0,
                         champion_score=11.9, last_fired=None, now=T0)  # fmt: skip
    assert up.fire and up.quality_drop == pytest.approx(0.1)
    assert not down.fire and down.quality_drop == pytest.approx(-3.9)


# --- a trained state: reports, history, index, the flow and the CLI ----------------------

SMALL = FLIGHT_DELAY.model_copy(update=dict(train_weeks=3))
UNTIL = date(2013, 1, 29)  # trains on Jan 8..21, holdout Jan 22..28


@dataclasses.dataclass(frozen=True)
class MonitorState:
    settings: Settings
    model: object
    flights: pd.DataFrame


@pytest.fixture(scope="module")
def monitor_state(tmp_path_factory, flights_jan_jul) -> MonitorState:
    """Its own state root: a flight_delay champion on January, the lake up to mid-July."""
    root = tmp_path_factory.mktemp("monitor-state")
    settings = state_settings(root)
    days = lake.days(date(2013, 1, 8), date(2013, 1, 28))
    days += lake.days(date(2013, 7, 1), date(2013, 7, 14))
    for day, frame in etl.build_partitions(FLIGHTS, flights_jan_jul, days).items():
        lake.write_partition(settings.lake_dir, FLIGHTS.name, day, frame)
    result = registry.train_and_promote(settings, SMALL, UNTIL)
    assert result.decision.promoted, result.decision.reason
    model = registry.load_version(settings, "flight_delay", result.candidate.version)
    return MonitorState(settings, model, flights_jan_jul)


def log_days(state: MonitorState, url: str, first: date, last: date) -> int:
    """Serve the champion on the real flights of those days into the log at ``url``."""
    rows = _days(state.flights, first, last)
    X = training.feature_frame(FLIGHT_DELAY, rows)
    answers = serving.predict(FLIGHT_DELAY, state.model, X)
    features = X.astype(object).where(X.notna(), None).to_dict(orient="records")
    stamps = rows["scheduled_departure"].dt.tz_localize(UTC)
    logged = [
        LoggedPrediction(
            model="flight_delay",
            version="1",
            request_id=key,
            features={k: (v.item() if hasattr(v, "item") else v) for k, v in feats.items()},
            prediction=answer,
            event_time=stamp.to_pydatetime(),
        )
        for key, feats, answer, stamp in zip(
            rows["flight_id"], features, answers, stamps, strict=True
        )
    ]
    log = PredictionLog(url).create()
    log.write(logged)
    log.dispose()
    return len(logged)


def _day(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


@pytest.fixture
def weather_judged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The catalog with flight_delay judging every column, the weather included.

    The shipped spec watches the weather (seasonal) and only fires on the flight mix or
    on quality; January's champion keeps its AUC in July, so the shipped spec rightly
    stays calm there. This copy makes July's real weather shift a firing drift.
    """
    import shutil

    import yaml

    from fleet import catalog

    root = tmp_path / "catalog"
    shutil.copytree(catalog.catalog_dir(), root)
    path = root / "models" / "flight_delay.yaml"
    spec = yaml.safe_load(path.read_text())
    spec["drift"].pop("features")
    path.write_text(yaml.safe_dump(spec))
    monkeypatch.setenv(catalog.CATALOG_ENV, str(root))
    catalog.clear_cache()
    yield
    monkeypatch.delenv(catalog.CATALOG_ENV)
    catalog.clear_cache()


def test_shipped_policy_stays_calm_on_july_weather(monitor_state: MonitorState) -> None:
    """January's champion on July's flights: the weather drifts (watched, shown), the
    flight mix does not, and the AUC holds within its noise: no firing."""
    settings = monitor_state.settings.model_copy(
        update={"predictions_url": f"sqlite:///{monitor_state.settings.root / 'calm.db'}"}
    )
    log_days(monitor_state, settings.predictions_db_url, date(2013, 7, 1), date(2013, 7, 7))
    start = _day(date(2013, 7, 1))
    summary, decision = run_monitor(
        settings, "flight_delay", start, start + timedelta(days=7), max_rows=5000
    )
    assert not decision.fire, decision.reason
    assert {"temp", "dewp"} <= set(summary.watched_drifted)
    assert summary.excluded_columns == ["month", "weekday"]
    assert "lower bound" in decision.reason
    page = Path(summary.report_path).read_text()
    assert "watched (never fire alone), moved:" in page and "not judged (calendar)" in page


def test_monitor_job_reports_fires_once_and_indexes(
    monitor_state: MonitorState, weather_judged: None
) -> None:
    settings = monitor_state.settings.model_copy(
        update={"predictions_url": f"sqlite:///{monitor_state.settings.root / 'job.db'}"}
    )
    url = settings.predictions_db_url
    # in distribution: the champion's own holdout week
    log_days(monitor_state, url, date(2013, 1, 22), date(2013, 1, 28))
    calm, calm_decision = run_monitor(
        settings, "flight_delay", _day(date(2013, 1, 22)), _day(date(2013, 1, 29)), max_rows=5000
    )
    assert not calm_decision.fire, calm_decision.reason
    assert calm.drift_share < 0.5
    assert calm.reference_window == "2013-01-08..2013-01-21"
    assert calm.reference_digest_matches
    # the logged answers are the champion's: the window's AUC is its holdout score
    assert calm.quality == pytest.approx(calm.champion_score, abs=1e-5)  # tag: 6 digits

    n = log_days(monitor_state, url, date(2013, 7, 1), date(2013, 7, 14))
    runs = []
    for first in (date(2013, 7, 1), date(2013, 7, 8)):
        start = _day(first)
        runs.append(
            run_monitor(settings, "flight_delay", start, start + timedelta(days=7), max_rows=5000)
        )
    (july1, fired), (july2, cooled) = runs
    assert july1.rows_current + july2.rows_current == n
    assert fired.fire and fired.drift, fired.reason
    assert "temp" in july1.drifted_columns
    assert not cooled.fire and "cooldown" in cooled.reason

    # one report per model per window under reports/<model>/, each a page of its own
    paths = {Path(s.report_path) for s in (calm, july1, july2)}
    assert len(paths) == 3
    assert all(p.parent == settings.reports_dir / "flight_delay" and p.exists() for p in paths)

    history = MonitorHistory(url)
    recorded = history.runs("flight_delay")
    history.dispose()
    assert [r.fired for r in recorded] == [False, True, False]  # newest first
    page = (settings.reports_dir / "index.html").read_text()
    for r in recorded:
        assert Path(r.report_path).relative_to(settings.reports_dir).as_posix() in page
    assert page.count("<tr") == 1 + 3  # header + one row per run
    assert page.index("2013-07-08") < page.index("2013-07-01") < page.index("2013-01-22")


def test_two_monitors_at_once_fire_one_retraining(
    monitor_state: MonitorState, weather_judged: None
) -> None:
    settings = monitor_state.settings.model_copy(
        update={"predictions_url": f"sqlite:///{monitor_state.settings.root / 'race.db'}"}
    )
    log_days(monitor_state, settings.predictions_db_url, date(2013, 7, 1), date(2013, 7, 7))
    start = _day(date(2013, 7, 1))

    def monitor(_: int):
        return run_monitor(
            settings, "flight_delay", start, start + timedelta(days=7), max_rows=2000
        )

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(monitor, range(2)))
    decisions = [d for _, d in results]
    assert sum(d.fire for d in decisions) == 1, [d.reason for d in decisions]
    loser = next(d for d in decisions if not d.fire)
    assert "another monitor fired" in loser.reason or "cooldown" in loser.reason


def test_index_renders_an_empty_history(tmp_path: Path) -> None:
    page = index.render([], tmp_path)
    assert "no drift reports yet" in page


runner = CliRunner()


def test_fleet_monitor_end_to_end(
    monitor_state: MonitorState,
    prefect_server: None,
    monkeypatch: pytest.MonkeyPatch,
    weather_judged: None,
) -> None:
    """`fleet monitor` runs the flow: report, index, decision, and the event on the server."""
    from fleet.cli import app
    from flows.monitor import EVENT

    settings = monitor_state.settings
    url = f"sqlite:///{settings.root / 'cli.db'}"
    n = log_days(monitor_state, url, date(2013, 7, 1), date(2013, 7, 7))
    monkeypatch.setenv("FLEET_HOME", str(settings.root))
    monkeypatch.setenv("FLEET_PREDICTIONS_URL", url)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", settings.tracking_uri)
    monkeypatch.setenv("BENTOML_HOME", str(settings.root / "bentoml"))
    result = runner.invoke(app, ["monitor", "flight_delay"])  # default: the last 7 logged days
    assert result.exit_code == 0, result.output
    assert "decision: retrain" in result.output
    assert f"event: {EVENT} for fleet.model.flight_delay" in result.output
    assert str(settings.reports_dir / "index.html") in result.output.replace("\n", "")
    # the default window: 7 days back from the newest logged event (Jul 7, 23:59)
    assert "window: 2013-06-30 23:59..2013-07-07 23:59" in result.output
    assert f"({n} rows" in result.output

    bad = runner.invoke(app, ["monitor", "no_such_model"])
    assert bad.exit_code == 2 and "unknown model" in bad.output
    empty = runner.invoke(app, ["monitor", "arrival_delay"])
    assert empty.exit_code == 1 and "prediction log has no rows" in empty.output
