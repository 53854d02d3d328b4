# `make demo` sets everything up and runs the main job on the embedded sample;
# `make test` sets everything up and runs lint, type checks and the test suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# axe-core for the page's accessibility check, from the npm registry into an ignored folder.
AXE_VERSION := 4.14.1
AXE := .cache/axe/node_modules/axe-core/axe.min.js

.PHONY: setup demo test lint bench clean constraints

setup: $(STAMP)

# torch is pinned here, before the package, so pip takes the local CPU build instead of
# pulling gigabytes of CUDA packages; the package itself accepts any torch >= 2.1.
# constraints.txt holds the versions CI passed with, so that a fresh clone installs the same.
$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# Without npm (or the registry) the page's accessibility check is skipped, with a line saying so.
$(AXE):
	@if command -v npm >/dev/null; then \
		npm install --silent --prefix .cache/axe --no-save --no-audit --no-fund \
			axe-core@$(AXE_VERSION) || echo "make: axe-core not installed: the page's accessibility check will be skipped"; \
	else echo "make: npm not found: the page's accessibility check will be skipped"; fi

# After a change of dependencies: the venv's versions (minus the project) become the constraints.
constraints: setup
	{ sed -n '1,3p' constraints.txt; $(BIN)/pip freeze --exclude-editable | sed 's/+cpu$$//'; } > constraints.tmp
	mv constraints.tmp constraints.txt

demo: setup
	$(BIN)/discourse-rl run --out runs/demo

lint: setup
	$(BIN)/ruff check src tests benchmarks experiments tools
	$(BIN)/ruff format --check src tests benchmarks experiments tools
	$(BIN)/mypy
	# the layer contract: imports only point down, no import cycles (tests/test_layers.py)
	$(BIN)/pytest -q tests/test_layers.py -k 'point_down or cycles or say_why'

test: lint $(AXE)
	$(BIN)/pytest

bench: setup
	$(BIN)/python -m benchmarks.metric

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis .cache
