# The two commands a newcomer runs: `make run` and `make test`. Both bootstrap .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SEEDS ?= 500
SOAK_SEEDS ?= 20000

.PHONY: run test lint typecheck unit soak sim clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

run: $(BIN)/.installed
	@echo "make run: the local 3-node lab cluster (for redis-cli) is not available yet."
	@echo "Meanwhile, the same protocol and KV service on a simulated 3-node LAN, with faults:"
	$(BIN)/appliance sim --seed 7 --style semi-active --trace

lint: $(BIN)/.installed
	$(BIN)/ruff check appliance tests
	$(BIN)/ruff format --check appliance tests

typecheck: $(BIN)/.installed
	$(BIN)/mypy

unit: $(BIN)/.installed
	$(BIN)/pytest -q --sim-seeds $(SEEDS)

test: lint typecheck unit

soak: $(BIN)/.installed
	$(BIN)/appliance sim --seeds $(SOAK_SEEDS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis build *.egg-info
