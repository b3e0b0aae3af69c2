"""One settings object for the whole fleet.

Every path derives from one state root (``FLEET_HOME``, default ``./var``). Standard
variables (``MLFLOW_TRACKING_URI``, ``PREFECT_API_URL``) keep their usual meaning; the
``FLEET_`` ones switch embedded defaults to their scale-out forms.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent

# Set before any of the libraries is imported; each reads them at import or first use.
TELEMETRY_OFF = {
    "DO_NOT_TRACK": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "BENTOML_DO_NOT_TRACK": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "GX_ANALYTICS_ENABLED": "false",
}


LOOPBACK = ("127.0.0.1", "localhost", "::1")


class Settings(BaseSettings):
    """Fleet settings from ``FLEET_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="FLEET_", extra="ignore")

    home: Path = Field(default=Path("var"), description="state root for everything")
    mlflow_tracking_uri: str | None = Field(
        default=None,
        validation_alias="MLFLOW_TRACKING_URI",
        description="MLflow tracking/registry store; SQLite under the state root by default",
    )
    expectations_dir: Path = Field(
        default=REPO_ROOT / "expectations", description="the Great Expectations project"
    )
    train_workers: int = Field(default=2, ge=1, description="models trained at once by --all")
    serve_host: str = Field(default="127.0.0.1", description="address services bind to")
    gateway_port: int = Field(default=3000, description="gateway port")
    model_port_base: int = Field(default=3001, description="first model port, catalog order")
    results_url: str | None = Field(
        default=None, description="SQLAlchemy URL of the gateway's result store"
    )
    predictions_url: str | None = Field(
        default=None, description="SQLAlchemy URL of the prediction log"
    )
    # 5 s: on two busy cores a model service restarting or loading a new version next to
    # 16 clients held requests for 2-4 s; the gateway must answer within it, not drop them
    model_timeout_s: float = Field(default=5.0, gt=0, description="gateway -> model timeout")
    max_batch_records: int = Field(default=1000, ge=1, description="largest batch request")
    predict_path: Literal["auto", "pipeline", "numpy", "treelite"] = Field(
        default="auto",
        description="how a served model answers (fleet.fastpath): auto takes the fastest "
        "path whose answers equal the pipeline's",
    )
    # the local stack (`fleet up`): every server binds serve_host
    prefect_port: int = Field(default=4200, description="local Prefect server (API + UI)")
    mlflow_port: int = Field(default=5000, description="local MLflow server (UI + API)")
    worker_port: int = Field(default=4201, description="Prefect worker's health endpoint")
    api_token: str | None = Field(
        default=None,
        repr=False,
        description="bearer token every service and the gateway require (health excepted)",
    )
    api_token_file: Path | None = Field(
        default=None, description="a file holding the token (instead of FLEET_API_TOKEN)"
    )
    prefect_auth: str | None = Field(
        default=None, repr=False, description="user:password of the local Prefect server"
    )
    mlflow_username: str = Field(default="admin", description="the local MLflow server's admin")
    mlflow_password: str | None = Field(
        default=None, repr=False, description="turns on MLflow's basic-auth app in `fleet up`"
    )
    max_body_bytes: int = Field(
        default=8 * 1024 * 1024, ge=1024, description="largest request body a service reads"
    )
    retention_days: int | None = Field(
        default=None, ge=1, description="`fleet prune` default: keep this many days"
    )
    task_runner: str = Field(
        default="threads",
        description="training parallelism: threads, dask (local cluster) or a Dask address",
    )

    @cached_property
    def root(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def lake_dir(self) -> Path:
        return self.root / "lake"

    @property
    def quarantine_dir(self) -> Path:
        return self.root / "quarantine"

    @property
    def mlflow_dir(self) -> Path:
        return self.root / "mlflow"

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.mlflow_dir / 'mlflow.db'}"

    @property
    def artifact_root(self) -> Path:
        return self.mlflow_dir / "artifacts"

    @property
    def gx_dir(self) -> Path:
        """Run-time Great Expectations output: validation results and Data Docs."""
        return self.root / "gx"

    @property
    def data_docs_index(self) -> Path:
        return self.gx_dir / "data_docs" / "index.html"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    @property
    def serving_dir(self) -> Path:
        """Pid files, service logs and the gateway's default result store."""
        return self.root / "serving"

    @property
    def results_db_url(self) -> str:
        return self.results_url or f"sqlite:///{self.serving_dir / 'results.db'}"

    @property
    def predictions_db_url(self) -> str:
        return self.predictions_url or f"sqlite:///{self.serving_dir / 'predictions.db'}"

    @property
    def state_db_url(self) -> str:
        """The fleet's own state (leases, trigger claims, monitor history): beside the
        prediction log, which every service and flow run already reaches."""
        return self.predictions_db_url

    @property
    def token(self) -> str | None:
        """The API token: ``FLEET_API_TOKEN``, else the first line of ``FLEET_API_TOKEN_FILE``."""
        if self.api_token:
            return self.api_token.strip() or None
        if self.api_token_file is not None:
            try:
                text = self.api_token_file.expanduser().read_text().strip()
            except OSError as exc:
                raise ValueError(f"FLEET_API_TOKEN_FILE {self.api_token_file}: {exc}") from None
            return text.splitlines()[0].strip() if text else None
        return None

    def exposure_problems(self, stack: bool = False) -> list[str]:
        """What must be set before binding ``serve_host`` beyond loopback (empty: fine).

        On loopback nothing is asked; elsewhere every endpoint must authenticate: the
        services and gateway (a token), and with the stack, Prefect (its API runs code
        through deployments) and MLflow (its write API takes pickled models).
        """
        if self.serve_host in LOOPBACK:
            return []
        missing = []
        if not self.token:
            missing.append("FLEET_API_TOKEN (or FLEET_API_TOKEN_FILE) for the services")
        if stack and not self.prefect_auth:
            missing.append("FLEET_PREFECT_AUTH=user:password for the Prefect server")
        if stack and not self.mlflow_password:
            missing.append("FLEET_MLFLOW_PASSWORD for the MLflow server")
        return missing

    def auth_headers(self) -> dict[str, str]:
        """What a client of the fleet's services sends: the bearer token, when one is set."""
        token = self.token
        return {"Authorization": f"Bearer {token}"} if token else {}

    @property
    def prefect_home(self) -> Path:
        return self.root / "prefect"


def get_settings() -> Settings:
    return Settings()


def prepare_environment(settings: Settings) -> None:
    """Explicit set-up step: telemetry off, state root created, tools pointed at it.

    Values the user already set win, so a remote Prefect API or MLflow server is a
    settings change, not a code change.
    """
    for key, value in TELEMETRY_OFF.items():
        os.environ.setdefault(key, value)
    settings.root.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(settings.prefect_home))
    # the temporary server's first database migration can take far longer than 20 s
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")
    os.environ.setdefault("MLFLOW_TRACKING_URI", settings.tracking_uri)
    os.environ.setdefault("BENTOML_HOME", str(settings.root / "bentoml"))
    os.environ.setdefault("FLEET_HOME", str(settings.root))
    # copying a model between local stores is instant; its progress bars are log noise
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
