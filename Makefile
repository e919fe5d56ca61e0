SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV := .venv
PY := $(VENV)/bin/python
BUF := .tools/node_modules/.bin/buf
BUF_VERSION := 1.75.0
# Stamp files make setup a no-op when nothing it depends on changed.
SETUP_STAMP := $(VENV)/.installed

help:
	@echo "make run     set everything up, bring the mesh up behind Envoy, apply examples/agents.json, run the triage agent once"
	@echo "make test    every check: generated-code drift, buf lint/breaking, ruff, mypy, the test suite"
	@echo "make bench   benchmarks, each printing its ratio to a floor measured in the same run"
	@echo "make proto   regenerate agentmesh/gen from protos/"
	@echo "make format  ruff format + fixes"

setup: $(SETUP_STAMP) sandbox-deps

# The sandbox user code runs in (agentmesh/sandbox.py): Debian's bubblewrap.
sandbox-deps:
	@command -v bwrap >/dev/null 2>&1 || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap; }

$(SETUP_STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# What only the tests and contract checks need: Postgres binaries and the buf CLI.
setup-test: setup $(BUF)
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; }

$(BUF):
	npm install --silent --no-fund --no-audit --prefix .tools @bufbuild/buf@$(BUF_VERSION)

run: setup
	$(VENV)/bin/agentmesh up --gateway --apply examples/agents.json \
	  --ask triage "I was charged twice for invoice INV-1002. Can you look into it?"

proto: setup $(BUF)
	$(PY) tools/genproto.py
	$(PY) tools/gateway_config.py

# Records the contract as released: what `buf breaking` guards from now on.
contract-baseline: setup-test
	$(BUF) build --path protos/agentmesh -o contract/released.binpb

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

lint: setup-test
	$(PY) tools/genproto.py --check
	$(BUF) lint
	$(BUF) build -o /dev/null
	tools/buf_breaking.sh $(BUF)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(MAKE) --no-print-directory typecheck

typecheck: setup
	$(VENV)/bin/mypy agentmesh services

test: lint
	$(PY) -m pytest -q

# Benchmarks print ratios against a floor measured in the same run; not tests.
bench: setup
	$(PY) bench/registry_rpc.py
	$(PY) bench/sandbox.py
	$(PY) bench/run_overhead.py

.PHONY: help setup sandbox-deps setup-test run proto contract-baseline format lint typecheck test bench
