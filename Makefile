# One command each: `make run` starts the app, `make test` runs lint and the whole test suite.
# Both create .venv with Python 3.11 on first use and install the pinned requirements into it
# (about 6 GB, a few minutes); later runs reinstall only when a requirements file changed.

PYTHON ?= python3.11
VENV ?= .venv
PIP_VERSION ?= 26.3
PYTEST_ARGS ?=

PY := $(VENV)/bin/python
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev
TEST_STAMP := $(VENV)/.installed-test

.PHONY: run test lint train bench

run: $(RUN_STAMP)
	$(PY) app.py

test: $(TEST_STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(TEST_STAMP)
	$(PY) -m ruff check .

train: $(RUN_STAMP)
	$(PY) -m development.train

bench: $(DEV_STAMP)
	$(PY) -m development.benchmark

PIP_INSTALL := $(PY) -m pip install --progress-bar off

$(PY):
	$(PYTHON) -m venv $(VENV)

$(RUN_STAMP): requirements.txt | $(PY)
	$(PIP_INSTALL) --quiet pip==$(PIP_VERSION)
	$(PIP_INSTALL) -r requirements.txt
	touch $@

# The development requirements include the runtime ones (tqdm and psutil for the benchmark).
$(DEV_STAMP): requirements.txt requirements-dev.txt | $(PY)
	$(PIP_INSTALL) --quiet pip==$(PIP_VERSION)
	$(PIP_INSTALL) -r requirements-dev.txt
	touch $(RUN_STAMP) $@

# The test requirements include the development ones, so this also satisfies `make run` and
# `make bench`.
$(TEST_STAMP): requirements.txt requirements-dev.txt requirements-test.txt | $(PY)
	$(PIP_INSTALL) --quiet pip==$(PIP_VERSION)
	$(PIP_INSTALL) -r requirements-test.txt
	touch $(RUN_STAMP) $(DEV_STAMP) $@
