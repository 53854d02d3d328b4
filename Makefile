# `make demo` sets everything up and runs the main job on the embedded sample;
# `make test` sets everything up and runs lint, type checks and the test suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

# torch is pinned here, before the package, so pip takes the local CPU build instead of
# pulling gigabytes of CUDA packages; the package itself accepts any torch >= 2.1.
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(BIN)/discourse-rl run --out runs/demo

lint: setup
	$(BIN)/ruff check src tests benchmarks experiments tools
	$(BIN)/ruff format --check src tests benchmarks experiments tools
	$(BIN)/mypy
	# the layer contract: imports only point down, no import cycles (tests/test_layers.py)
	$(BIN)/pytest -q tests/test_layers.py -k 'point_down or cycles or say_why'

test: lint
	$(BIN)/pytest

bench: setup
	$(BIN)/python -m benchmarks.metric

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
