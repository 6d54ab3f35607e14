# playproof: `make demo` runs it, `make test` checks it. Both set up what they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum < pyproject.toml | cut -d' ' -f1)

.PHONY: demo test setup system-deps lint typecheck pytest bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

setup: $(STAMP)

system-deps:
	./scripts/system-deps.sh

demo: setup
	$(BIN)/playproof demo

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: setup
	$(BIN)/mypy

pytest: setup system-deps
	$(BIN)/pytest

test: lint typecheck pytest

bench: setup
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache playproof.db* playproof.blobs
	rm -rf playproof.fleet playproof.service.log playproof.operator-token playproof.demo-token \
		playproof.evidence.ndjson playproof.keylog.json
