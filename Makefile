# Two commands matter: `make run` and `make test`.  Everything they need is installed here.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= config/webhookbus.yaml

.PHONY: run test install check bench bench-deps chaos clean

$(STAMP): pyproject.toml $(wildcard plugins/*/pyproject.toml)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]' $(foreach p,$(wildcard plugins/*/pyproject.toml),-e ./$(dir $(p)))
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/webhookbus dev --config $(CONFIG)

test: $(STAMP)
	$(BIN)/python -m pytest -q

check: $(STAMP)
	$(BIN)/webhookbus check --config $(CONFIG)

clean:
	rm -rf $(VENV) .pytest_cache
