# The two commands a newcomer runs: `make run` and `make test`. Both bootstrap .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SEEDS ?= 500
SOAK_SEEDS ?= 20000

.PHONY: run demo test lint lint-ansible typecheck unit test-system soak sim clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

run: $(BIN)/.installed
	$(BIN)/appliance lab up --nodes 3 --foreground

demo: $(BIN)/.installed
	$(BIN)/appliance lab demo $(if $(NETNS),--netns)

lint: $(BIN)/.installed lint-ansible
	$(BIN)/ruff check appliance tests
	$(BIN)/ruff format --check appliance tests

# The playbooks: yamllint, ansible-lint's production profile and a syntax check.
lint-ansible: $(BIN)/.installed
	cd ansible && PATH="$(CURDIR)/$(BIN):$$PATH" ../$(BIN)/yamllint -s .
	cd ansible && PATH="$(CURDIR)/$(BIN):$$PATH" ../$(BIN)/ansible-lint -q --profile production --offline
	cd ansible && PATH="$(CURDIR)/$(BIN):$$PATH" ../$(BIN)/ansible-playbook --syntax-check site.yml

typecheck: $(BIN)/.installed
	$(BIN)/mypy

unit: $(BIN)/.installed
	$(BIN)/pytest -q --sim-seeds $(SEEDS)

# `unit` runs tests/system too: as root with systemd-nspawn and debootstrap present, the
# provisioning system test (about 5 minutes); otherwise it skips, saying why.
test: lint typecheck unit

# Only the provisioning system test (root): three booted containers provisioned by site.yml.
test-system: $(BIN)/.installed
	$(BIN)/pytest -q -rs tests/system

soak: $(BIN)/.installed
	$(BIN)/appliance sim --seeds $(SOAK_SEEDS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis build *.egg-info
