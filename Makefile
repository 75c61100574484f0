# tiergate: the two commands a new user needs are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: install demo test lint typecheck bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Tests also run the attention kernels (torch + triton, on the CPU in Triton's interpreter).
$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[dev,kernels]'
	touch $(TEST_STAMP)

## Run the offline demo: simulated Flash/Pro replicas + simulated hosted API, no servers or keys.
demo: install
	$(VENV)/bin/tiergate demo

## Install everything (Python packages, local Redis/PostgreSQL if missing) and run the test suite.
test: $(TEST_STAMP)
	bash scripts/test.sh

lint: install
	$(VENV)/bin/ruff check gateway policies engines tests bench
	$(VENV)/bin/ruff format --check gateway policies engines tests bench

typecheck: install
	$(VENV)/bin/mypy gateway policies engines

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache *.egg-info
