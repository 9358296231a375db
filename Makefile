# Two entry points, both usable on a fresh clone with nothing but Python 3.11 (Linux x86_64) and make:
#   make repro   set everything up, then run the whole default DAG (dvc repro)
#   make test    set everything up, then run the test suite
# Set-up installs exactly requirements.lock (every package, exact version, sha256-checked), then the
# project itself without dependencies. After changing dependencies in pyproject.toml:
#   make lock    re-resolve requirements.lock (keeps every pin it can; `make lock LOCK_FLAGS=--upgrade`
#                moves everything to the newest allowed versions), then commit it with pyproject.toml
VENV ?= .venv
# the lock is resolved for CPython 3.11: prefer python3.11 when it is on PATH
PYTHON ?= $(shell command -v python3.11 2>/dev/null || echo python3)
LOCK := requirements.lock
# the pip that installs the lock, so that the same wheels are picked whatever pip the Python bundles
PIP_VERSION := 26.3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)

# Everything `make lock` passes to the resolver: the target (Linux x86_64, CPython 3.11, PyPI only, so
# torch's CUDA wheels are locked too) and the header comment that names the command to rerun.
UV_COMPILE = $(BIN)/uv pip compile pyproject.toml --extra dev --extra postgres --python-version 3.11 \
	--python-platform x86_64-manylinux_2_28 --index-url https://pypi.org/simple --generate-hashes \
	--custom-compile-command 'make lock' --quiet $(LOCK_FLAGS)

.PHONY: setup repro test lint bench lock lock-check

$(STAMP): $(LOCK) pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -c 'import sys; sys.version_info[:2] == (3, 11) or print("warning: $(LOCK) is resolved for Python 3.11, $(VENV) has " + sys.version.split()[0])'
	$(BIN)/python -m pip install --quiet 'pip==$(PIP_VERSION)'
	$(BIN)/python -m pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@$(BIN)/python -m pip check >/dev/null || { $(BIN)/python -m pip check; \
		echo "$(LOCK) does not satisfy pyproject.toml: run 'make lock' and commit $(LOCK)"; exit 1; }
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

# Needs only a venv and uv (in the dev extra; installed at the locked version when missing), not a
# set-up that matches the lock, since the lock is what it rewrites.
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	test -x $(BIN)/uv || $(BIN)/python -m pip install --quiet "$$(grep -m1 -o '^uv==[^ ]*' $(LOCK) 2>/dev/null || echo uv)"
	$(UV_COMPILE) -o $(LOCK)

# Fails when pyproject.toml changed without `make lock` (resolves a copy of the lock, then compares).
lock-check: setup
	cp $(LOCK) $(VENV)/lock-check.txt
	$(UV_COMPILE) -o $(VENV)/lock-check.txt
	diff -u $(LOCK) $(VENV)/lock-check.txt || { echo "$(LOCK) is stale: run 'make lock' and commit it"; exit 1; }
