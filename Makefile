# The two commands a new machine needs: `make demo` and `make test`. Everything else is a convenience.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-unit lint bench services clean

EXTRAS ?= dev,torch,skops,embeddings,generative

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, exactly pinned, so nothing that depends on it pulls a CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[$(EXTRAS)]'
	touch $(STAMP)

install: $(STAMP)

## Register, load, serve and stop a real model on a fleet started from nothing (Redis and workers included).
demo: install
	$(BIN)/python -m harness.demo

## The whole suite against real redis-server, PostgreSQL and worker processes (installed with apt-get if absent).
test: install services
	$(BIN)/python -m pytest

test-unit: install
	$(BIN)/python -m pytest tests/unit

services:
	bash scripts/ensure-services.sh

## ruff (rules and formatting) and mypy: strict on the pure core, normal on the edges ([tool.mypy] in pyproject.toml).
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: install
	$(BIN)/python -m bench.dispatch

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache *.egg-info
