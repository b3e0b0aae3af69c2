"""Code tests: the catalog is internally consistent, so everything derived from it is."""

from __future__ import annotations

import math
import re
import shutil
from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from fleet.catalog import (
    CatalogError,
    Column,
    catalog_dir,
    datasets,
    get_dataset,
    get_model,
    load_catalog,
    models,
)

DATASETS = datasets()
MODELS = models()


@pytest.mark.parametrize("dataset", DATASETS.values(), ids=list(DATASETS))
def test_dataset_columns_are_unique_and_key_columns_exist(dataset):
    names = dataset.column_names
    assert len(names) == len(set(names))
    assert dataset.timestamp in names
    assert dataset.key in names


def _example_fits(col: Column) -> bool:
    value = col.example
    if value is None:
        return False
    if col.categories is not None:
        return value in col.categories
    if col.kind in ("numeric", "integer"):
        return math.isfinite(value) and col.minimum <= value <= col.maximum
    if col.kind == "text":
        return col.minimum <= len(value) <= col.maximum
    return isinstance(value, str) and len(value) > 0


@pytest.mark.parametrize(
    "column",
    [c for d in DATASETS.values() for c in d.columns],
    ids=[f"{d.name}.{c.name}" for d in DATASETS.values() for c in d.columns],
)
def test_every_column_has_a_valid_example(column):
    # the examples feed the serving docs: an example the suite would reject is a bug
    assert _example_fits(column), f"{column.name}: example {column.example!r} breaks its own spec"


@pytest.mark.parametrize("spec", MODELS.values(), ids=list(MODELS))
def test_model_features_and_target_come_from_its_dataset(spec):
    for name in (*spec.features, spec.target):
        spec.dataset.column(name)
    assert spec.target not in spec.features
    assert spec.dataset.timestamp not in spec.features
    assert 0 < spec.holdout_weeks < spec.train_weeks
    if spec.task == "classification":
        assert len(spec.labels) >= 2
        target = spec.target_column
        if target.categories is not None:
            assert set(spec.labels) == set(target.categories)


def test_unknown_names_list_what_exists():
    with pytest.raises(KeyError, match="flight_delay"):
        get_model("flight_dela")
    with pytest.raises(KeyError, match="flights"):
        get_dataset("flight")


# --- the spec files: loading, errors, plugins ------------------------------------------

DOC = Path(__file__).resolve().parent.parent / "docs" / "adding-a-model.md"


def doc_files() -> dict[str, str]:
    """The files docs/adding-a-model.md spells out: code blocks whose first line is
    ``# <path>``, by that path."""
    files = {}
    for block in re.findall(r"```(?:yaml|python)\n(.*?)```", DOC.read_text(), flags=re.S):
        first, _, body = block.partition("\n")
        if first.startswith("# ") and "/" in first:
            files[first[2:].strip()] = body
    return files


def _catalog_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "catalog"
    shutil.copytree(catalog_dir(), folder)
    return folder


def test_the_shipped_catalog_loads_in_file_order() -> None:
    loaded = load_catalog(catalog_dir())
    assert list(loaded.models) == sorted(loaded.models)
    assert {m.dataset.name for m in loaded.models.values()} <= set(loaded.datasets)
    assert MODELS["visibility"].dataset.reader.name == "files"
    assert MODELS["flight_delay"].promotion.greater_is_better
    assert not MODELS["arrival_delay"].promotion.greater_is_better


MISTAKES = [
    ("models/visibility.yaml", "task: regression", "task: regression\ncolour: red",
     "unknown field 'colour'; allowed here: name, description, dataset"),
    ("models/visibility.yaml", "hour, month", "hour, mnth",
     "features[2] 'mnth' is not a column of dataset 'weather'"),
    ("models/visibility.yaml", "metric: mae", "metric: mape",
     "field 'promotion.metric': Input should be 'roc_auc'"),
    ("models/visibility.yaml", "metric: mae", "metric: roc_auc",
     "promotion.metric 'roc_auc' scores classification; for regression use one of mae"),
    ("models/visibility.yaml", "estimator: tabular", "estimator: nosuch.module:make",
     "field 'estimator.name': cannot import 'nosuch.module'"),
    ("models/visibility.yaml", "estimator: tabular", "estimator: fleet.estimators:nothing",
     "'fleet.estimators' has no function 'nothing'"),
    ("models/visibility.yaml", "estimator: tabular", "estimator: gradient_boost",
     "'gradient_boost' is neither a built-in (tabular, text) nor a dotted path"),
    ("models/visibility.yaml", "min_rows: 300", "min_rowz: 300",
     "unknown field 'drift.min_rowz'; allowed here: share_threshold, quality_drop"),
    ("models/visibility.yaml", "dataset: weather", "dataset: wether",
     "field 'dataset': unknown dataset 'wether'; the catalog has: flights, reviews, weather"),
    ("models/visibility.yaml", "name: visibility", "name: visibility2",
     "field 'name' is 'visibility2'; it must match the file name"),
    ("datasets/weather.yaml", "key: observation_id", "key: observation",
     "key 'observation' is not a column"),
    ("datasets/weather.yaml", "record: observation", "record: flight",
     "field 'record' 'flight' is also dataset 'flights''s"),
    ("datasets/weather.yaml", "reader:\n  name: files", "reader:\n  name: csv_files",
     "field 'reader.name': 'csv_files' is neither a built-in"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("path", "old", "new", "message"), MISTAKES, ids=[m[3][:40] for m in MISTAKES]
)
def test_a_mistake_names_the_file_the_field_and_what_is_allowed(
    tmp_path: Path, path: str, old: str, new: str, message: str
) -> None:
    folder = _catalog_copy(tmp_path)
    target = folder / path
    text = target.read_text()
    assert old in text
    target.write_text(text.replace(old, new, 1))
    with pytest.raises(CatalogError) as failed:
        load_catalog(folder)
    assert str(failed.value).startswith(f"{target}: "), failed.value
    assert message in str(failed.value), failed.value


def test_catalog_check_exits_non_zero_naming_the_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from fleet.cli import app

    folder = _catalog_copy(tmp_path)
    monkeypatch.setenv("FLEET_CATALOG", str(folder))
    ok = CliRunner().invoke(app, ["catalog", "check"])
    assert ok.exit_code == 0 and "4 model(s)" in ok.output, ok.output
    spec = folder / "models" / "visibility.yaml"
    spec.write_text(spec.read_text().replace("hour, month", "hour, mnth"))
    bad = CliRunner().invoke(app, ["catalog", "check"])
    assert bad.exit_code == 1
    assert "visibility.yaml" in bad.output and "mnth" in bad.output
    missing = CliRunner().invoke(app, ["catalog", "check"], env={"FLEET_CATALOG": str(tmp_path)})
    assert missing.exit_code == 1 and "has no datasets/ folder" in missing.output


def test_the_documented_model_on_an_existing_dataset_is_valid(tmp_path: Path) -> None:
    folder = _catalog_copy(tmp_path)
    name = "catalog/models/late_from_schedule.yaml"
    (folder / "models" / "late_from_schedule.yaml").write_text(doc_files()[name])
    spec = load_catalog(folder).models["late_from_schedule"]
    assert spec.dataset.name == "flights" and spec.serving.port == 3010


@pytest.mark.postgres
def test_the_documented_reader_and_estimator_run_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, postgres_url: str, weather_table
) -> None:
    """docs/adding-a-model.md's PostgreSQL reader and own estimator, on real readings."""
    import sqlalchemy as sa

    from fleet import catalog, etl, training
    from fleet.settings import Settings
    from fleet.validation import validate_batch

    files = doc_files()
    folder = _catalog_copy(tmp_path)
    for path in ("catalog/datasets/readings.yaml", "catalog/models/raining.yaml"):
        (folder / path.removeprefix("catalog/")).write_text(files[path])
    package = tmp_path / "plugins" / "station_data"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    for path in ("station_data/readers.py", "station_data/models.py"):
        (package / path.split("/")[1]).write_text(files[path])
    monkeypatch.syspath_prepend(str(tmp_path / "plugins"))

    # the real 2013 readings of January and February, as the operations table
    wx = weather_table[weather_table["observed_at"] < "2013-03-01"]
    readings = pd.DataFrame(
        {
            "reading_id": wx["observation_id"].astype(str),
            "read_at": wx["observed_at"],
            "station": wx["origin"].astype(str),
            "humid": wx["humid"],
            "dewp": wx["dewp"],
            "visib": wx["visib"],
            "raining": (wx["precip"] > 0).astype(int),
        }
    )
    url = postgres_url.replace("postgresql://", "postgresql+psycopg://", 1)
    engine = sa.create_engine(url)
    readings.to_sql("readings", engine, index=False)
    engine.dispose()
    monkeypatch.setenv("READINGS_DB_URL", url)
    monkeypatch.setenv("FLEET_CATALOG", str(folder))
    catalog.clear_cache()
    try:
        spec = catalog.get_model("raining")
        rows = etl.read_rows(spec.dataset, date(2013, 1, 1), date(2013, 2, 28))
        assert len(rows) == len(readings) and list(rows.columns) == spec.dataset.column_names
        assert validate_batch(Settings(home=tmp_path / "home"), spec.dataset, rows, "doc").success
        window = training.training_window(spec, date(2013, 3, 1))
        train, hold = training.split_by_window(spec, rows, window)
        model = training.fit(spec, *training.training_frame(spec, train))
        assert type(model[-1]).__name__ == "LogisticRegression" and model[-1].C == 0.5
        auc = training.score(spec, model, *training.training_frame(spec, hold))["roc_auc"]
        assert auc > 0.8, auc  # humidity and visibility tell rain well
    finally:
        catalog.clear_cache()
