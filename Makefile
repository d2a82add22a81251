# DeltaNN. `make run` and `make test` do all the set-up themselves (they depend on `setup`).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
OUT    ?= results/quickstart

.PHONY: setup run report test test-slow test-all test-fleet bench bench-fleet clean

setup: $(STAMP)

# Idempotent: rebuilt only when pyproject.toml changes (or the venv is missing).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip wheel setuptools
	$(PY) -m pip install -q -e '.[dev]'
	# Converters whose exact pins would downgrade TF/torch/onnx (NOTES.md): without deps;
	# their real dependencies are in pyproject.toml.
	$(PY) -m pip install -q --no-deps onnx2tf==1.29.24 onnx2torch==1.5.15 tf-keras==2.21.0
	touch $(STAMP)

run: setup
	$(VENV)/bin/deltann run studies/quickstart.toml --out $(OUT)
	$(VENV)/bin/deltann report $(OUT)

report: setup
	$(VENV)/bin/deltann report $(OUT)

test: setup
	$(VENV)/bin/pytest -q

test-slow: setup
	$(VENV)/bin/pytest -q -m slow

test-all: setup
	$(VENV)/bin/pytest -q -m "slow or not slow"

# The container and launcher tests on a real engine, none skipped: starts a private Docker
# engine (cluster/engine.sh, needs root), builds the x86-cpu image, runs the tests (the
# loopback launcher in its own namespace) and stops everything.
test-fleet: setup
	PY=$(PY) cluster/test-fleet.sh

bench: setup
	$(PY) bench/quickstart.py

bench-fleet: setup
	$(PY) bench/fleet.py

clean:
	rm -rf results .pytest_cache
