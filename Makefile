# One command each: `make run` starts the app, `make test` runs lint and the whole test suite,
# `make cluster REPLICAS=2` runs Redis, 2 server replicas and nginx on loopback. Both stop
# everything, without a traceback or an error from make, on Ctrl-C and on SIGINT or SIGTERM sent
# to the make process alone (see fhe_server/make_parent.py).
# Both create .venv with Python 3.11 on first use and install the pinned requirements into it
# (about 6 GB, a few minutes); later runs reinstall only when a requirements file changed.
# Both also create .venv-threeparty for the three-party (OpenFHE) engine, on the Python that
# openfhe's wheel for this machine imports on: Python 3.12 with openfhe 1.6.1.0.24.4 where the
# system is new enough (glibc >= 2.38 and GLIBCXX_3.4.32, e.g. Debian 13), else Python 3.10 with
# openfhe 1.6.1.0.22.4 (Debian 12); see README, "Environment: a second Python for OpenFHE".
# Without either, `make run` still starts the single-key mode; `make test` then skips the
# three-party suite with a warning, except under REQUIRE_THREEPARTY=1 (CI), where that is a failure.

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

# The three-party engine's pair, chosen each time make runs: Python 3.12 + openfhe 1.6.1.0.24.4
# where a Python 3.12 is found and the system's glibc is >= 2.38 and its libstdc++ has
# GLIBCXX_3.4.32 (what that wheel's binary needs), else Python 3.10 + openfhe 1.6.1.0.22.4 (its
# binary imports on 3.10 only). requirements-threeparty.txt picks the openfhe pin by Python version.
# THREEPARTY_PYTHON=3.10 forces the 3.10 pair. If the 3.12 environment cannot be made or openfhe
# does not import in it, the recipe falls back to the 3.10 pair and says so. Each Python is
# pyenv's (through `pyenv root` or in ~/.pyenv: 3.10.13, the newest 3.12.x) when present, else
# python3.10 / python3.12 on PATH.
THREEPARTY_PYTHON ?= auto
, := ,
PYENV_DIRS := $(sort $(shell pyenv root 2>/dev/null) $(HOME)/.pyenv)
PYTHON_THREEPARTY_310 ?= $(firstword $(wildcard $(addsuffix /versions/3.10.13/bin/python3.10,$(PYENV_DIRS))) $(shell command -v python3.10 2>/dev/null))
TP_PYENV_312 := $(lastword $(sort $(wildcard $(addsuffix /versions/3.12.*/bin/python3.12,$(PYENV_DIRS)))))
PYTHON_THREEPARTY_312 ?= $(or $(TP_PYENV_312),$(shell command -v python3.12 2>/dev/null))
TP_GLIBC := $(shell getconf GNU_LIBC_VERSION 2>/dev/null | sed -n 's/^glibc //p')
TP_GLIBC_OK := $(shell printf '2.38\n%s\n' '$(TP_GLIBC)' | sort -V -C 2>/dev/null && echo yes)
TP_LIBSTDCXX := $(firstword $(shell { /sbin/ldconfig -p || ldconfig -p; } 2>/dev/null | awk '/libstdc\+\+\.so\.6 /{print $$NF}') $(wildcard /usr/lib/x86_64-linux-gnu/libstdc++.so.6 /usr/lib64/libstdc++.so.6))
TP_GLIBCXX_OK := $(if $(TP_LIBSTDCXX),$(shell grep -qa GLIBCXX_3\.4\.32 '$(TP_LIBSTDCXX)' && echo yes))
TP_NOT_312 := $(strip \
    $(if $(filter 3.10,$(THREEPARTY_PYTHON)),THREEPARTY_PYTHON=3.10;) \
    $(if $(PYTHON_THREEPARTY_312),,no Python 3.12 (pyenv 3.12.x or python3.12);) \
    $(if $(TP_GLIBC_OK),,glibc $(or $(TP_GLIBC),of unknown version) is older than 2.38;) \
    $(if $(TP_GLIBCXX_OK),,the system libstdc++ ($(or $(TP_LIBSTDCXX),not found)) lacks GLIBCXX_3.4.32;))
TP_WANT := $(if $(TP_NOT_312),3.10,3.12)
TP_WHY := $(or $(TP_NOT_312),$(PYTHON_THREEPARTY_312) found$(,) glibc $(TP_GLIBC) and GLIBCXX_3.4.32 in $(TP_LIBSTDCXX))
TP_VENV ?= .venv-threeparty
TP_PY := $(TP_VENV)/bin/python
TP_STAMP := $(TP_VENV)/.installed
# Names the pair wanted when .venv-threeparty was made; a different choice (a new machine, a
# new Python) has no such file yet, so the environment is made again.
TP_WANTS := $(TP_VENV)/.wants-python$(TP_WANT)

.PHONY: run test test-busy test-threeparty threeparty-env lint train bench bench-threeparty fuzz-threeparty cluster

run: $(RUN_STAMP)
	@$(MAKE) --no-print-directory threeparty-env || \
	    echo "make run: the three-party mode is not available (no Python 3.10 or 3.12 with openfhe); the single-key mode runs" >&2
	$(PY) app.py

# The main suite (Python 3.11, .venv), then the three-party suite (.venv-threeparty, 3.12 or 3.10):
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
	    echo "make test: WARNING: three-party suite NOT run (no Python 3.10 or 3.12 with openfhe)" >&2; \
	fi

threeparty-env: $(TP_STAMP)
	@echo "three-party engine: $$(cat $(TP_STAMP))"

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

# tp_env PYTHON VERSION: .venv-threeparty on that Python (an environment on another Python is
# removed first), the pinned requirements, and `import openfhe` as the proof.
TP_ENV_FN = tp_env() { \
	    have=$$($(TP_PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null); \
	    if [ "$$have" != "$$2" ] && { [ -e $(TP_VENV) ] || [ -L $(TP_VENV) ]; }; then \
	        echo "three-party engine: removing $(TP_VENV) (Python $${have:-unusable}, want $$2)"; \
	        rm -rf $(TP_VENV) || return 1; \
	    fi; \
	    { test -x $(TP_PY) || "$$1" -m venv $(TP_VENV); } && \
	    $(TP_PY) -m pip install --progress-bar off --quiet pip==$(PIP_VERSION) && \
	    $(TP_PY) -m pip install --progress-bar off -r requirements-threeparty.txt && \
	    OMP_NUM_THREADS=1 $(TP_PY) -c "import openfhe"; \
	}

$(TP_WANTS):
	@:

$(TP_STAMP): requirements-threeparty.txt $(TP_WANTS)
	@$(TP_ENV_FN); \
	pair=; why='$(subst ','\'',$(TP_WHY))'; why=$${why%;}; \
	if [ "$(TP_WANT)" = 3.12 ]; then \
	    echo "three-party engine: Python 3.12 + openfhe 1.6.1.0.24.4 ($$why)"; \
	    if tp_env "$(PYTHON_THREEPARTY_312)" 3.12; then pair="Python 3.12 + openfhe 1.6.1.0.24.4"; \
	    else \
	        why="FALLBACK: the Python 3.12 environment could not be made or openfhe did not import in it (see above)"; \
	        echo "three-party engine: $$why; trying Python 3.10 + openfhe 1.6.1.0.22.4" >&2; \
	    fi; \
	else \
	    echo "three-party engine: Python 3.10 + openfhe 1.6.1.0.22.4 (no 3.12 pair: $$why)"; \
	fi; \
	if [ -z "$$pair" ]; then \
	    test -n "$(PYTHON_THREEPARTY_310)" || { echo "no Python 3.10 found (pyenv 3.10.13 or python3.10)" >&2; exit 1; }; \
	    tp_env "$(PYTHON_THREEPARTY_310)" 3.10 || { echo "three-party engine: the Python 3.10 environment could not be made or openfhe did not import in it (see above; openfhe loads the system's libgomp.so.1: apt-get install libgomp1)" >&2; exit 1; }; \
	    pair="Python 3.10 + openfhe 1.6.1.0.22.4"; why="no 3.12 pair: $$why"; \
	fi; \
	rm -f $(TP_VENV)/.wants-python*; touch $(TP_WANTS); \
	echo "$$pair ($$why)" > $@
