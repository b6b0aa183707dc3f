# The two ways in: `make run` (the main job on the embedded default) and `make test` (everything the tests need).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The sample ledger is dated around November 2026; pinning the clock keeps its reminders meaningful.
DEMO_NOW ?= 2026-11-24T16:30:00+01:00

.PHONY: run test lint bench install

$(BIN)/dunbot: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(BIN)/dunbot

run: install
	$(BIN)/dunbot ledger check
	$(BIN)/dunbot templates check
	$(BIN)/dunbot plan --now $(DEMO_NOW)
	$(BIN)/dunbot send --now $(DEMO_NOW)
	@echo "The reminders are in var/sent/new/ (one .eml file each); run 'make run' again: nothing is sent twice."

lint: install
	$(BIN)/ruff check .

test: install
	bash scripts/test-deps.sh
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

bench: install
	bash scripts/test-deps.sh
	$(BIN)/python -m bench.run
