# The two commands a newcomer runs: `make run` and `make test`. Both bootstrap .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SEEDS ?= 500
SOAK_SEEDS ?= 20000

.PHONY: run demo test lint typecheck unit soak sim bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

run: $(BIN)/.installed
	$(BIN)/appliance lab up --nodes 3 --foreground

demo: $(BIN)/.installed
	$(BIN)/appliance lab demo $(if $(NETNS),--netns)

lint: $(BIN)/.installed
	$(BIN)/ruff check appliance tests benchmarks
	$(BIN)/ruff format --check appliance tests benchmarks

typecheck: $(BIN)/.installed
	$(BIN)/mypy
	$(BIN)/mypy benchmarks

unit: $(BIN)/.installed
	$(BIN)/pytest -q --sim-seeds $(SEEDS)

test: lint typecheck unit

# Side-by-side benchmarks against Redis (+ replica, + Sentinel) and PySyncObj: about 20 minutes.
# Installs Debian's redis-server when root and missing, and the `bench` extra into .venv;
# writes benchmarks/results/<date>.json and .png, then the table in docs/performance.md.
bench: $(BIN)/.installed
	@command -v redis-server >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m benchmarks $(BENCH_ARGS)
	$(BIN)/python -m benchmarks.report --update docs/performance.md

soak: $(BIN)/.installed
	$(BIN)/appliance sim --seeds $(SOAK_SEEDS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis build *.egg-info
