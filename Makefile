# The two commands a new user needs: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: install install-run run test test-bulk lint typecheck schema bench clean

# `make run` needs the product and the local stack (the `devstack` extra); `make test` and the
# tools need the test extra too. Each stamp is redone when pyproject.toml changes.
install-run: $(VENV)/.installed-run
install: $(VENV)/.installed

$(VENV)/.venv-created:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	touch $@

$(VENV)/.installed-run: pyproject.toml $(VENV)/.venv-created
	$(BIN)/python -m pip install --quiet -e '.[devstack]'
	touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.venv-created
	$(BIN)/python -m pip install --quiet -e '.[devstack,test]'
	touch $@ $(VENV)/.installed-run

run: install-run  ## the local stack: Redis, a SCIM app, workers, the sample directory provisioned
	$(BIN)/provisioner stack

test: install  ## the whole suite (starts its own Redis, SCIM servers and workers)
	$(BIN)/python -m pytest

test-bulk: install  ## the whole suite with every test's SCIM application announcing Bulk
	SCIM_TEST_BULK=on $(BIN)/python -m pytest

lint: install  ## ruff, the formatter, and the type checker over worker/ and producers/
	$(BIN)/ruff check worker producers tests benchmarks
	$(BIN)/ruff format --check worker producers tests benchmarks
	$(BIN)/mypy worker producers

schema: install  ## regenerate the JSON Schemas of the event contract and the snapshot format
	$(BIN)/python -m worker.contract.schema --write

bench: install  ## throughput and call-count benchmarks; figures go to BENCHMARKS.md
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) var .pytest_cache .hypothesis .ruff_cache .mypy_cache *.egg-info
