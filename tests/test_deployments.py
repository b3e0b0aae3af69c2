"""prefect.yaml stays valid; the training flow's task runner switches to Dask for real."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest
import yaml

from fleet import deployments as deps
from fleet.catalog import models
from fleet.settings import Settings

MODELS = models()


def test_prefect_yaml_is_valid() -> None:
    # every entrypoint imports, every parameter set fits its flow, every pool is known
    assert deps.check_deployments() == []


def test_deployments_cover_the_lifecycle() -> None:
    by_name = {d["name"]: d for d in deps.deployments()}
    assert by_name["etl-daily"]["schedules"][0]["cron"] == "0 2 * * *"
    for model in MODELS:
        train = by_name[f"train-{model}"]
        assert train["parameters"] == {"models": [model]}
        assert train["schedules"][0]["cron"] == "0 3 * * 1"  # weekly
        monitor = by_name[f"monitor-{model}"]
        assert monitor["parameters"] == {"model": model}
        assert monitor["schedules"]
    retrain = by_name["retrain"]
    assert "schedules" not in retrain
    (trigger,) = retrain["triggers"]
    assert trigger["type"] == "event"
    assert trigger["expect"] == ["fleet.model.drift-detected"]
    # only events whose emitter leaves the retrain to the automation (not the replay's)
    assert trigger["match"] == {
        "prefect.resource.id": "fleet.model.*",
        "fleet.retrain": "automation",
    }
    assert trigger["parameters"]["model"] == "{{ event.payload.model }}"
    assert trigger["parameters"]["firing"] == "{{ event.payload.firing }}"
    assert "schedules" not in by_name["replay"]  # started by hand
    local = deps.local_deployments()
    assert "train-fleet-kubernetes" not in local
    assert {d["work_pool"]["name"] for d in deps.deployments()} == {
        deps.WORK_POOL,
        deps.KUBERNETES_POOL,
    }


def test_pull_step_holds_no_machine_path() -> None:
    (step,) = yaml.safe_load(deps.PREFECT_FILE.read_text())["pull"]
    directory = step["prefect.deployments.steps.set_working_directory"]["directory"]
    assert directory == "{{ $FLEET_REPO_ROOT }}"


def _broken(tmp_path: Path, name: str, **parameters: object) -> Path:
    """prefect.yaml with the parameters of one deployment (or per-model template) replaced."""
    config = yaml.safe_load(deps.PREFECT_FILE.read_text())
    entries = config["deployments"] + config["definitions"][deps.PER_MODEL]
    (entry,) = [e for e in entries if e["name"] == name]
    entry["parameters"] = parameters
    path = tmp_path / "prefect.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_per_model_deployments_come_from_the_catalog(tmp_path: Path) -> None:
    """Nothing in prefect.yaml names a model; the catalog decides which exist."""
    static = [d["name"] for d in yaml.safe_load(deps.PREFECT_FILE.read_text())["deployments"]]
    assert not [n for n in static if any(m in n for m in MODELS)]
    names = [d["name"] for d in deps.deployments()]
    assert [n for n in names if n.startswith("train-") and n != "train-fleet-kubernetes"] == [
        f"train-{m}" for m in MODELS
    ]
    # a deployment naming a model by hand is refused: it would go stale with the catalog
    config = yaml.safe_load(deps.PREFECT_FILE.read_text())
    config["deployments"].append({**config["deployments"][0], "name": "train-flight_delay"})
    path = tmp_path / "prefect.yaml"
    path.write_text(yaml.safe_dump(config))
    assert any("names model(s) ['flight_delay']" in p for p in deps.check_deployments(path))
    # the expanded file is what `prefect deploy` reads
    written = yaml.safe_load(deps.write_expanded(tmp_path / "out" / "prefect.yaml").read_text())
    assert [d["name"] for d in written["deployments"]] == names


def test_a_misspelt_parameter_is_named(tmp_path: Path) -> None:
    path = _broken(tmp_path, "train-{model}", modelz=["{model}"])
    problems = deps.check_deployments(path)
    assert len(problems) == len(MODELS)  # one per model the template expands to
    assert problems[0].startswith(f"train-{next(iter(MODELS))}: parameters {{'modelz':")
    assert "modelz" in problems[0] and "models" in problems[0]  # given, expected


def test_a_wrongly_typed_parameter_is_named(tmp_path: Path) -> None:
    path = _broken(tmp_path, "replay", step={"not": "a step"})
    (problem,) = deps.check_deployments(path)
    assert problem.startswith("replay:")
    assert "step" in problem and "valid string" in problem


def test_kubernetes_job_variables_are_declared(tmp_path: Path) -> None:
    template = json.loads(deps.KUBERNETES_TEMPLATE.read_text())
    declared = set(template["variables"]["properties"])
    config = yaml.safe_load(deps.PREFECT_FILE.read_text())
    (k8s,) = [d for d in config["deployments"] if d["work_pool"]["name"] == "fleet-kubernetes"]
    assert set(k8s["work_pool"]["job_variables"]) <= declared
    assert {"image", "namespace", "env", "cpu_request", "memory_limit"} <= declared
    k8s["work_pool"]["job_variables"]["gpu_count"] = 1
    path = tmp_path / "prefect.yaml"
    path.write_text(yaml.safe_dump(config))
    (problem,) = deps.check_deployments(path)
    assert "gpu_count" in problem


def test_unknown_task_runner_is_a_clear_error(settings: Settings) -> None:
    from flows.runners import training_runner

    with pytest.raises(ValueError, match="use threads, dask or a Dask scheduler address"):
        training_runner(settings.model_copy(update={"task_runner": "ray"}))


@pytest.mark.integration
def test_training_on_a_local_dask_cluster(settings: Settings, prefect_server: None) -> None:
    """The training task of one model runs on a real Dask worker (prefect-dask)."""
    from distributed import Client, LocalCluster

    from fleet import registry
    from flows.runners import training_runner
    from flows.train import train_fleet_flow

    with (
        LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            processes=False,
            protocol="tcp",
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        Client(cluster.scheduler_address) as client,
    ):
        chosen = settings.model_copy(update={"task_runner": cluster.scheduler_address})
        runner = training_runner(chosen)
        assert type(runner).__name__ == "DaskTaskRunner"
        flow = train_fleet_flow.with_options(task_runner=runner)
        (outcome,) = flow(models=["review_sentiment"], until=date(2013, 4, 1))
        executed = client.run(lambda dask_worker: dask_worker.state.executed_count)
    assert outcome.status == "promoted", outcome.message
    assert sum(executed.values()) >= 1  # the task ran on the cluster's worker
    champion = registry.champion_info(settings, "review_sentiment")
    assert champion is not None and str(champion.version) == outcome.version
