"""Scale-out settings for real: the MLflow registry on PostgreSQL instead of SQLite."""

from __future__ import annotations

from datetime import date

import pandas as pd
import pytest
import sqlalchemy as sa

from fleet import etl, lake, registry
from fleet.catalog import get_model
from fleet.settings import Settings

pytestmark = pytest.mark.postgres


def test_registry_on_postgresql(
    settings: Settings, postgres_url: str, flights_q1: pd.DataFrame, monkeypatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", postgres_url)
    pg = Settings()
    assert pg.tracking_uri == postgres_url
    spec = get_model("flight_delay").model_copy(update=dict(train_weeks=3))
    parts = etl.build_partitions(
        spec.dataset, flights_q1, lake.days(date(2013, 1, 1), date(2013, 2, 28))
    )
    for day, frame in parts.items():
        lake.write_partition(pg.lake_dir, spec.dataset.name, day, frame)

    # one week of training, then seven on the same holdout week: a clearly better model
    weak = spec.model_copy(update={"train_weeks": 2})
    first = registry.train_and_promote(pg, weak, date(2013, 2, 1))
    assert first.decision.promoted
    second = registry.train_and_promote(
        pg, spec.model_copy(update={"train_weeks": 4}), date(2013, 2, 1)
    )
    assert second.candidate.version == 2
    assert second.decision.promoted, second.decision.reason
    champion = registry.champion_info(pg, spec.name)
    assert champion is not None
    assert champion.window.end == date(2013, 2, 1)

    # the registry really lives in PostgreSQL, and nothing went to a local SQLite file
    engine = sa.create_engine(postgres_url)
    with engine.connect() as conn:
        versions = conn.execute(
            sa.text("select count(*) from model_versions where name = :n"), {"n": spec.name}
        ).scalar_one()
    engine.dispose()
    assert versions == 2
    assert not (pg.mlflow_dir / "mlflow.db").exists()

    assert registry.rollback(pg, spec.name) == (2, 1)
    assert registry.champion_info(pg, spec.name).version == 1
