# menos: `make run` starts everything locally, `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint lock bench chaos clean version-bump-major version-bump-minor version-bump-patch

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "uv>=0.4"
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -r requirements.lock
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	touch $(STAMP)

run: install
	$(BIN)/python -m menos dev

test: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python -m bench.run $(BENCH_ARGS)

chaos: install
	$(BIN)/python -m tests.chaos.driver --jobs $(or $(CHAOS_JOBS),3000) --seconds $(or $(CHAOS_SECONDS),40)

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

lock:
	$(BIN)/uv pip compile pyproject.toml --extra dev -o requirements.lock --python-version 3.11 --no-header

version-bump-major version-bump-minor version-bump-patch: install
	$(BIN)/python -m menos.versions bump $(subst version-bump-,,$@)

clean:
	rm -rf $(VENV) .menos .pytest_cache .mypy_cache .ruff_cache
