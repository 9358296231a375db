# Two entry points, both usable on a fresh clone with nothing but Python 3.11+:
#   make repro   set everything up, then run the whole default DAG (dvc repro)
#   make test    set everything up, then run the test suite
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup repro test lint bench

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

repro: setup
	dvc repro

test: setup
	python -m pytest -q

lint: setup
	ruff check src stages tests benchmarks

bench: setup
	python benchmarks/bench_depth.py
