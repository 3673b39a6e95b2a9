# The two commands a new user needs; each sets itself up on a fresh machine.
#   make train   create .venv, install, train with the defaults
#   make test    create .venv, install, run the test suite
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
ARGS   ?=

.PHONY: setup train test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first, from the CPU wheel: a bare 'torch' requirement pulls a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev,tensorboard]"
	touch $@

setup: $(VENV)/.installed

train: setup
	$(BIN)/toolagent train $(ARGS)

test: setup
	$(BIN)/python -m pytest $(ARGS)

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs .pytest_cache
