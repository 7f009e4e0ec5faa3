# Two commands on a fresh machine: `make demo` and `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# The CPU build of torch these machines carry; a bare `torch` would pull several GB of CUDA packages.
TORCH   ?= torch==2.13.0

.PHONY: venv test test-slow test-dist lint demo teacher bench replicate clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

test-dist: $(STAMP)
	$(BIN)/python -m pytest -q -m distributed

lint: $(STAMP)
	$(BIN)/ruff check jetvit tests benchmarks
	$(BIN)/ruff format --check jetvit tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
