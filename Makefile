# airgap: make demo | make test | make lint | make clean
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: venv demo test lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

## keygen, pack, verify and install a locally generated sample image, and show the result
demo: $(STAMP)
	$(BIN)/python scripts/demo.py

## the test suite, against a real Docker engine (a private one is started when none is reachable)
test: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check airgap tests scripts
	$(BIN)/ruff format --check airgap tests scripts
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info
