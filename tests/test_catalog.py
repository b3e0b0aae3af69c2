"""Code tests: the catalog is internally consistent, so everything derived from it is."""

from __future__ import annotations

import math

import pytest

from fleet.catalog import DATASETS, MODELS, Column, get_dataset, get_model


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
