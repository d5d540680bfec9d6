# The two commands a newcomer runs: `make demo` and `make test`.
# Both install what is missing first (system packages as root, then .venv).
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint unit integration bench clean

setup:
	@./scripts/setup.sh

demo: setup
	$(BIN)/cleancut demo

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

test: lint
	./scripts/run-tests.sh

bench: setup
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
