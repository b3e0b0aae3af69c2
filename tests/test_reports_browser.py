"""Drift reports and their index as a person opens them: in headless Chromium, with the
network off, from the files alone.

Chromium is Debian's package (`make test` installs it where it can); without it the test
skips with the reason, except where FLEET_REQUIRE_BROWSER=1 (CI) makes that a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fleet.catalog import get_model
from monitoring import drift, index
from monitoring.history import MonitorRun

FLIGHT_DELAY = get_model("flight_delay")
MAX_REPORT_BYTES = 1_000_000


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    reason = "no chromium on PATH (Debian package `chromium`; `make test` installs it as root)"
    if os.environ.get("FLEET_REQUIRE_BROWSER") == "1":
        pytest.fail(f"FLEET_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


def _rendered(page: Path) -> str:
    """The DOM after the page's scripts ran, every host unresolvable and no proxy."""
    done = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
         "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9",
         "--virtual-time-budget=15000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _week(frame: pd.DataFrame, first: date, last: date) -> pd.DataFrame:
    day = frame["scheduled_departure"].dt.date
    return frame[(day >= first) & (day <= last)].reset_index(drop=True)


def _run(model: str, report: str, fired: bool) -> MonitorRun:
    at = datetime(2013, 7, 8, tzinfo=UTC)
    return MonitorRun(
        id=1 if report else 2, model=model, ran_at=at, decided_at=at, window_start=at,
        window_end=at, rows_current=5000 if report else 7, rows_labelled=0,
        drift_share=0.6 if report else 0.0, drifted_columns=["temp"] if report else [],
        metric="roc_auc", quality=None, champion_version=1, champion_score=0.7,
        fired=fired, reason="test", report_path=report,
    )  # fmt: skip


def test_reports_and_index_work_offline_and_open_with_the_decision(tmp_path: Path) -> None:
    from fleet import sources

    raw = sources.load_flights()
    flights = sources.transform_flights(raw[raw["month"].isin([1, 7])], sources.load_weather())
    reference = _week(flights, date(2013, 1, 1), date(2013, 1, 21))
    current = _week(flights, date(2013, 7, 1), date(2013, 7, 7))
    prob = np.random.default_rng(0).random(len(current))
    current = current.assign(
        prediction_probability=prob, prediction_label=np.where(prob > 0.5, "1", "0")
    )
    reports = tmp_path / "reports"
    path = reports / "flight_delay" / "july.html"
    found = drift.measure(
        FLIGHT_DELAY, reference, current, path, max_rows=5000, assets=reports / "assets"
    )
    drift.stamp_decision(path, "flight_delay: no action", ["why: a first decision"], False)
    # a second job on the same window (monitors racing): its decision replaces the first
    drift.stamp_decision(path, "flight_delay: retrain", ["why: drift share 0.60"], True)
    assert path.read_text().count('id="fleet-decision"') == 1

    # small: Evidently's 3.5 MB script and its font are shared, not embedded
    assert path.stat().st_size <= MAX_REPORT_BYTES, path.stat().st_size
    dom = _rendered(path)
    # the dashboard rendered from the local bundle (Material UI cards, plotly charts)
    assert "MuiCard" in dom and "plotly" in dom, dom[:500]
    # and the page opens with the decision and the drifted columns, before the dashboard
    assert 0 <= dom.index("fleet-decision") < dom.index("MuiCard")
    assert "flight_delay: retrain" in dom
    moved = [c.column for c in found.columns if c.drifted]  # judged or watched (weather)
    assert moved and moved[0] in dom

    # without the shared bundle the dashboard does not render: the check above can fail
    shutil.move(reports / "assets", tmp_path / "moved")
    assert "MuiCard" not in _rendered(path)
    shutil.move(tmp_path / "moved", reports / "assets")

    # the index links the report that exists and no report for a job below the minimum
    page = index.write_index([_run("flight_delay", str(path), True), _run("visibility", "", False)],
                             reports / "index.html")  # fmt: skip
    html = page.read_text()
    assert html.count("<a href=") == 1 and 'href="flight_delay/july.html"' in html
    assert "not enough data" in html and "no report" in html
    assert "MuiCard" in _rendered(reports / "flight_delay" / "july.html")
