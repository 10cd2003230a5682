# Every target does its own set-up: a virtualenv in .venv with mailgate installed (editable).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench bench-auth lint wheel-check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip 'setuptools>=77'
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mailgate demo

test: $(STAMP)
	$(BIN)/python -m pytest -q
	$(BIN)/python -m pytest -q bench/tests

# Not part of `test`: mailgate vs Postfix vs direct on loopback (see docs/performance.md).
# `make bench N=500` for a quick run; S (body bytes), C (parallel sessions), PROFILE=1 (py-spy),
# INSTANCES=2 (also relay mode with 2 processes on one port, reuse_port; SCALING_ONLY=1: just that).
bench: $(STAMP)
	$(BIN)/python bench/run.py $(if $(N),-n $(N)) $(if $(S),-s $(S)) $(if $(C),-c $(C)) $(if $(PROFILE),--profile) $(if $(INSTANCES),--instances $(INSTANCES)) $(if $(SCALING_ONLY),--scaling-only) $(if $(MODES_ONLY),--modes-only)
	$(if $(SCALING_ONLY)$(MODES_ONLY),,$(BIN)/python bench/auth_timing.py)

# Known vs unknown app name: the time a wrong password takes (issue 12 item 9), not a test.
bench-auth: $(STAMP)
	$(BIN)/python bench/auth_timing.py $(if $(N),-n $(N))

# ruff (lint and the formatter's check), the import contracts (pyproject.toml [tool.importlinter]), mypy.
lint: $(STAMP)
	$(BIN)/ruff check gateway tests bench
	$(BIN)/ruff format --check gateway tests bench
	$(BIN)/lint-imports
	$(BIN)/mypy gateway

# Builds the wheel, installs it offline into a fresh venv and runs `mailgate demo` from there.
wheel-check: $(STAMP)
	VENV=$(VENV) bash .ci/wheel-check

clean:
	rm -rf $(VENV) .pytest_cache
