# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv run test lint bench bench-recall reliability chat clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[embedded,app,dev,prometheus,recall]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/hybrid-memory serve

chat: $(STAMP)
	$(BIN)/hybrid-memory chat

test: $(STAMP)
	$(BIN)/ruff check lc_hybrid_memory app tests bench
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check lc_hybrid_memory app tests bench
	$(BIN)/ruff format --check lc_hybrid_memory app tests bench

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[embedded,app,dev,prometheus,recall,bench]'
	$(BIN)/python -m bench

bench-recall: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[embedded,app,dev,prometheus,recall,bench]'
	$(BIN)/python -m bench.recall

reliability: $(STAMP)
	$(BIN)/python -m pytest -q -m slow --timeout 900

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
