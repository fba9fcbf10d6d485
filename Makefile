# The two commands a new user needs: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: install  ## the local stack: Redis, a SCIM app, workers, the sample directory provisioned
	$(BIN)/provisioner stack

test: install  ## the whole suite (starts its own Redis, SCIM servers and workers)
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check worker producers tests benchmarks
	$(BIN)/ruff format --check worker producers tests benchmarks

bench: install  ## throughput and call-count benchmarks; figures go to BENCHMARKS.md
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) var .pytest_cache .hypothesis .ruff_cache *.egg-info
