# The two commands a newcomer runs: `make run` and `make test`. Both bootstrap .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SEEDS ?= 500
SOAK_SEEDS ?= 20000

.PHONY: run demo test lint lint-ansible typecheck unit test-system torture soak soak-faults sim bench clean

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
	$(BIN)/ruff check appliance tests benchmarks
	$(BIN)/ruff format --check appliance tests benchmarks

# The playbooks: yamllint, ansible-lint's production profile and a syntax check.
lint-ansible: $(BIN)/.installed
	cd ansible && PATH="$(CURDIR)/$(BIN):$$PATH" ../$(BIN)/yamllint -s .
	cd ansible && PATH="$(CURDIR)/$(BIN):$$PATH" ../$(BIN)/ansible-lint -q --profile production --offline
	cd ansible && PATH="$(CURDIR)/$(BIN):$$PATH" ../$(BIN)/ansible-playbook --syntax-check site.yml

typecheck: $(BIN)/.installed
	$(BIN)/mypy
	$(BIN)/mypy benchmarks

unit: $(BIN)/.installed
	$(BIN)/pytest -q --sim-seeds $(SEEDS)

# `unit` runs tests/system too: as root with systemd-nspawn and debootstrap present, the
# provisioning system test (about 5 minutes); otherwise it skips, saying why.
test: lint typecheck unit

# Side-by-side benchmarks against Redis (+ replica, + Sentinel), PySyncObj and keepalived VIP
# failover: about 20 minutes. Installs Debian's redis-server and keepalived when root and
# missing (keepalived's phase needs root; without it the results say it was skipped), and the
# `bench` extra into .venv;
# writes benchmarks/results/<date>.json and .png, then the table in docs/performance.md.
bench: $(BIN)/.installed
	@command -v redis-server >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null)
	@command -v keepalived >/dev/null 2>&1 || [ -x /usr/sbin/keepalived ] || [ "$$(id -u)" != 0 ] || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq keepalived >/dev/null)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m benchmarks $(BENCH_ARGS)
	$(BIN)/python -m benchmarks.report --update docs/performance.md

# Only the provisioning system test (root): three booted containers provisioned by site.yml.
test-system: $(BIN)/.installed
	$(BIN)/pytest -q -rs tests/system

# One seeded fault run against a fresh lab (NETNS=1 as root adds the network faults; SEED=N
# replays a run), and the 30-minute soak; both print the report docs/testing.md explains.
torture: $(BIN)/.installed
	$(BIN)/appliance lab torture $(if $(NETNS),--netns) $(if $(SEED),--seed $(SEED))

soak-faults: $(BIN)/.installed
	$(BIN)/appliance lab torture --duration $(or $(DURATION),1800) $(if $(NETNS),--netns)

soak: $(BIN)/.installed
	$(BIN)/appliance sim --seeds $(SOAK_SEEDS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis build *.egg-info
