# One command each: `make run` starts the app, `make test` runs lint and the whole test suite,
# `make cluster REPLICAS=2` runs Redis, 2 server replicas and nginx on loopback. Both stop
# everything, without a traceback or an error from make, on Ctrl-C and on SIGINT or SIGTERM sent
# to the make process alone (see fhe_server/make_parent.py).
# Both create .venv with Python 3.11 on first use and install the pinned requirements into it
# (about 6 GB, a few minutes); later runs reinstall only when a requirements file changed.
# Both also create .venv-threeparty with Python 3.10 for the three-party (OpenFHE) engine, whose
# wheel imports on Python 3.10 only (see README, "Three-party mode"). Without Python 3.10,
# `make run` still starts the single-key mode; `make test` then skips the three-party suite with a
# warning, except under REQUIRE_THREEPARTY=1 (CI), where that is a failure.

PYTHON ?= python3.11
VENV ?= .venv
PIP_VERSION ?= 26.3
PYTEST_ARGS ?=
REPLICAS ?= 2
CLUSTER_PORT ?= 8080
# More options of `python -m fhe_server.cluster` (e.g. --redis-port 6390 --replica-port 8201).
CLUSTER_ARGS ?=

PY := $(VENV)/bin/python
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev
TEST_STAMP := $(VENV)/.installed-test

# Python 3.10 for the three-party engine: pyenv's 3.10.13 when present (found through `pyenv root`
# or in ~/.pyenv), else python3.10 on PATH.
PYTHON_THREEPARTY ?= $(firstword $(wildcard $(shell pyenv root 2>/dev/null)/versions/3.10.13/bin/python3.10 $(HOME)/.pyenv/versions/3.10.13/bin/python3.10) $(shell command -v python3.10 2>/dev/null))
TP_VENV ?= .venv-threeparty
TP_PY := $(TP_VENV)/bin/python
TP_STAMP := $(TP_VENV)/.installed

.PHONY: run test test-busy test-threeparty threeparty-env lint train bench bench-threeparty fuzz-threeparty cluster

run: $(RUN_STAMP)
	@$(MAKE) --no-print-directory threeparty-env || \
	    echo "make run: the three-party mode is not available (no Python 3.10 or openfhe); the single-key mode runs" >&2
	$(PY) app.py

# The main suite (Python 3.11, .venv), then the three-party suite (Python 3.10, .venv-threeparty):
# both always run; the target fails if either fails.
test: $(TEST_STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	@$(MAKE) --no-print-directory threeparty-env || \
	    echo "make test: no .venv-threeparty: the page's three-party tests will be skipped" >&2
	@main=0; $(PY) -m pytest $(PYTEST_ARGS) || main=$$?; \
	threeparty=0; $(MAKE) --no-print-directory test-threeparty || threeparty=$$?; \
	if [ $$main -ne 0 ] || [ $$threeparty -ne 0 ]; then \
	    echo "make test: FAILED (main suite exit $$main, three-party suite exit $$threeparty)" >&2; exit 1; \
	fi

# --confcutdir keeps the main suite's conftest (browser checks) out of this run.
test-threeparty:
	@if $(MAKE) --no-print-directory threeparty-env; then \
	    echo "== three-party suite ($(TP_PY))"; \
	    OMP_NUM_THREADS=1 $(TP_PY) -m pytest tests/threeparty --confcutdir=tests/threeparty $(PYTEST_ARGS); \
	elif [ "$$REQUIRE_THREEPARTY" = 1 ]; then \
	    echo "make test: REQUIRE_THREEPARTY=1 but .venv-threeparty could not be made" >&2; exit 1; \
	else \
	    echo "make test: WARNING: three-party suite NOT run (no Python 3.10 or openfhe)" >&2; \
	fi

threeparty-env: $(TP_STAMP)

bench-threeparty: $(TP_STAMP)
	OMP_NUM_THREADS=1 $(TP_PY) -m development.bench_threeparty

# Mutated OpenFHE blobs of every kind against a real three-party server (README, threat model).
fuzz-threeparty: $(TP_STAMP)
	OMP_NUM_THREADS=1 $(TP_PY) -m development.threeparty_fuzz

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
	$(PY) -m ruff format --check .

train: $(RUN_STAMP)
	$(PY) -m development.train

bench: $(DEV_STAMP)
	$(PY) -m development.benchmark

# Needs Debian's redis-server and nginx (apt-get install redis-server nginx).
cluster: $(RUN_STAMP)
	$(PY) -m fhe_server.cluster --replicas $(REPLICAS) --port $(CLUSTER_PORT) $(CLUSTER_ARGS)

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

$(TP_STAMP): requirements-threeparty.txt
	@test -n "$(PYTHON_THREEPARTY)" || { echo "no Python 3.10 found (pyenv 3.10.13 or python3.10)" >&2; exit 1; }
	test -x $(TP_PY) || $(PYTHON_THREEPARTY) -m venv $(TP_VENV)
	$(TP_PY) -m pip install --progress-bar off --quiet pip==$(PIP_VERSION)
	$(TP_PY) -m pip install --progress-bar off -r requirements-threeparty.txt
	OMP_NUM_THREADS=1 $(TP_PY) -c "import openfhe"
	touch $@
