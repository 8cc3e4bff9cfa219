# One command each: `make run` starts the app, `make test` runs lint and the whole test suite,
# `make cluster REPLICAS=2` runs Redis, 2 server replicas and nginx on loopback (Ctrl-C stops).
# Both create .venv with Python 3.11 on first use and install the pinned requirements into it
# (about 6 GB, a few minutes); later runs reinstall only when a requirements file changed.

PYTHON ?= python3.11
VENV ?= .venv
PIP_VERSION ?= 26.3
PYTEST_ARGS ?=
REPLICAS ?= 2
CLUSTER_PORT ?= 8080

PY := $(VENV)/bin/python
RUN_STAMP := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test

.PHONY: run test lint train bench cluster

run: $(RUN_STAMP)
	$(PY) app.py

test: $(TEST_STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(TEST_STAMP)
	$(PY) -m ruff check .

train: $(RUN_STAMP)
	$(PY) -m development.train

bench: $(RUN_STAMP)
	$(PY) -m development.benchmark

# Needs Debian's redis-server and nginx (apt-get install redis-server nginx).
cluster: $(RUN_STAMP)
	$(PY) -m fhe_server.cluster --replicas $(REPLICAS) --port $(CLUSTER_PORT)

PIP_INSTALL := $(PY) -m pip install --progress-bar off

$(PY):
	$(PYTHON) -m venv $(VENV)

$(RUN_STAMP): requirements.txt | $(PY)
	$(PIP_INSTALL) --quiet pip==$(PIP_VERSION)
	$(PIP_INSTALL) -r requirements.txt
	touch $@

# The test requirements include the runtime ones, so this also satisfies `make run`.
$(TEST_STAMP): requirements.txt requirements-test.txt | $(PY)
	$(PIP_INSTALL) --quiet pip==$(PIP_VERSION)
	$(PIP_INSTALL) -r requirements-test.txt
	touch $(RUN_STAMP) $@
