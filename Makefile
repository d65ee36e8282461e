# The two commands of the README: `make run` and `make test`. Both create .venv/ and install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test install install-test system-deps lint typecheck pytest jstest bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Reinstall when the project's metadata changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[redis,auth,client]'
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[redis,auth,client,test]'
	touch $(VENV)/.installed $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

system-deps:
	bash scripts/install-system-deps.sh

# `make run HOST=... PORT=...` passes flags; otherwise ssehub reads SSEHUB_HOST/SSEHUB_PORT (environment, .env) itself.
# Only values given on make's command line count: make imports environment variables as its own, and a HOST
# exported by the shell must not silently win over SSEHUB_HOST.
# The demo dashboard at / (SSEHUB_DEMO=false make run serves the API only).
run: export SSEHUB_DEMO ?= true
run: install
	$(BIN)/ssehub serve $(if $(filter command line,$(origin HOST)),--host $(HOST)) \
		$(if $(filter command line,$(origin PORT)),--port $(PORT))

lint: install-test
	$(BIN)/ruff check ssehub tests
	$(BIN)/ruff format --check ssehub tests

typecheck: install-test
	$(BIN)/mypy

pytest: install-test system-deps
	$(BIN)/pytest

# The browser client's unit tests: node's built-in runner (Debian's nodejs when node is missing), no npm packages.
jstest:
	bash scripts/install-system-deps.sh nodejs:node
	node --test tests/js/*.test.mjs

test: lint typecheck pytest jstest

-include bench/bench.mk

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
