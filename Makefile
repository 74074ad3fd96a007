# Two commands matter: `make run` and `make test`.  Everything they need is installed here.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= config/webhookbus.yaml
PLUGINS := $(foreach p,$(wildcard plugins/*/pyproject.toml),-e ./$(dir $(p)))
# The compiled build: setup.py compiles the request path with mypyc (WEBHOOKBUS_COMPILE=1).
COMPILED := .venv-compiled
COMPILED_STAMP := $(COMPILED)/.installed
# The suite on each: PYTHONSAFEPATH keeps this directory off sys.path, so the compiled run and every
# listener it starts import the compiled package, not ./webhookbus (tests/test_compiled.py checks).
PYTEST_SOURCE := $(BIN)/python -m pytest -q
PYTEST_COMPILED := PYTHONSAFEPATH=1 WEBHOOKBUS_EXPECT_COMPILED=1 $(COMPILED)/bin/pytest -q -p no:cacheprovider

.PHONY: run test test-source test-compiled test-deps install compiled check bench bench-deps chaos clean

$(STAMP): pyproject.toml $(wildcard plugins/*/pyproject.toml)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[fast,test]' $(PLUGINS)
	touch $(STAMP)

install: $(STAMP)

# A venv of its own, not editable (an editable install would keep running stale C extensions
# after a source edit), rebuilt whenever a source changes: ~35 s of mypyc and gcc.
$(COMPILED_STAMP): setup.py pyproject.toml $(shell find webhookbus -name '*.py') $(wildcard plugins/*/pyproject.toml)
	$(PYTHON) -m venv $(COMPILED)
	$(COMPILED)/bin/pip install -q --upgrade pip
	$(COMPILED)/bin/pip install -q 'mypy>=2.4,<3' 'setuptools>=77' '.[fast,test]' $(PLUGINS)
	WEBHOOKBUS_COMPILE=1 $(COMPILED)/bin/pip install -q --no-build-isolation --no-deps --force-reinstall .
	touch $(COMPILED_STAMP)

compiled: $(COMPILED_STAMP)

run: $(STAMP)
	$(BIN)/webhookbus dev --config $(CONFIG) --policy config/authgear_policy.py:decide

# The suite twice: on the source (the editable install), then on the compiled build.  One after
# the other: run at once (half the time), a kafka-python deadline test failed in two of four runs
# (a publish to a SIGSTOPped broker acked; cause not found), which it never did alone.
# Without a C compiler or Python's headers there is no compiled build: the suite runs on the source only.
CAN_COMPILE := $(shell { command -v cc || command -v gcc; } >/dev/null && $(PYTHON) -c "import os, sys, sysconfig; \
	sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))" && echo yes)
ifneq ($(CAN_COMPILE),yes)
test: test-source
	@echo "no C compiler or no Python headers: the suite ran on the source only, not on the compiled build"
else
test: test-source test-compiled
endif

test-source: $(STAMP) test-deps
	$(PYTEST_SOURCE)

test-compiled: $(COMPILED_STAMP) test-deps
	$(PYTEST_COMPILED)

# Debian's redis-server: the Redis dedup store's tests start their own (make run needs none).
# Debian's chromium: tests/test_status_page.py loads the admin status page in it, headless; where it
# cannot be installed (not root, no apt) that one test is skipped, saying why.
test-deps:
	@command -v redis-server >/dev/null || { apt-get update -q && apt-get install -y -q --no-install-recommends redis-server; }
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		apt-get update -q && apt-get install -y -q --no-install-recommends chromium; } || \
		echo "no chromium (not root, or no apt): the status page browser test will be skipped"

check: $(STAMP)
	$(BIN)/webhookbus check --config $(CONFIG)

# The load generator from Debian, the profiler into the venv, the Express baseline from npm.
bench-deps: $(STAMP) $(COMPILED_STAMP)
	@command -v wrk >/dev/null || { apt-get update -q && apt-get install -y -q --no-install-recommends wrk; }
	$(BIN)/pip install -q 'py-spy>=0.4'
	cd bench/baselines/express && npm ci --no-audit --no-fund --loglevel=error

# One run of every contender, side by side; BENCH_ARGS="--seconds 5" etc., see bench/README.md.
bench: bench-deps
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# The latency a blocking hook answered from Kafka adds (route reply); HOOK_ARGS="--rate 200 --seconds 30".
bench-hook: $(STAMP)
	$(BIN)/python bench/blocking_hook.py $(HOOK_ARGS)

# Broker restarts and SIGKILLs under load (`make test` runs a short form), a full spool disk
# (a 1 MiB tmpfs, when mount is allowed), a 3-minute broker stall with RSS. See bench/chaos.py,
# bench/diskfull.py, bench/stall.py.
chaos: $(STAMP)
	$(BIN)/python bench/chaos.py --events 20000 --cycles 6 $(CHAOS_ARGS)
	$(BIN)/python bench/diskfull.py
	$(BIN)/python bench/stall.py --stall 180

clean:
	rm -rf $(VENV) $(COMPILED) build .pytest_cache
