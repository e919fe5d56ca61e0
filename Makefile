SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV := .venv
PY := $(VENV)/bin/python
BUF := .tools/node_modules/.bin/buf
BUF_VERSION := 1.75.0
# The TypeScript client's toolchain (clients/typescript/package-lock.json pins it).
TS_CLIENT := clients/typescript
TS_DEPS := $(TS_CLIENT)/node_modules/.installed
# torch is pinned to 2.13.0's CPU build: where a local wheel directory holds it
# (/opt/wheels on these machines), pip takes it from there, not a CUDA build from PyPI.
TORCH_WHEELS := $(if $(wildcard /opt/wheels/torch-2.13.0+cpu-*.whl),--find-links /opt/wheels)
# Stamp files make setup a no-op when nothing it depends on changed.
SETUP_STAMP := $(VENV)/.installed

help:
	@echo "make run     set everything up, bring the mesh up behind Envoy, apply examples/agents.json, run the triage agent once"
	@echo "make test    every check: generated-code drift, buf lint/breaking, ruff, mypy, the test suite"
	@echo "make bench   benchmarks, each printing its ratio to a floor measured in the same run"
	@echo "make proto   regenerate agentmesh/gen from protos/"
	@echo "make contract  build/agentmesh.binpb (descriptor set) and build/openapi.json (REST API)"
	@echo "make format  ruff format + fixes"

setup: $(SETUP_STAMP) sandbox-deps

# The sandbox user code runs in (agentmesh/sandbox.py): Debian's bubblewrap.
sandbox-deps:
	@command -v bwrap >/dev/null 2>&1 || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap; }

$(SETUP_STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_WHEELS) -e '.[dev]'
	touch $@

# What only the tests and contract checks need: Postgres binaries, the buf CLI and
# the TypeScript client's node packages.
setup-test: setup $(BUF) $(TS_DEPS)
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; }

$(BUF):
	npm install --silent --no-fund --no-audit --prefix .tools @bufbuild/buf@$(BUF_VERSION)

# Exactly the lock file's versions; --prefer-offline reuses npm's cache when it can.
$(TS_DEPS): $(TS_CLIENT)/package.json $(TS_CLIENT)/package-lock.json
	npm ci --silent --no-fund --no-audit --prefer-offline --prefix $(TS_CLIENT)
	touch $@

# The contract as build outputs: the descriptor set (what Envoy's transcoder and any
# gRPC tool reads) and the REST API's OpenAPI 3.1 description made from it.
contract: setup-test
	mkdir -p build
	$(BUF) build --as-file-descriptor-set -o build/agentmesh.binpb
	$(PY) tools/openapi.py build/agentmesh.binpb -o build/openapi.json

# The TypeScript example against a running mesh (make run): generates the stubs first.
ts-example: setup-test
	cd $(TS_CLIENT) && npm run --silent generate && \
	  AGENTMESH_API_KEY="$${AGENTMESH_API_KEY:-$$(cat ../../.agentmesh/admin.key)}" npm run --silent example

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
	$(PY) bench/files.py
	$(PY) bench/guardrail_gate.py
	$(PY) bench/traces.py

.PHONY: help setup sandbox-deps setup-test run proto contract-baseline contract ts-example format lint typecheck test bench
