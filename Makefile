# coldchain: `make demo` runs the whole system, `make test` runs every check and test.
# Both create the virtual environment themselves from requirements.lock (only python3 and make needed).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-from-lock
# Debian packages the integration tests start, each as package=file-that-shows-it-is-installed: the broker,
# the browser that loads the widget, the time-series store and PostgreSQL's server binaries.
SYSTEM_PACKAGES := mosquitto=/usr/sbin/mosquitto chromium=/usr/bin/chromium \
	victoria-metrics=/usr/bin/victoria-metrics postgresql=/usr/lib/postgresql/*/bin/initdb

.PHONY: demo test check lint format typecheck pytest system-deps lock clean bench bench-ingest bench-agent

$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@

demo: $(STAMP)
	$(BIN)/coldchain demo

test: check system-deps pytest

check: lint typecheck

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest

# As root this installs what is missing; otherwise it names the packages and stops.
system-deps:
	@missing=""; for entry in $(SYSTEM_PACKAGES); do \
	  ls $${entry#*=} >/dev/null 2>&1 || missing="$$missing $${entry%%=*}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing system packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  else \
	    echo "make test needs the Debian packages:$$missing (run: sudo apt-get install$$missing, or run make test as root)"; exit 1; \
	  fi; \
	fi

# Benchmarks print figures (docs/benchmarks.md records them); they never pass or fail.
bench: bench-ingest bench-agent

bench-ingest: $(STAMP)
	PYTHONPATH=. $(BIN)/python bench/ingest_pipeline.py

bench-agent: $(STAMP) system-deps
	PYTHONPATH=. $(BIN)/python bench/agent_footprint.py --seconds 60

# Re-pin every dependency (all extras) with hashes after changing pyproject.toml.
lock: $(STAMP)
	$(BIN)/pip-compile --quiet --extra dev --generate-hashes --allow-unsafe --strip-extras -o requirements.lock pyproject.toml

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
