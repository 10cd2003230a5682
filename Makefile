# Every target does its own set-up: a virtualenv in .venv with mailgate installed (editable).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mailgate demo

test: $(STAMP)
	$(BIN)/python -m pytest -q
	$(BIN)/python -m pytest -q bench/tests

# Not part of `test`: mailgate vs Postfix vs direct on loopback (see docs/performance.md).
# `make bench N=500` for a quick run; S (body bytes), C (parallel sessions), PROFILE=1 (py-spy).
bench: $(STAMP)
	$(BIN)/python bench/run.py $(if $(N),-n $(N)) $(if $(S),-s $(S)) $(if $(C),-c $(C)) $(if $(PROFILE),--profile)

lint: $(STAMP)
	$(BIN)/ruff check gateway tests bench

clean:
	rm -rf $(VENV) .pytest_cache
