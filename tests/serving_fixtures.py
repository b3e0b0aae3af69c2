"""Shared serving test helpers: a trained registry + Bento store, and real service processes.

``build_serving_state`` trains every catalog model on a small real window (a few
seconds each), promotes the champions and imports them into the Bento store.
``ServiceProcess`` runs ``bentoml serve`` for one model on a free loopback port
(``BentoProcess`` for any service).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import httpx
import pandas as pd

from fleet import bento_store as store
from fleet import etl, lake, registry, serving
from fleet.catalog import ModelSpec, get_model, models
from fleet.settings import REPO_ROOT, Settings

MODELS = models()

# flights and weather: 3 weeks (2 train + 1 holdout) before UNTIL; reviews spread ~100/week
UNTIL = {"flights": date(2013, 1, 29), "weather": date(2013, 1, 29), "reviews": date(2013, 4, 1)}
SMALL_TEXT = {"train_weeks": 12, "holdout_weeks": 3}
SMALL_TABULAR = {"train_weeks": 3}


def small(spec: ModelSpec) -> ModelSpec:
    """The spec on a short window: the text model needs more weeks of its ~100 a week."""
    text = any(c.kind == "text" for c in spec.feature_columns)
    return spec.model_copy(update=SMALL_TEXT if text else SMALL_TABULAR)


@dataclass(frozen=True)
class ServingState:
    settings: Settings
    tags: dict[str, str]  # model -> pinned Bento model tag
    tables: dict[str, pd.DataFrame]  # real ETL rows of each dataset's window

    @property
    def flights(self) -> pd.DataFrame:
        return self.tables["flights"]

    @property
    def reviews(self) -> pd.DataFrame:
        return self.tables["reviews"]


def state_settings(root: Path) -> Settings:
    """Settings of a state root, ignoring any MLflow URI in the environment."""
    return Settings(home=root, MLFLOW_TRACKING_URI=None)


def build_serving_state(root: Path, tables: dict[str, pd.DataFrame]) -> ServingState:
    """Lake partitions + one champion per catalog model + their Bento model tags."""
    settings = state_settings(root)
    frames = {}
    for spec in MODELS.values():
        short = small(spec)
        until = UNTIL[spec.dataset.name]
        first = until - pd.Timedelta(weeks=short.train_weeks).to_pytimedelta()
        last = until - pd.Timedelta(days=1).to_pytimedelta()
        parts = etl.build_partitions(
            spec.dataset, tables[spec.dataset.name], lake.days(first, last)
        )
        for day, frame in parts.items():
            lake.write_partition(settings.lake_dir, spec.dataset.name, day, frame)
        frames[spec.dataset.name] = pd.concat(parts.values(), ignore_index=True)
        result = registry.train_and_promote(settings, short, until)
        assert result.decision.promoted, result.decision.reason
    tags = store.champion_tags(settings)
    assert set(tags) == set(MODELS), tags
    return ServingState(settings, tags, frames)


def records(state: ServingState, model: str, n: int) -> list[dict]:
    """``n`` real request records for ``model`` from the state's window (JSON-ready)."""
    spec = get_model(model)
    table = state.tables[spec.dataset.name]
    return serving.json_records(spec, table.sample(n=n, random_state=7))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class BentoProcess:
    """``bentoml serve TARGET`` from the repo root on a free loopback port, in its own
    process group (so ``stop`` ends its workers too)."""

    def __init__(self, name: str, target: str, env: dict[str, str], log_dir: Path) -> None:
        self.model = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"test-{name}-{self.port}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        bentoml = Path(sys.executable).with_name("bentoml")
        cmd = [str(bentoml), "serve", target, "--host", "127.0.0.1", "--port", str(self.port)]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.model} service exited:\n{self.log()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise TimeoutError(f"{self.model} not ready in {timeout} s:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)


class ServiceProcess(BentoProcess):
    """One model's service, serving ``tag`` (default: the state's version of the model)."""

    def __init__(self, state: ServingState, model: str, tag: str | None = None) -> None:
        env = store.service_env(state.settings, tag or state.tags[model])
        target = "bentos.model.service:Service"
        super().__init__(model, target, env, state.settings.root / "serving")


def fill_lake(
    settings: Settings, dataset: str, table: pd.DataFrame, first: date, last: date
) -> None:
    """Write the real ETL partitions of ``first..last`` from a raw source table."""
    from fleet.catalog import get_dataset

    for day, frame in etl.build_partitions(
        get_dataset(dataset), table, lake.days(first, last)
    ).items():
        lake.write_partition(settings.lake_dir, dataset, day, frame)
