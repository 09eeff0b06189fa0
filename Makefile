# Two commands for a new machine: `make demo` and `make test`. Both create .venv and install the
# locked dependencies (requirements.lock, made by `make lock`) when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | cksum | cut -d' ' -f1)
export UV_PYTHON_DOWNLOADS := never
# Byte-code caching roughly halves the start-up of every process that imports diffusers.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: install demo test test-fast test-slow bench lock lint ui clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(BIN)/uv: | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(STAMP): requirements.lock pyproject.toml | $(BIN)/uv
	rm -f $(VENV)/.installed-*
	$(BIN)/uv pip sync --python $(BIN)/python requirements.lock
	$(BIN)/uv pip install --python $(BIN)/python --no-deps -e . --config-settings editable_mode=compat
	touch $@

install: $(STAMP)

demo: install
	$(BIN)/lora-factory demo

# Two worker processes, each given whole test files (module fixtures such as a factory run are made
# once); TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2
test: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

test-fast: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not e2e and not slow"

# Tests too long for every CI run (several whole factory runs each): run before touching what they cover.
test-slow: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile -m slow

# Every bench/*.py prints one JSON document of figures; none of them is a test. bench/inspect.py is
# bench/doctor.py under the issue's name: run once.
bench: install
	@for script in $(filter-out bench/inspect.py,$(wildcard bench/*.py)); do echo "== $$script"; $(BIN)/python $$script || exit 1; done

ui: install
	$(BIN)/lora-factory ui

lint: install
	$(BIN)/ruff check .

# Re-resolve the lock (needs the package registry). Commit requirements.lock afterwards.
lock: | $(BIN)/uv
	$(BIN)/uv pip compile pyproject.toml --extra dev --universal --python-version 3.11 \
		--generate-hashes -o requirements.lock

clean:
	rm -rf $(VENV) lora-factory-data .pytest_cache .hypothesis
