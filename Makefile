# The two commands a newcomer needs: `make run` and `make test`.
# Both create .venv (Python from .python-version, 3.12+) and install the project into it.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test example-test lint bench install

$(STAMP): pyproject.toml streaming/pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 12))' || \
	  { echo "Python 3.12+ is needed (found $$($(PYTHON) --version)); see .python-version"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ./streaming -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	HOST=$(HOST) PORT=$(PORT) $(BIN)/python scripts/run.py

# Two suites: the component's (tests/component, its own minimal settings, no chat) and
# the product's (the rest of tests/). PYTEST_ARGS goes to both, but a path in it picks
# its suite: `make test PYTEST_ARGS="-x tests/component/ops/test_purge.py"` runs the
# component's suite on that file alone, `PYTEST_ARGS=tests/chat/test_pages.py` the
# product's (paths from the repository's root, starting with tests/).
COMPONENT_PATHS := $(filter tests/component tests/component/%,$(PYTEST_ARGS))
PRODUCT_PATHS := $(filter-out $(COMPONENT_PATHS),$(filter tests tests/%,$(PYTEST_ARGS)))
PYTEST_OPTIONS := $(filter-out tests tests/%,$(PYTEST_ARGS))
COMPONENT_SUITE := $(BIN)/python -m pytest -c tests/component/pytest.ini

test: $(STAMP)
ifeq ($(COMPONENT_PATHS)$(PRODUCT_PATHS),)
	$(COMPONENT_SUITE) $(PYTEST_ARGS) && $(BIN)/python -m pytest $(PYTEST_ARGS)
else
	$(if $(COMPONENT_PATHS),$(COMPONENT_SUITE) $(PYTEST_OPTIONS) $(COMPONENT_PATHS))
	$(if $(PRODUCT_PATHS),$(BIN)/python -m pytest $(PYTEST_OPTIONS) $(PRODUCT_PATHS))
endif

# The example project (examples/summary) on the component's wheel alone, in a fresh venv.
example-test: $(STAMP)
	examples/summary/run-from-wheel.sh $(PYTEST_ARGS)

# Style, the component's types and the layer contract (pyproject.toml's importlinter).
lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m bench $(BENCH_ARGS)
