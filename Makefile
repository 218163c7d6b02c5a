# Two entry points (README): `make run` sets up and runs the demo; `make test` sets up and runs the tests.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup run test chaos lint clean tools promtool

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

run: setup
	$(BIN)/videotag demo $(ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Tools tests/deploy runs besides the Python packages: promtool (Debian's prometheus package) and checkov, in a venv
# of its own because it pins many dependencies. Both steps are quick once installed.
CHECKOV_VERSION := 3.3.30
CHECKOV_VENV := .cache/checkov-venv

tools: promtool $(CHECKOV_VENV)/.installed-$(CHECKOV_VERSION)

promtool:
	@bash tests/deploy/install-promtool.sh

$(CHECKOV_VENV)/.installed-$(CHECKOV_VERSION):
	rm -rf $(CHECKOV_VENV)
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/python -m pip install --quiet checkov==$(CHECKOV_VERSION)
	touch $@

test: lint tools
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=15 $(ARGS)

chaos: setup
	$(BIN)/python -m pytest -q -s -p no:cacheprovider -m chaos tests/fault

clean:
	rm -rf $(VENV) .cache build *.egg-info
