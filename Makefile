# Agent Spaces developer commands. `make test` is the one test command (README, .ci/run).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The older Synapse of tests/e2e/test_room_versions.py (tests/conftest.py finds its python here).
SYNAPSE_OLD_VENV := .venv-synapse-old
PLUGIN_ID := $(shell sed -n 's/^id: *//p' maubot.yaml)
PLUGIN_VERSION := $(shell sed -n 's/^version: *//p' maubot.yaml)
MBP := dist/$(PLUGIN_ID)-v$(PLUGIN_VERSION).mbp
PYTEST_ARGS ?=
ARGS ?=

.PHONY: all venv venv-synapse-old build test unit lint format bench demo clean

all: build

$(BIN)/python: requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(BIN)/python

venv: $(BIN)/python

# The stamp is the requirements file copied in after a complete install: a failed install leaves
# the venv out of date, so the next make finishes it instead of taking it as built.
$(SYNAPSE_OLD_VENV)/requirements-synapse-old.txt: requirements-synapse-old.txt
	test -x $(SYNAPSE_OLD_VENV)/bin/python || $(PYTHON) -m venv $(SYNAPSE_OLD_VENV)
	$(SYNAPSE_OLD_VENV)/bin/pip install --quiet --disable-pip-version-check \
		-r requirements-synapse-old.txt
	cp requirements-synapse-old.txt $@

venv-synapse-old: $(SYNAPSE_OLD_VENV)/requirements-synapse-old.txt

clean:
	find plugin tests -name __pycache__ -type d -prune -exec rm -rf {} +
	rm -rf dist

build: venv clean
	mkdir -p dist
	$(BIN)/mbc build . -o dist/ </dev/null
	@test -f $(MBP) || { echo "mbc did not produce $(MBP)"; exit 1; }
	@echo "built $(MBP)"

test: venv venv-synapse-old
	$(BIN)/python -m pytest $(PYTEST_ARGS)

unit: venv
	$(BIN)/python -m pytest -m "not e2e" $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: venv
	$(BIN)/python -m bench $(ARGS)

demo: venv
	$(BIN)/python -m demo $(ARGS)
