"""Registration and the champion gate on real MLflow (SQLite under the test's FLEET_HOME)."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from fleet import etl, lake, registry, training
from fleet.catalog import Dataset, ModelSpec, get_model, models
from fleet.settings import Settings

MODELS = models()

UNTIL = date(2013, 2, 1)


def fill_lake(settings: Settings, dataset: Dataset, table: pd.DataFrame, first: date, last: date):
    """Write real ETL output as daily partitions, the way the ETL flow loads them."""
    for day, frame in etl.build_partitions(dataset, table, lake.days(first, last)).items():
        lake.write_partition(settings.lake_dir, dataset.name, day, frame)


def window_data(settings: Settings, spec: ModelSpec, until: date):
    window = training.training_window(spec, until)
    partitions = training.window_partitions(settings.lake_dir, spec, window)
    train, hold = training.split_by_window(spec, lake.read_partitions(partitions), window)
    return (
        window,
        partitions,
        *training.training_frame(spec, train),
        *training.training_frame(spec, hold),
    )


def register(settings, spec, model, window, partitions, X, y, X_hold, y_hold, tmp_path):
    metrics = training.score(spec, model, X_hold, y_hold)
    baseline = training.baseline_score(spec, y, X_hold, y_hold)
    plot = training.evaluation_plot(spec, model, X_hold, y_hold, tmp_path / "eval.png")
    return registry.log_candidate(
        settings, spec, model, X, y, X_hold, y_hold, window, partitions, metrics, baseline, plot
    )


def test_champion_gate_promotes_rejects_and_rolls_back(
    settings: Settings, flights_q1: pd.DataFrame, tmp_path: Path
) -> None:
    # three weeks keep the test fast; features, estimator and metric are the catalog's
    spec = get_model("flight_delay").model_copy(update=dict(train_weeks=3))
    fill_lake(settings, spec.dataset, flights_q1, date(2013, 1, 1), date(2013, 1, 31))
    window, partitions, X, y, X_hold, y_hold = window_data(settings, spec, UNTIL)
    mlc = registry.client(settings)

    # v1: a weak model (70% of its labels shuffled, some signal left) is the first champion
    rng = np.random.default_rng(0)
    noisy = y.to_numpy().copy()
    mixed = rng.choice(len(y), size=int(0.7 * len(y)), replace=False)
    noisy[mixed] = rng.permutation(noisy[mixed])
    weak = training.fit(spec, X, pd.Series(noisy, name=y.name))
    v1 = register(settings, spec, weak, window, partitions, X, y, X_hold, y_hold, tmp_path)
    d1 = registry.promote_if_better(settings, spec, v1, X_hold, y_hold)
    assert d1.promoted and d1.champion_before is None and d1.champion_score is None
    assert d1.reason.startswith("first champion") and "beats the trivial baseline" in d1.reason
    assert d1.candidate_score >= d1.baseline_score + spec.promotion.margin
    assert int(mlc.get_model_version_by_alias(spec.name, "champion").version) == v1.version

    # lineage on the version and the run
    tags = mlc.get_model_version(spec.name, str(v1.version)).tags
    assert tags["decision"] == "promoted" and tags["run_id"] == v1.run_id
    assert tags["partitions_digest"] == lake.digest(partitions) == v1.partitions_digest
    assert training.Window.from_tags(tags) == window
    run = mlc.get_run(v1.run_id)
    inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"training", "evaluation"}
    assert inputs["training"].digest == lake.digest(partitions)
    assert float(run.data.params["rows_train"]) == len(X)
    artifacts = {a.path for a in mlc.list_artifacts(v1.run_id)}
    assert {"evaluation", "lineage"} <= artifacts
    listing = json.loads(
        Path(mlflow.artifacts.download_artifacts(run_id=v1.run_id, artifact_path="lineage"))
        .joinpath("partitions.json")
        .read_text()
    )
    assert (
        len(listing["partitions"]) == len(partitions)
        and listing["digest"] == tags["partitions_digest"]
    )
    assert str(settings.artifact_root) in run.info.artifact_uri

    # what is served is what was judged: the registry copy predicts like the fitted model
    served = mlflow.pyfunc.load_model(f"models:/{spec.name}@champion")
    # classifiers answer with class probabilities through pyfunc too
    assert np.array_equal(served.predict(X_hold.head(50)), weak.predict_proba(X_hold.head(50)))

    # v2: the full window beats the weak champion by the margin and takes over
    full = training.fit(spec, X, y)
    v2 = register(settings, spec, full, window, partitions, X, y, X_hold, y_hold, tmp_path)
    d2 = registry.promote_if_better(settings, spec, v2, X_hold, y_hold)
    assert d2.promoted, d2.reason
    assert d2.champion_before == v1.version and d2.champion_score == pytest.approx(
        d1.candidate_score
    )

    # v3: a worse model (fully shuffled labels): registered, judged, not promoted
    shuffled = y.sample(frac=1.0, random_state=1).to_numpy()
    bad = training.fit(spec, X, pd.Series(shuffled, name=y.name))
    v3 = register(settings, spec, bad, window, partitions, X, y, X_hold, y_hold, tmp_path)
    d3 = registry.promote_if_better(settings, spec, v3, X_hold, y_hold)
    assert not d3.promoted and d3.champion_after == v2.version
    assert int(mlc.get_model_version_by_alias(spec.name, "champion").version) == v2.version
    tags3 = mlc.get_model_version(spec.name, str(v3.version)).tags
    assert tags3["decision"] == "rejected" and tags3["champion_before"] == str(v2.version)
    assert float(tags3["candidate_score"]) < float(tags3["champion_score"])
    assert tags3["reason"] == d3.reason
    assert f"against champion v{v2.version}'s" in d3.reason
    assert "does not clear the margin" in d3.reason
    # the paired test's interval is on the version, and `fleet models` shows it
    assert float(tags3["gain_low"]) < float(tags3["gain"]) < float(tags3["gain_high"]) < 0
    assert tags3["gain_test"] == "paired DeLong" and tags3["gain_confidence"] == "95%"
    assert registry.gain_text(tags3).startswith(f"{float(tags3['gain']):+.4f} [")

    rows = {r.model: r for r in registry.fleet_table(settings)}
    assert rows[spec.name].champion_version == v2.version
    assert rows[spec.name].versions == 3 and rows[spec.name].last_decision == "rejected"
    assert rows[spec.name].window == str(window)
    others = [r for name, r in rows.items() if name != spec.name]
    assert others and all(not r.registered and "not trained" in r.note for r in others)

    # rollback walks back the chain of champions, then says there is nothing left
    assert registry.rollback(settings, spec.name) == (v2.version, v1.version)
    champion = registry.champion_info(settings, spec.name)
    assert champion is not None and champion.version == v1.version
    assert champion.window == window and champion.run_id == v1.run_id
    with pytest.raises(registry.NoPreviousChampion, match="first champion"):
        registry.rollback(settings, spec.name)
    events = [(e["event"], e["version"]) for e in registry.champion_history(settings, spec.name)]
    assert events == [("promoted", v1.version), ("promoted", v2.version), ("rollback", v1.version)]


def test_rollback_without_a_registered_model_fails_clearly(settings: Settings) -> None:
    with pytest.raises(registry.RegistryError, match="fleet train flight_delay"):
        registry.rollback(settings, "flight_delay")


@pytest.mark.parametrize("name", list(MODELS))
def test_each_catalog_model_trains_registers_and_beats_its_baseline(
    name: str,
    settings: Settings,
    dataset_tables: dict[str, pd.DataFrame],
) -> None:
    spec = get_model(name)  # the real window sizes of the catalog
    until = date(2013, 7, 1) if spec.dataset.name == "reviews" else date(2013, 3, 1)
    table = dataset_tables[spec.dataset.name]
    window = training.training_window(spec, until)
    fill_lake(settings, spec.dataset, table, *window.days)

    result = registry.train_and_promote(settings, spec, until)

    assert result.decision.promoted, result.decision.reason
    assert result.candidate.window == window and result.rows_holdout > 0
    champion = registry.champion_info(settings, name)
    assert champion is not None and champion.version == result.candidate.version
    # the registered copy loads through the generic pyfunc flavour, as serving will
    served = mlflow.pyfunc.load_model(f"models:/{name}/{result.candidate.version}")
    partitions = training.window_partitions(settings.lake_dir, spec, window)
    _, hold = training.split_by_window(spec, lake.read_partitions(partitions), window)
    X_hold, _ = training.training_frame(spec, hold)
    assert len(served.predict(X_hold.head(5))) == 5
    print(f"{name}: {result.timings}")


def test_a_first_version_no_better_than_the_baseline_is_not_champion(
    settings: Settings, flights_q1: pd.DataFrame, tmp_path: Path
) -> None:
    spec = get_model("flight_delay").model_copy(update=dict(train_weeks=2))
    fill_lake(settings, spec.dataset, flights_q1, date(2013, 1, 15), date(2013, 1, 31))
    window, partitions, X, y, X_hold, y_hold = window_data(settings, spec, UNTIL)
    # inverted labels (a label bug): it ranks flights backwards. (Shuffled labels are not
    # reliably useless here: noise fitted on strong features like the hour can reach 0.54.)
    inverted = training.fit(spec, X, 1 - y)
    v1 = register(settings, spec, inverted, window, partitions, X, y, X_hold, y_hold, tmp_path)

    decision = registry.promote_if_better(settings, spec, v1, X_hold, y_hold)

    assert not decision.promoted and decision.champion_after is None
    assert "does not beat the trivial baseline" in decision.reason
    assert registry.champion_info(settings, spec.name) is None
    row = next(r for r in registry.fleet_table(settings) if r.model == spec.name)
    assert row.registered and row.champion_version is None and row.last_decision == "rejected"
    with pytest.raises(registry.RegistryError, match="no champion"):
        registry.rollback(settings, spec.name)
