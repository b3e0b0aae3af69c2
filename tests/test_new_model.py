"""A model added by one spec file, nothing else: train, build, serve, route, monitor."""

from __future__ import annotations

import shutil
from datetime import UTC
from pathlib import Path

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from fleet import catalog, deployments, etl, lake, processes, routing, serving, topology
from fleet.cli import app
from fleet.settings import Settings

runner = CliRunner()

NEW_MODEL = {
    "name": "late_from_schedule",
    "description": "will a flight arrive late, from its schedule alone (no weather)",
    "dataset": "flights",
    "task": "classification",
    "target": "late",
    "labels": ["0", "1"],
    "features": ["carrier", "origin", "dest", "distance", "sched_dep_hour", "weekday"],
    "estimator": {"name": "tabular", "options": {"max_iter": 50}},
    "train_weeks": 4,
    "promotion": {"metric": "roc_auc", "margin": 0.001},
    "drift": {"min_rows": 40},
}


@pytest.fixture
def team_catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the shipped catalog plus one new model file, in use via FLEET_CATALOG."""
    folder = tmp_path / "team-catalog"
    shutil.copytree(catalog.catalog_dir(), folder)
    (folder / "models" / f"{NEW_MODEL['name']}.yaml").write_text(yaml.safe_dump(NEW_MODEL))
    monkeypatch.setenv(catalog.CATALOG_ENV, str(folder))
    catalog.clear_cache()
    yield folder
    catalog.clear_cache()


def invoke(*args: str):
    result = runner.invoke(app, list(args))
    result.flat = " ".join(result.output.split())
    return result


def test_the_new_spec_is_the_whole_change(team_catalog: Path) -> None:
    name = NEW_MODEL["name"]
    spec = catalog.get_model(name)
    assert spec.dataset is catalog.get_dataset("flights") and spec.estimator.options
    assert name in routing.models_for_record("flight")
    assert {f"train-{name}", f"monitor-{name}"} <= {d["name"] for d in deployments.deployments()}
    assert deployments.check_deployments() == []
    assert serving.request_model(spec).model_json_schema()["required"] == NEW_MODEL["features"]
    checked = invoke("catalog", "check")
    assert checked.exit_code == 0, checked.output
    assert name in checked.flat and "5 model(s)" in checked.flat


@pytest.mark.integration
def test_a_model_added_by_one_spec_trains_builds_serves_and_is_monitored(
    team_catalog: Path, settings: Settings, prefect_server: None
) -> None:
    name = NEW_MODEL["name"]
    trained = invoke("train", name, "--until", "2013-02-05")
    assert trained.exit_code == 0, trained.output
    assert "promoted" in trained.flat

    built = invoke("build", name)
    assert built.exit_code == 0, built.output
    assert f"built Bento {name}:" in built.flat

    settings = settings.model_copy(
        update={"gateway_port": processes.free_port(), "model_port_base": processes.free_port()}
    )
    components, _ = topology.start_fleet(settings, "micro", [name])
    try:
        gateway = next(c for c in components if c.name == topology.GATEWAY)
        flights = etl.concat_partitions(
            catalog.get_dataset("flights"),
            etl.read_days(catalog.get_dataset("flights"), lake.days(*_days("2013-02-05", 2))),
        ).head(60)
        _, features = routing.input_features("flight")
        columns = [catalog.get_dataset("flights").column(f) for f in features]
        for key, stamp, record in zip(
            flights["flight_id"], flights["scheduled_departure"],
            serving.records_of(columns, flights), strict=True,
        ):  # fmt: skip
            body = {
                "request_id": key,
                "event_time": stamp.to_pydatetime().replace(tzinfo=UTC).isoformat(),
                "flight": record,
            }
            answer = httpx.post(f"{gateway.url}/predict", json=body, timeout=30).json()
            # every flight model gets the request; only the new one is served here
            assert set(answer["results"]) | set(answer["errors"]) == set(
                routing.models_for_record("flight")
            )
            assert answer["results"][name]["version"] == "1", answer
    finally:
        topology.stop_fleet(settings)

    monitored = invoke("monitor", name, "--start", "2013-02-05", "--end", "2013-02-07")
    assert monitored.exit_code == 0, monitored.output
    assert "(60 rows," in monitored.flat, monitored.output
    assert (settings.reports_dir / name).is_dir()


def _days(start: str, n: int) -> tuple:
    from datetime import date, timedelta

    first = date.fromisoformat(start)
    return first, first + timedelta(days=n - 1)
