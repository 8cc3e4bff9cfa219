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
DEV_STAMP := $(VENV)/.installed-dev
TEST_STAMP := $(VENV)/.installed-test

.PHONY: run test test-busy lint train bench cluster

run: $(RUN_STAMP)
	$(PY) app.py

test: $(TEST_STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

# The suite as on a loaded machine: stress-ng keeps $(BUSY_CPU_HOGS) CPU hogs running beside
# `make test` for its whole duration (Debian: apt-get install stress-ng); exits with its status.
BUSY_CPU_HOGS ?= 2

test-busy: $(TEST_STAMP)
	@command -v stress-ng >/dev/null || { echo "make test-busy needs stress-ng (apt-get install stress-ng)" >&2; exit 1; }
	@stress-ng --cpu $(BUSY_CPU_HOGS) --quiet & hog=$$!; \
	trap 'kill $$hog 2>/dev/null' EXIT INT TERM; \
	echo "== $(BUSY_CPU_HOGS) CPU hogs (stress-ng, pid $$hog) run beside make test"; \
	$(MAKE) --no-print-directory test; status=$$?; \
	kill $$hog 2>/dev/null; wait $$hog 2>/dev/null; \
	echo "== make test-busy: make test exited with $$status"; \
	exit $$status

lint: $(TEST_STAMP)
	$(PY) -m ruff check .

train: $(RUN_STAMP)
	$(PY) -m development.train

bench: $(DEV_STAMP)
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
