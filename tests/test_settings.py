"""Code tests: one state root drives every path; standard variables override."""

from __future__ import annotations

import os

from fleet.settings import Settings, prepare_environment


def test_every_path_lives_under_fleet_home(settings):
    root = settings.root
    for path in (
        settings.lake_dir,
        settings.quarantine_dir,
        settings.mlflow_dir,
        settings.artifact_root,
        settings.gx_dir,
        settings.reports_dir,
        settings.prefect_home,
    ):
        assert path.is_relative_to(root), path
    assert settings.tracking_uri == f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"


def test_mlflow_tracking_uri_overrides_the_embedded_store(settings, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql://127.0.0.1:5432/test")
    assert Settings().tracking_uri == "postgresql://127.0.0.1:5432/test"


def test_prepare_environment_creates_root_and_turns_telemetry_off(settings, monkeypatch):
    for key in ("DO_NOT_TRACK", "MLFLOW_DISABLE_TELEMETRY", "PREFECT_HOME"):
        monkeypatch.delenv(key, raising=False)
    prepare_environment(settings)
    assert settings.root.is_dir()
    assert os.environ["DO_NOT_TRACK"] == "1"
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert os.environ["PREFECT_HOME"] == str(settings.prefect_home)
