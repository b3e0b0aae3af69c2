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

.PHONY: setup tools run test lint format clean

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

# Debian's packages the tests use: headless Chromium opens the reports with the network
# off (without root or apt-get that test skips and says why; CI requires it), and wrk is
# the serving benchmark's second load generator (without it the bench says so).
TOOLS := chromium wrk
tools:
	@missing=""; for t in $(TOOLS); do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "not installed:$$missing (needs root and apt-get); their tests skip or say so"; fi; fi

test: setup tools
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
