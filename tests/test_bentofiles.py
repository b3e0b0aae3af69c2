"""Code tests: every bentofile pins what the locked environment runs, and ships its code."""

from __future__ import annotations

from importlib import metadata

import pytest
import yaml

from fleet.catalog import MODELS
from fleet.settings import REPO_ROOT

SERVICES = [*MODELS, "gateway"]


@pytest.mark.parametrize("name", SERVICES)
def test_bentofile_pins_match_the_lock(name: str) -> None:
    spec = yaml.safe_load((REPO_ROOT / "bentos" / name / "bentofile.yaml").read_text())
    pins = spec["python"]["packages"]
    assert pins, "a Bento must name its dependencies"
    for pin in pins:
        package, _, version = pin.partition("==")
        assert version, f"{pin}: unpinned"
        assert metadata.version(package.split("[")[0]) == version, f"{name}: {pin} is stale"


@pytest.mark.parametrize("name", SERVICES)
def test_bentofile_includes_files_that_exist(name: str) -> None:
    spec = yaml.safe_load((REPO_ROOT / "bentos" / name / "bentofile.yaml").read_text())
    for path in spec["include"]:
        assert (REPO_ROOT / path).is_file(), f"{name}: {path} does not exist"
    module = spec["service"].split(":")[0].replace(".", "/") + ".py"
    assert module in spec["include"]
