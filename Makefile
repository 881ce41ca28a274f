# Everything runs in a local virtualenv (.venv) so a fresh machine needs only python3 (3.10+) and make.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test clean report-png

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

# docs/report.png, the README's picture of the report: the small demo's report in headless Chromium
# (Debian: apt-get install chromium). The demo rewrites its own earlier folder.
CHROMIUM ?= chromium
report-png: install
	$(BIN)/fpindex demo --small --quiet --out fpindex-demo-small
	$(CHROMIUM) --headless --disable-gpu --no-sandbox --hide-scrollbars --window-size=1280,2400 \
	    --screenshot=docs/report.png "file://$(CURDIR)/fpindex-demo-small/audit/report.html"

clean:
	rm -rf $(VENV) fpindex-demo fpindex-demo-small
