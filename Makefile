# Set-up is part of every user-facing target: a fresh machine with only Python 3 gets a .venv,
# a current one is reused (the stamp is refreshed whenever pyproject.toml changes).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.nscl-installed
DEMO_DIR ?= runs/demo
DEMO_DATA ?= data/demo

.PHONY: setup demo detector test lint format bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m nscl demo --data-dir $(DEMO_DATA) --run-dir $(DEMO_DIR)

# the object detector for images without boxes, on the demo's data (run `make demo` first; about 24 minutes)
detector: $(STAMP)
	$(BIN)/python -m nscl train-detector --data-dir $(DEMO_DATA)/train-set/train --val-dir $(DEMO_DATA)/val-set/val \
		--run-dir runs/detector --threads 2

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache
