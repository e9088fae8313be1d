# Two commands on a fresh clone: `make run` (the showcase study) and `make test`. Both create .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint bench clean

$(BIN)/.installed: pyproject.toml setup.py sparsernn/kernels/_kernels.c $(wildcard runtime/src/*.[ch])
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

run: $(BIN)/.installed
	$(BIN)/sparsernn study configs/showcase/study.yaml --out runs/showcase

test: $(BIN)/.installed
	$(BIN)/ruff check sparsernn tests benchmarks scripts examples
	$(BIN)/python -m pytest -q

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/pruner_overhead.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info sparsernn/kernels/*.so
