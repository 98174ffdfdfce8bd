# The README's commands. `make test` is what CI runs (.ci/run).
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint fmt clean distclean venv deps

demo: venv
	$(BIN)/fabwatch demo

test: deps venv
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/pytest -q

# The code is laid out by hand (aligned continuation lines, 120 columns); ruff's formatter would
# rewrite most files, so lint checks rules and types, and fmt applies ruff's safe fixes.
lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

fmt: venv
	$(BIN)/ruff check --fix .

venv:
	@VENV=$(VENV) bash scripts/bootstrap.sh

deps:
	@bash scripts/ensure-deps.sh

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
