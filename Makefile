# Everything starts from python3 alone: a private uv, then the locked environment.
PYTHON ?= python3
UV_VERSION := 0.13.8
UV := .uv/bin/uv
BIN := .venv/bin

export DO_NOT_TRACK := 1
export MLFLOW_DISABLE_TELEMETRY := true
export BENTOML_DO_NOT_TRACK := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export GX_ANALYTICS_ENABLED := false
export UV_PYTHON_DOWNLOADS := never

.PHONY: setup browser run test lint format clean

setup: .venv/.synced

$(UV):
	$(PYTHON) -m venv .uv
	.uv/bin/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# bytecode compiled once here: each `fleet` command then starts without compiling
.venv/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --locked --compile-bytecode --python $(PYTHON)
	@touch $@

# The main job: the quick replay. Bootstrap champions on early 2013, then March to May
# week by week through the served fleet: traffic, labels, drift jobs, retraining.
run: setup
	$(BIN)/fleet replay --quick
	$(BIN)/fleet models

# Headless Chromium (Debian's package) opens the reports with the network off in a test;
# without root or apt-get that test skips and says why (CI requires it).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium: not installed (needs root and apt-get); the browser test will skip"; fi; }

test: setup browser
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf .venv .uv var
