# airgap: make demo | make test | make unit | make lint | make man | make clean
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
SIZE ?= 5GB
ROUNDS ?= 3
# installs (as root, with apt) or names what this host lacks for a target; .ci/run uses it too
SETUP_HOST ?= sh scripts/setup-host

.PHONY: venv demo test unit lint man bench wheelhouse clean

$(STAMP): pyproject.toml
	@$(SETUP_HOST) venv
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

## keygen, pack, verify and install a locally generated sample image, and show the result
demo: $(STAMP)
	@$(SETUP_HOST) demo
	@$(BIN)/python scripts/demo.py

## the whole test suite: tests/unit and tests/integration, against a real Docker engine (a private one is
## started when none is reachable), the distribution registry and the tools .ci/run installs
test: $(STAMP)
	@$(SETUP_HOST) test
	$(BIN)/pytest $(PYTEST_ARGS)

## the unit tests alone: no Docker, no registry, no tools beyond Python; under a minute
unit: $(STAMP)
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

## airgap against docker save/load, zstd, split and sha256sum on a seed-shaped image: make bench SIZE=20GB
bench: $(STAMP)
	$(BIN)/python scripts/bench --size $(SIZE) --rounds $(ROUNDS)

## airgap and its dependencies as wheels (CPython 3.10-3.13, x86_64 and aarch64) for pack --wheelhouse
wheelhouse: $(STAMP)
	$(BIN)/python -c 'import pathlib, sys; from airgap._internal.format import wheelhouse; print(len(wheelhouse.build(pathlib.Path(sys.argv[1]))), "wheels in", sys.argv[1])' dist/wheelhouse

## the man pages, airgap(1) and airgap-COMMAND(1), from the click commands: their help, options and examples
man: $(STAMP)
	$(BIN)/python -m airgap._cli.manpage docs/man

lint: $(STAMP)
	$(BIN)/ruff check airgap tests scripts
	$(BIN)/ruff format --check airgap tests scripts
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .demo bench-out dist build .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info
