# Every target does its own set-up: a virtualenv in .venv with mailgate installed (editable).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench bench-auth lint wheel-check interop clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip 'setuptools>=77'
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mailgate demo

# The tests start real HAProxy and Redis servers: .ci/packages installs the Debian packages if missing.
# Four test processes (pytest-xdist): most tests wait on sockets and peers, not on the CPU.
test: $(STAMP)
	bash .ci/packages
	$(BIN)/python -m pytest -q -n 4
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
	$(BIN)/ruff check gateway tests bench interop
	$(BIN)/ruff format --check gateway tests bench interop
	$(BIN)/lint-imports
	$(BIN)/mypy gateway

# Not part of `test`: real Postfix, Dovecot, Exim and OpenSMTPD on loopback as upstreams (root;
# interop/setup.sh installs them, idempotently). Writes interop/results.json; README=1 also rewrites
# the README's "Tested against" table from it. See docs/testing.md.
interop: $(STAMP)
	bash interop/setup.sh
	$(BIN)/python -m pytest -c interop/pytest.ini interop
	$(if $(README),$(BIN)/python interop/readme.py)

# Builds the wheel, installs it offline into a fresh venv and runs `mailgate demo` from there.
wheel-check: $(STAMP)
	VENV=$(VENV) bash .ci/wheel-check

clean:
	rm -rf $(VENV) .pytest_cache
