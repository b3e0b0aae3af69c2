"""The fleet outside its source tree: Bentos that serve from a fresh environment made from
their own requirements, and registered models that load where this repository is not."""

from __future__ import annotations

import json
import subprocess
from importlib import metadata
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from bentos import build, check
from fleet import bento_store as store
from fleet import lockfile, processes, registry, serving
from fleet.catalog import catalog_dir, get_model
from tests.serving_fixtures import ServiceProcess, ServingState, records

HOST = "127.0.0.1"


# --- code: what goes into a Bento -------------------------------------------------------


def test_requirements_are_the_locks_closure_of_the_service_runtime() -> None:
    pins = build.requirements()
    names = [lockfile.normalize(p.split("==")[0].split("[")[0]) for p in pins]
    assert names == sorted(set(names)) and all("==" in p for p in pins)
    for root in build.SERVICE_PACKAGES:
        assert lockfile.normalize(root.split("[")[0]) in names, root
    for pin in pins:  # every pin is what the locked environment runs
        name, _, version = pin.partition("==")
        assert metadata.version(name.split("[")[0]) == version, pin
    # the lock and the installed metadata give the same closure
    assert lockfile._lock_closure(lockfile.LOCK_FILE, list(build.SERVICE_PACKAGES)) == (
        lockfile._installed_closure(list(build.SERVICE_PACKAGES))
    )
    assert "psycopg[binary]==" in " ".join(pins) and any(n == "psycopg-binary" for n in names)
    with pytest.raises(lockfile.LockError, match="not in"):
        lockfile.pinned_closure(["no-such-package-anywhere"])


def test_build_context_holds_the_whole_package_and_the_catalog(tmp_path: Path) -> None:
    context = build.build_context("model", tmp_path / "ctx", "flight_delay", {"model": "x"}, "d")
    repo = Path(build.__file__).resolve().parent.parent
    for package in ("fleet", "bentos"):
        wanted = {p.relative_to(repo).as_posix() for p in (repo / package).rglob("*.py")}
        got = {p.relative_to(context).as_posix() for p in (context / package).rglob("*.py")}
        assert got == wanted, package  # every module, none hand-picked
    specs = {p.relative_to(catalog_dir()) for p in catalog_dir().rglob("*.yaml")}
    assert {p.relative_to(context / "catalog") for p in (context / "catalog").rglob("*.yaml")} == (
        specs
    )
    config = yaml.safe_load((context / "bentofile.yaml").read_text())
    assert config["service"] == "bentos.model.service:Service" and config["name"] == "flight_delay"
    assert config["python"]["packages"] == build.requirements()
    assert config["labels"] == {"project": "modelfleet", "model": "x"}


# --- integration: built Bentos serve on their own -----------------------------------------


def _built(settings, name: str) -> build.Built:
    done = build.build_gateway(settings) if name == "gateway" else build.build_model(settings, name)
    info = yaml.safe_load((done.path / "bento.yaml").read_text())
    assert info["labels"]["project"] == "modelfleet"
    # the generated Dockerfile installs exactly the pinned requirements
    dockerfile = (done.path / "env" / "docker" / "Dockerfile").read_text()
    assert "env/python/requirements.txt" in dockerfile
    # (BentoML appends its own pin once more)
    written = (done.path / "env" / "python" / "requirements.txt").read_text().split()
    assert set(written) == set(build.requirements())
    return done


@pytest.mark.integration
def test_built_bentos_serve_from_a_fresh_environment(
    serving_state: ServingState, tmp_path: Path
) -> None:
    """One tabular and one text model and the gateway: built, installed into a new venv
    from the Bento's own requirements, served from an empty folder, answering."""
    settings = serving_state.settings
    bentos = {name: _built(settings, name) for name in ("flight_delay", "review_sentiment")}
    gateway = _built(settings, "gateway")
    for name, done in bentos.items():
        info = yaml.safe_load((done.path / "bento.yaml").read_text())
        champion = registry.champion_info(settings, name)
        assert store.bento_model_tags(info) == [serving_state.tags[name]]
        assert info["labels"]["registry_version"] == str(champion.version)
        assert info["labels"]["run_id"] == champion.run_id
        first, last = champion.window.days
        assert info["labels"]["window"] == f"{first}..{last}"
    venv = check.fresh_venv(
        tmp_path / "venv", bentos["flight_delay"].path / "env" / "python" / "requirements.txt"
    )
    assert not list(venv.root.glob("lib/python*/site-packages/modelfleet*"))
    empty = tmp_path / "empty"
    empty.mkdir()
    env = check.clean_env(
        BENTOML_HOME=str(store.bentoml_home(settings)), FLEET_HOME=str(empty / "var")
    )
    bentoml_cli = str(venv.bin / "bentoml")
    ports = {name: processes.free_port(HOST) for name in [*bentos, "gateway"]}

    def serve(tag: str, name: str, serve_env: dict[str, str]) -> check.Served:
        command = [bentoml_cli, "serve", tag, "--host", HOST, "--port", str(ports[name])]
        url = f"http://{HOST}:{ports[name]}"
        return check.start(command, empty, serve_env, url, tmp_path / f"{name}.log")

    servers = [serve(done.tag, name, env) for name, done in bentos.items()]
    backends = {name: f"http://{HOST}:{ports[name]}" for name in bentos}
    gateway_env = {**env, "FLEET_GATEWAY_BACKENDS": json.dumps(backends)}
    with check.serving(*servers), check.serving(serve(gateway.tag, "gateway", gateway_env)):
        for name in bentos:
            url = backends[name]
            example = check.openapi_example(url)
            answer = httpx.post(f"{url}/predict", json=example, timeout=30)
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert body["model"] == name and body["version"] == "1"
            assert set(body["prediction"]) == {"label", "probability"}
            # the compiled single-record path came with the Bento's own requirements
            served = httpx.get(f"{url}/metadata", timeout=30).json()["predict_path"]
            assert served == ("treelite" if name == "flight_delay" else "pipeline"), served
        gw = f"http://{HOST}:{ports['gateway']}"
        example = {**check.openapi_example(gw), "models": list(bentos)}
        answer = httpx.post(f"{gw}/predict", json=example, timeout=30)
        assert answer.status_code == 200, answer.text
        assert set(answer.json()["results"]) == set(bentos), answer.text
    # the served Bentos logged into the empty folder's own state root
    assert (empty / "var" / "serving" / "predictions.db").is_file()
    assert not (empty / "bentos").exists()  # nothing of the repository was needed here


# --- integration: registered models load where this repository is not --------------------


def _requirements_of(settings, name: str) -> Path:
    import mlflow

    registry.client(settings)
    uri = f"models:/{name}@champion"
    return Path(mlflow.artifacts.download_artifacts(f"{uri}/requirements.txt"))


LOAD_AND_PREDICT = """
import json, sys
import mlflow, pandas as pd
records = json.loads(sys.argv[2])
model = mlflow.pyfunc.load_model(sys.argv[1])
print(json.dumps(pd.DataFrame(model.predict(pd.DataFrame(records))).values.tolist()))
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("fleet", "bentos"))))
"""


@pytest.mark.integration
def test_registered_models_load_and_serve_without_this_repository(
    serving_state: ServingState, tmp_path: Path
) -> None:
    settings = serving_state.settings
    requirements = _requirements_of(settings, "flight_delay")
    assert requirements.read_text().split() == registry.pip_requirements()
    venv = check.fresh_venv(tmp_path / "venv", requirements)
    empty = tmp_path / "empty"
    empty.mkdir()
    # as a user would run it: that environment activated (its bin first on PATH)
    env = check.clean_env(
        MLFLOW_TRACKING_URI=settings.tracking_uri, PATH=f"{venv.bin}:/usr/bin:/bin"
    )
    for name in ("flight_delay", "review_sentiment"):
        assert _requirements_of(settings, name).read_text() == requirements.read_text()
        rows = records(serving_state, name, 5)
        done = subprocess.run(
            [str(venv.bin / "python"), "-c", LOAD_AND_PREDICT, f"models:/{name}@champion",
             json.dumps(rows)],
            cwd=empty, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        lines = done.stdout.strip().splitlines()
        predicted, imported = json.loads(lines[-2]), json.loads(lines[-1])
        assert imported == []  # no module of this repository was needed
        model = registry.load_version(settings, name, serving_state.tags[name].split(":v")[1])
        expected = model.predict_proba(serving.to_frame(get_model(name), rows)).tolist()
        np.testing.assert_allclose(predicted, expected, rtol=1e-12)

    # `mlflow models serve` from that environment answers as the model service does
    port = processes.free_port(HOST)
    mlflow_serve = check.start(
        [str(venv.bin / "mlflow"), "models", "serve", "-m", "models:/arrival_delay@champion",
         "--env-manager", "local", "--host", HOST, "--port", str(port)],
        empty, env, f"http://{HOST}:{port}", tmp_path / "mlflow-serve.log", health="/ping",
    )  # fmt: skip
    service = ServiceProcess(serving_state, "arrival_delay")
    with check.serving(mlflow_serve):
        try:
            service.wait_ready()
            record = records(serving_state, "arrival_delay", 1)[0]
            ours = httpx.post(f"{service.url}/predict", json={"record": record}, timeout=30)
            theirs = httpx.post(
                f"{mlflow_serve.url}/invocations", json={"dataframe_records": [record]}, timeout=30
            )
        finally:
            service.stop()
    assert ours.status_code == 200 and theirs.status_code == 200, (ours.text, theirs.text)
    (value,) = theirs.json()["predictions"]
    assert ours.json()["prediction"]["value"] == pytest.approx(value)
