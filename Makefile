# The two commands a newcomer runs: `make run` and `make test`. Both bootstrap .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SEEDS ?= 500
SOAK_SEEDS ?= 20000

.PHONY: run demo test lint typecheck unit soak sim clean

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
