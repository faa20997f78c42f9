# The two commands: `make demo` runs the workbench end to end offline; `make test` checks the code
# (`make lint`) and runs every test. Both create (or reuse) the virtual environment in .venv.
# `make test-fast` runs the fast tier (tests marked unit) for the edit-and-test loop.

VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
PYTHON  ?= python3

export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 90

.PHONY: demo test test-fast lint docs docs-serve bench bench-quick install browser clean up down

install: $(STAMP)

# torch first, pinned: a bare torch requirement would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/itm demo

# The browser test needs Debian's chromium: installed when missing (as root, or with password-less sudo).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	    SUDO=""; [ "$$(id -u)" = 0 ] || SUDO="sudo -n"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    $$SUDO apt-get update -q </dev/null && \
	    $$SUDO apt-get install -y -q --no-install-recommends chromium </dev/null; }

# ruff (lint and format), mypy and import-linter (the layers), as configured in pyproject.toml
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# the documentation site (MkDocs, Material): strict, so a broken link or reference fails
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

test: lint docs browser
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m unit

bench: $(STAMP)
	$(PY) -m benchmarks.run

bench-quick: $(STAMP)
	$(PY) -m benchmarks.run --quick --out $(CURDIR)/.itm/bench-quick

up: $(STAMP)
	$(VENV)/bin/itm up

down:
	$(VENV)/bin/itm down

clean:
	rm -rf .itm .prefect mlruns mlflow.db site
