"""Shared fixtures: every test gets its own state root; one Prefect test server per run."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from fleet.settings import TELEMETRY_OFF, Settings

for _key, _value in TELEMETRY_OFF.items():
    os.environ.setdefault(_key, _value)


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """A fresh state root under the test's temporary directory."""
    home = tmp_path / "fleet-home"
    monkeypatch.setenv("FLEET_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("BENTOML_HOME", str(home / "bentoml"))
    return Settings()


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A real temporary Prefect server with its own PREFECT_HOME, shared by the run."""
    prefect_home = tmp_path_factory.mktemp("prefect-home")
    os.environ["PREFECT_HOME"] = str(prefect_home)
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="session")
def flights_q1() -> pd.DataFrame:
    """Real flights of January to March 2013, transformed by the ETL (shared, read-only)."""
    from fleet import sources

    raw = sources.load_flights()
    return sources.transform_flights(raw[raw["month"] <= 3], sources.load_weather())


@pytest.fixture(scope="session")
def reviews_table() -> pd.DataFrame:
    """All real reviews, transformed by the ETL (shared, read-only)."""
    from fleet import sources

    return sources.transform_reviews(sources.load_reviews())


@pytest.fixture(scope="session")
def weather_table() -> pd.DataFrame:
    """All real weather observations of 2013, read by the dataset's own reader (read-only)."""
    from datetime import date

    from fleet import etl
    from fleet.catalog import get_dataset

    return etl.read_rows(get_dataset("weather"), date(2013, 1, 1), date(2013, 12, 31))


@pytest.fixture(scope="session")
def dataset_tables(
    flights_q1: pd.DataFrame, reviews_table: pd.DataFrame, weather_table: pd.DataFrame
) -> dict[str, pd.DataFrame]:
    """Real rows of every catalog dataset, by name (flights: January to March only)."""
    return {"flights": flights_q1, "reviews": reviews_table, "weather": weather_table}


POSTGRES_ADMIN_URL = os.environ.get(
    "FLEET_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards.

    Skips (with the reason) when no server answers, unless FLEET_REQUIRE_POSTGRES=1,
    as in CI, where a missing server is a failure.
    """
    import uuid

    import sqlalchemy as sa

    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text("select 1"))
    except sa.exc.OperationalError as exc:
        admin.dispose()
        reason = f"no PostgreSQL at {POSTGRES_ADMIN_URL}: {exc.orig}"
        if os.environ.get("FLEET_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"FLEET_REQUIRE_POSTGRES=1 but {reason}")
        pytest.skip(reason)
    name = f"fleet_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'create database "{name}"'))
    try:
        yield admin.url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'drop database if exists "{name}" with (force)'))
        admin.dispose()


@pytest.fixture(scope="session")
def serving_state(
    tmp_path_factory: pytest.TempPathFactory, dataset_tables: dict[str, pd.DataFrame]
) -> Iterator[object]:
    """A state root with one champion per catalog model imported into its Bento store.

    Shared by the serving tests (tests/serving_fixtures.py); small real windows.
    """
    from tests.serving_fixtures import build_serving_state

    root = tmp_path_factory.mktemp("serving-state")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLEET_HOME", str(root))
        mp.setenv("BENTOML_HOME", str(root / "bentoml"))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        state = build_serving_state(root, dataset_tables)
    yield state


# fixtures that start real servers or need the PostgreSQL server: their tests are marked
# so `-m "not integration"` / `-m "not postgres"` select what they say
SERVER_FIXTURES = {"prefect_server", "serving_state", "local_stack", "served_fleet", "fleet"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if "postgres_url" in used:
            item.add_marker(pytest.mark.postgres)
        if used & SERVER_FIXTURES:
            item.add_marker(pytest.mark.integration)
