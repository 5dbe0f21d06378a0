# Two commands on a fresh machine with Python >= 3.11 and make:
#   make book    run every chapter (PROFILE=cpu by default) and build the HTML book into _build/html
#   make test    run the test suite
PYTHON ?= python3
PROFILE ?= cpu
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test book bench clean

# torch first, pinned to the CPU wheel: an unpinned torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[book,test]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3"
	touch $(STAMP)

install: $(STAMP)

test: install
	$(BIN)/python -m pytest

book: install
	$(BIN)/python -m rote.book --profile $(PROFILE)

bench: install
	$(BIN)/python bench/training_speed.py

clean:
	rm -rf _build
