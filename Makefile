# persistent-agent — the one front door. `make` (or `make help`) lists the targets.

.DEFAULT_GOAL := help
SHELL := /bin/bash

VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
VENV ?= .venv
PY := $(VENV)/bin/python
ADMIN := $(VENV)/bin/persistent-agent-admin
SENTINEL_PORT ?= 8000
PYTEST_ARGS ?=
export SENTINEL_PORT

# Docker (see docker-compose.yml). PYTHON_IMAGE is the base image to build on.
PYTHON_IMAGE ?= python:3.12-slim
IMAGE ?= persistent-agent:$(VERSION)
BASE_IMAGE_TAG ?= persistent-agent-base:trixie
export PERSISTENT_AGENT_IMAGE := $(IMAGE)
export UID_GID := $(shell id -u):$(shell id -g)
COMPOSE ?= $(shell scripts/compose.sh)

.PHONY: help install init demo local-start local-run local-run-verbose local-stop local-status \
        test test-unit test-e2e test-docker lint bench clean \
        build base-image start stop run run-verbose logs status \
        verify inspect backup restore rotate-key

help: ## Show this list
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | \
	  awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

# ---------------------------------------------------------------- setup
$(VENV)/.installed: pyproject.toml
	@python=$$(PYTHON="$(PYTHON)" scripts/find_python.sh) || exit 1; \
	  echo "Using $$python ($$($$python --version))"; \
	  "$$python" -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

install: $(VENV)/.installed ## Create .venv (Python >= 3.12) and install the project

init: install ## Generate the master key and config/.env.* (keeps an existing key)
	@$(PY) scripts/gen_master_key.py

# ---------------------------------------------------------------- local processes
demo: init ## See it work: start locally, store, restart the agent, read it back, stop
	@$(ADMIN) demo

local-start: init ## Start sentinel + agent as local background processes (logs in run/)
	@$(ADMIN) local-start

local-run: install ## Run the client against the local sentinel
	@$(ADMIN) local-run

local-run-verbose: install ## Same, showing envelopes (FAME_SHOW_ENVELOPES=true)
	@$(ADMIN) local-run --verbose

local-stop: install ## Stop the local processes started by local-start
	@$(ADMIN) local-stop

local-status: install ## Show whether the local processes run
	@$(ADMIN) local-status

# ---------------------------------------------------------------- quality
test: install ## Run unit and end-to-end tests (real SQLCipher files, real processes)
	$(PY) -m pytest -m "not docker" $(PYTEST_ARGS)

test-unit: install ## Run only the unit tests
	$(PY) -m pytest -m "not docker and not e2e" $(PYTEST_ARGS)

test-e2e: install ## Run only the end-to-end tests (real sentinel and agent processes)
	$(PY) -m pytest -m "e2e" $(PYTEST_ARGS)

lint: install ## ruff on everything, mypy (strict) on src/
	$(VENV)/bin/ruff check src tests client scripts
	$(VENV)/bin/mypy

clean: ## Stop everything, then remove data/, generated config (keys) and run/
	@if [ -x $(ADMIN) ]; then $(ADMIN) local-stop; fi
	@if [ -n "$(COMPOSE)" ] && [ -f config/.env.agent ]; then $(COMPOSE) down --remove-orphans >/dev/null 2>&1 || true; fi
	rm -rf data run config/.env.sentinel config/.env.agent config/.env.client
