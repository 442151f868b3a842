# Developer tasks; .ci/run calls `make check` with VENV=.ci-venv.
#
#   make install     create $(VENV) and install nbqueue in editable mode with $(EXTRAS)
#   make lint        ruff check + ruff format --check
#   make typecheck   mypy (strict on nbqueue/, see pyproject.toml)
#   make test        pytest: tests/ and the notebooks/ (nbval); the browser test needs
#                    /usr/bin/chromium (extra arguments: make test PYTEST_ARGS="-k cli -x")
#   make check       lint + typecheck + test
#   make quickstart  install the core alone, then run examples/quickstart.py (in-memory broker)
#   make reliability       the reliability suite at CI size (tests/reliability, ~6 min)
#   make reliability-full  the whole reliability plan (NBQUEUE_RELIABILITY=full, ~15 min)
#   make bench       benchmarks beside Dramatiq on memory, Redis and RabbitMQ (~12 min; --quick: 2)
#   make format      apply ruff's fixes and formatting

VENV ?= .venv
PYTHON ?= python3
EXTRAS ?= dev
PYTEST_ARGS ?=
BIN := $(VENV)/bin

# Python sources only: ruff would also reformat the code blocks of Markdown files.
PY_PATHS := $(wildcard nbqueue tests examples benchmarks)

.PHONY: install lint typecheck test check quickstart format reliability reliability-full bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/python -m pip install --disable-pip-version-check --quiet -e '.[$(EXTRAS)]'

lint:
	$(BIN)/ruff check $(PY_PATHS)
	$(BIN)/ruff format --check $(PY_PATHS)

typecheck:
	$(BIN)/mypy

test:
	$(BIN)/python -m pytest $(PYTEST_ARGS)

check: lint typecheck test

reliability:
	$(BIN)/python -m pytest tests/reliability -q $(PYTEST_ARGS)

reliability-full:
	NBQUEUE_RELIABILITY=full $(BIN)/python -m pytest tests/reliability -q $(PYTEST_ARGS)

bench:
	$(BIN)/python -m pip install --disable-pip-version-check --quiet -r benchmarks/requirements.txt
	$(BIN)/python benchmarks/bench.py --rounds 3

quickstart: $(BIN)/python
	$(BIN)/python -m pip install --disable-pip-version-check --quiet -e .
	$(BIN)/python examples/quickstart.py

format:
	$(BIN)/ruff check --fix $(PY_PATHS)
	$(BIN)/ruff format $(PY_PATHS)
