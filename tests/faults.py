"""Realistic faults an upstream feed produces, as frame -> frame functions.

Each names the expectation and column the flights suite must report, so tests at
every level (function, CLI, flow) check the same faults the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Fault:
    name: str
    corrupt: Callable[[pd.DataFrame], pd.DataFrame]
    expectation: str
    column: str | None


def _celsius(frame: pd.DataFrame) -> pd.DataFrame:
    def to_c(s: pd.Series) -> pd.Series:
        return (s - 32) * 5 / 9

    return frame.assign(temp=to_c(frame["temp"]), dewp=to_c(frame["dewp"]))


def _nulls(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    out.loc[out.index[: len(out) // 5], "temp"] = np.nan  # a weather outage for a fifth
    return out


def _negative(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    out.loc[out.index[::20], "distance"] *= -1  # a sign bug on 5 % of rows
    return out


def _unknown_carriers(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    out.loc[out.index[: len(out) // 10], "carrier"] = "ZZ"
    return out


FLIGHT_FAULTS = (
    Fault("missing-column", lambda f: f.drop(columns="distance"),
          "expect_column_to_exist", "distance"),
    Fault("renamed-column", lambda f: f.rename(columns={"temp": "temperature"}),
          "expect_table_columns_to_match_set", None),
    Fault("numbers-as-strings", lambda f: f.assign(distance=f["distance"].astype(str)),
          "expect_column_values_to_be_in_type_list", "distance"),
    Fault("nulls-beyond-share", _nulls, "expect_column_values_to_not_be_null", "temp"),
    Fault("celsius", _celsius, "expect_column_mean_to_be_between", "temp"),
    Fault("negative-distance", _negative, "expect_column_values_to_be_between", "distance"),
    Fault("unknown-categories", _unknown_carriers, "expect_column_values_to_be_in_set", "carrier"),
    Fault("empty-batch", lambda f: f.iloc[0:0], "expect_table_row_count_to_be_between", None),
)  # fmt: skip
