# Two entry points (README): `make run` sets up and runs the demo; `make test` sets up and runs the tests.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup run test chaos lint clean

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

test: lint
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=15 $(ARGS)

chaos: setup
	$(BIN)/python -m pytest -q -s -p no:cacheprovider -m chaos tests/fault

clean:
	rm -rf $(VENV) .cache build *.egg-info
