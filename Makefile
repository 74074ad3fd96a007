# Two commands matter: `make run` and `make test`.  Everything they need is installed here.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= config/webhookbus.yaml

.PHONY: run test test-deps install check bench bench-deps chaos clean

$(STAMP): pyproject.toml $(wildcard plugins/*/pyproject.toml)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[fast,test]' $(foreach p,$(wildcard plugins/*/pyproject.toml),-e ./$(dir $(p)))
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/webhookbus dev --config $(CONFIG) --policy config/authgear_policy.py:decide

test: $(STAMP) test-deps
	$(BIN)/python -m pytest -q

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

# The load generator from Debian, the profiler and mypyc (bench/compiled.py) into the venv, the Express baseline from npm.
bench-deps: $(STAMP)
	@command -v wrk >/dev/null || { apt-get update -q && apt-get install -y -q --no-install-recommends wrk; }
	$(BIN)/pip install -q 'py-spy>=0.4' 'mypy>=1.10'
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
	rm -rf $(VENV) .pytest_cache
