# Tachograph: `make demo` and `make test` set themselves up from a clean clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint unit fmt bench clean agent-wheel

install: $(STAMP)

$(STAMP): pyproject.toml setup.py domain/_sha256batch.c domain/_sqlitescan.c
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ needed"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@# bytecode written now: an editable install under PYTHONDONTWRITEBYTECODE would otherwise
	@# compile every module at every start (about 0.4 s of `tacho serve`'s)
	$(BIN)/python -m compileall -q api domain ingest projections replay tachograph
	@$(BIN)/python -c 'from domain import merkle; print("Merkle list hashing:", "C module built" if merkle.NATIVE else "hashlib (the optional C module was not built: no C compiler or OpenSSL headers; verify runs about 10% slower)")'
	@$(BIN)/python -c 'from domain.stores import sqlite; print("Index-column check in verify:", "C module built" if sqlite._sqlitescan else "Python (the optional C module was not built: no SQLite headers, e.g. libsqlite3-dev; verify runs about 25% slower)")'
	touch $(STAMP)

demo: install
	$(BIN)/tacho demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy tachograph domain ingest projections replay api
	$(BIN)/lint-imports

test: install lint
	bash scripts/ci-prereqs.sh
	bash scripts/run-tests.sh

unit: install
	$(BIN)/python -m pytest tests/unit tests/contract -q

fmt: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# the light agent distribution (tachograph-agent: the tachograph package alone) for agent
# services; needs only a Python with pip (hatchling comes from PyPI). docs/agent-install.md
agent-wheel:
	$(PYTHON) -m pip wheel --no-deps --quiet ./agent -w dist
	@ls dist/tachograph_agent-*.whl

bench: install
	$(BIN)/python bench/ledger.py

clean:
	rm -rf $(VENV) .tacho .pytest_cache .mypy_cache .ruff_cache
