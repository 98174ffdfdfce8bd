# The README's commands. `make test` is what CI runs (.ci/run).
VENV ?= .venv
BIN := $(VENV)/bin

# Test workers (pytest-xdist): most of the suite waits on servers and subprocesses, so two cores
# keep four workers busy. `make test WORKERS=0` runs in one process. A worker that crashes (the
# watchdog in tests/conftest.py ends one whose test hangs) ends the run: xdist's loadgroup scheduler
# hands a replacement worker nothing, and the run would wait forever on the crashed one's tests.
WORKERS ?= 4
XDIST = $(if $(filter 0,$(WORKERS)),,-n $(WORKERS) --dist loadgroup --max-worker-restart 0)

.PHONY: demo test check lint docs fmt clean distclean venv deps

demo: venv
	$(BIN)/fabwatch demo

# Everything: lint, types, layers, then every test, real servers included.
test: deps venv
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(MAKE) --no-print-directory docs
	$(BIN)/pytest -q $(XDIST)

# The quick tier, under a minute: lint, types, layers and the unit tests (no server started, no
# fabwatch or demo subprocess, nothing that waits seconds: markers `integration` and `slow`).
check: venv
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/pytest -q -n 2 -m "not integration and not slow"

# The code is laid out by hand (aligned continuation lines, 120 columns); ruff's formatter would
# rewrite most files, so lint checks rules and types, and fmt applies ruff's safe fixes.
lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# The documentation site, built the way CI builds it: --strict turns a broken link, a page missing
# from the nav or a missing included example into a failure. Built outside the tree (mktemp).
# NO_MKDOCS_2_WARNING: Material prints a banner about MkDocs 2 on every build otherwise. Not --quiet:
# it hides the warnings that --strict counts, and a broken link would pass.
docs: venv
	@site=$$(mktemp -d); \
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir "$$site"; status=$$?; \
	rm -rf "$$site"; [ $$status -eq 0 ] && echo "docs: built with --strict"; exit $$status

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
