# Everything runs in a local virtualenv (.venv) so a fresh machine needs only python3 (3.10+) and make.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/fpindex demo

test: install
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) fpindex-demo
