"""Great Expectations suites generated from the catalog, one per dataset.

The validation gate builds each suite from the catalog at run time, so a suite can
only change through its dataset spec. The JSON under ``expectations/expectations/`` is
the same suite written out for review in git (``python expectations/generate.py``); a
unit test holds every committed file equal to what :func:`suite_dict` derives.

What each catalog field becomes:

- every column: ``expect_column_to_exist`` + a dtype check by kind; the whole table:
  the exact column set (a renamed column shows as missing + unexpected) and
  ``min_rows`` as the lowest row count (an empty batch fails);
- ``null_share``: ``expect_column_values_to_not_be_null`` with ``mostly = 1 - share``;
- ``minimum``/``maximum``: a value range with ``mostly = 1 - out_of_range_share``, or a
  length range for text columns;
- ``categories``: a value set with ``mostly = 1 - unknown_share``;
- ``monthly_mean``: ``expect_column_mean_to_be_between`` whose bounds are suite
  parameters (``$PARAMETER``) computed per batch by :func:`suite_parameters` from the
  months the batch covers: °C where °F is expected stays inside the physical range in
  winter, but not near the month's usual mean;
- the key: unique and never null; model labels: the target's allowed values.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from fleet import catalog
from fleet.catalog import Column, Dataset

if TYPE_CHECKING:
    from great_expectations import ExpectationSuite

SUITES_SUBDIR = "expectations"  # GX's own layout: <project>/expectations/<suite>.json
_ID_NAMESPACE = uuid.UUID("6f0d8a52-4a39-4c8e-9a3b-5b3f6c1e2d10")

# pandas dtypes accepted per catalog kind. Integers may arrive as floats (a CSV column
# with a null) and ids/categories/text as plain objects (CSV); numbers as text never pass.
# Nullable extension dtypes are named by their pandas class (GX resolves "Int64Dtype").
_INTEGER_TYPES = ["int64", "int32", "int16", "int8", "Int64Dtype", "Int32Dtype", "Int16Dtype"]
_FLOAT_TYPES = ["float64", "float32", "Float64Dtype", "Float32Dtype"]
_STRING_TYPES = ["StringDtype", "object", "str"]  # "str": per-value check of object columns
KIND_TYPES: dict[str, list[str]] = {
    "numeric": _FLOAT_TYPES + _INTEGER_TYPES,
    "integer": _INTEGER_TYPES + _FLOAT_TYPES,
    "categorical": _STRING_TYPES,
    "text": _STRING_TYPES,
    "id": _STRING_TYPES,
    "datetime": ["datetime64[ns]", "datetime64[us]", "datetime64[ms]", "datetime64[s]"],
}


def suite_name(dataset: Dataset) -> str:
    return dataset.name


def suite_path(expectations_dir: Path, dataset: Dataset) -> Path:
    """Where the committed suite of ``dataset`` lives in the GX project."""
    return expectations_dir / SUITES_SUBDIR / f"{suite_name(dataset)}.json"


def mean_parameter_names(column: Column) -> tuple[str, str]:
    return f"{column.name}_mean_min", f"{column.name}_mean_max"


def _label_sets(dataset: Dataset) -> dict[str, list[Any]]:
    """Allowed values of each model target in ``dataset``, typed like the column."""
    out: dict[str, list[Any]] = {}
    for spec in catalog.models().values():
        if spec.dataset.name != dataset.name or not spec.labels:
            continue
        col = dataset.column(spec.target)
        if col.kind == "integer":
            out[col.name] = sorted(int(v) for v in spec.labels)
        else:
            out[col.name] = sorted(spec.labels)
    return out


def _column_expectations(dataset: Dataset, col: Column, labels: list[Any] | None) -> list[Any]:
    import great_expectations.expectations as gxe

    src = f"catalog {dataset.name}.{col.name}"
    exps: list[Any] = [
        gxe.ExpectColumnToExist(column=col.name, meta={"source": src}),
        gxe.ExpectColumnValuesToBeInTypeList(
            column=col.name, type_list=KIND_TYPES[col.kind], meta={"source": f"{src} kind"}
        ),
    ]
    if col.name == dataset.key:
        exps.append(gxe.ExpectColumnValuesToBeUnique(column=col.name, meta={"source": "key"}))
    not_null: dict[str, Any] = {"column": col.name, "meta": {"source": f"{src} null_share"}}
    if col.null_share > 0:
        not_null["mostly"] = round(1 - col.null_share, 6)
    exps.append(gxe.ExpectColumnValuesToNotBeNull(**not_null))

    if col.minimum is not None or col.maximum is not None:
        if col.kind == "text":
            exps.append(
                gxe.ExpectColumnValueLengthsToBeBetween(
                    column=col.name,
                    min_value=int(col.minimum) if col.minimum is not None else None,
                    max_value=int(col.maximum) if col.maximum is not None else None,
                    meta={"source": f"{src} minimum/maximum (characters)"},
                )
            )
        else:
            between: dict[str, Any] = {
                "column": col.name,
                "min_value": col.minimum,
                "max_value": col.maximum,
                "meta": {"source": f"{src} minimum/maximum, out_of_range_share"},
            }
            if col.out_of_range_share > 0:
                between["mostly"] = round(1 - col.out_of_range_share, 6)
            exps.append(gxe.ExpectColumnValuesToBeBetween(**between))

    if col.categories is not None:
        in_set: dict[str, Any] = {
            "column": col.name,
            "value_set": list(col.categories),
            "meta": {"source": f"{src} categories, unknown_share"},
        }
        if col.unknown_share > 0:
            in_set["mostly"] = round(1 - col.unknown_share, 6)
        exps.append(gxe.ExpectColumnValuesToBeInSet(**in_set))

    if labels is not None and (col.categories is None or sorted(col.categories) != labels):
        exps.append(
            gxe.ExpectColumnValuesToBeInSet(
                column=col.name, value_set=labels, meta={"source": "model labels"}
            )
        )

    if col.monthly_mean is not None:
        lo, hi = mean_parameter_names(col)
        exps.append(
            gxe.ExpectColumnMeanToBeBetween(
                column=col.name,
                min_value={"$PARAMETER": lo},
                max_value={"$PARAMETER": hi},
                meta={
                    "source": f"{src} monthly_mean, mean_tolerance",
                    "notes": "bounds: the batch's month mix of the catalog's monthly means "
                    f"-{col.mean_tolerance[0]}/+{col.mean_tolerance[1]}",
                },
            )
        )
    return exps


def build_suite(dataset: Dataset) -> ExpectationSuite:
    """The dataset's GX suite, derived from the catalog only (not saved anywhere)."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    labels = _label_sets(dataset)
    expectations: list[Any] = [
        gxe.ExpectTableColumnsToMatchSet(
            column_set=dataset.column_names,
            exact_match=True,
            meta={"source": f"catalog {dataset.name} columns"},
        ),
        gxe.ExpectTableRowCountToBeBetween(
            min_value=dataset.min_rows, meta={"source": f"catalog {dataset.name} min_rows"}
        ),
    ]
    for col in dataset.columns:
        expectations.extend(_column_expectations(dataset, col, labels.get(col.name)))
    return gx.ExpectationSuite(
        name=suite_name(dataset),
        # a fixed id keeps the committed file stable across regenerations
        id=str(uuid.uuid5(_ID_NAMESPACE, dataset.name)),
        expectations=expectations,
        meta={
            "generated_from": f"catalog/datasets/{dataset.name}.yaml",
            "regenerate": "python expectations/generate.py",
        },
    )


def suite_dict(dataset: Dataset) -> dict[str, Any]:
    """The suite as the JSON-ready dict GX stores, exactly as committed."""
    return json.loads(json.dumps(build_suite(dataset).to_json_dict()))


def render_suite(dataset: Dataset) -> str:
    return json.dumps(suite_dict(dataset), indent=2, ensure_ascii=False) + "\n"


def write_suites(expectations_dir: Path, datasets: Iterable[Dataset] | None = None) -> list[Path]:
    """(Re)write the committed suite files from the catalog; returns the paths written."""
    paths = []
    for dataset in datasets if datasets is not None else catalog.datasets().values():
        path = suite_path(expectations_dir, dataset)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render_suite(dataset), encoding="utf-8")
        paths.append(path)
    return paths


def load_suite_dict(expectations_dir: Path, dataset: Dataset) -> dict[str, Any]:
    """The committed suite of ``dataset``; a clear error if it was never generated."""
    path = suite_path(expectations_dir, dataset)
    if not path.is_file():
        raise FileNotFoundError(
            f"no GX suite for {dataset.name!r} at {path}: run `python expectations/generate.py`"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def _batch_months(dataset: Dataset, frame: pd.DataFrame) -> pd.Series:
    """Share of rows per calendar month (1..12), by the dataset's timestamp."""
    if dataset.timestamp not in frame.columns:
        return pd.Series(dtype="float64")
    stamps = pd.to_datetime(frame[dataset.timestamp], errors="coerce")
    return stamps.dt.month.dropna().astype(int).value_counts(normalize=True)


def suite_parameters(dataset: Dataset, frame: pd.DataFrame) -> dict[str, float]:
    """Values of the suite's ``$PARAMETER`` bounds for this batch.

    A column's plausible mean is the catalog's monthly means weighted by the batch's
    rows per month, minus/plus the tolerance. Without usable timestamps the bounds
    span the whole year (the check gets weaker, never falsely strict).
    """
    months = _batch_months(dataset, frame)
    params: dict[str, float] = {}
    for col in dataset.columns:
        if col.monthly_mean is None:
            continue
        means = pd.Series(col.monthly_mean, index=range(1, 13), dtype="float64")
        below, above = col.mean_tolerance
        if months.empty:
            low, high = means.min(), means.max()
        else:
            low = high = float((means.reindex(months.index) * months).sum())
        lo_name, hi_name = mean_parameter_names(col)
        params[lo_name] = round(float(low) - below, 3)
        params[hi_name] = round(float(high) + above, 3)
    return params
