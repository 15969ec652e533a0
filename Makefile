# Two entry points: `make run` starts the dashboard, `make test` runs the whole test suite.
# Both create .venv, install the requirements and prepare both datasets, reusing what exists.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8501

.PHONY: run test setup setup-test data browser sweep bench

$(VENV)/.runtime-installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	touch $@

$(VENV)/.test-installed: $(VENV)/.runtime-installed requirements-test.txt
	$(PY) -m pip install --disable-pip-version-check -q -r requirements-test.txt
	touch $@

setup: $(VENV)/.runtime-installed

setup-test: $(VENV)/.test-installed

data: setup
	$(PY) -m ae_core data

# Debian's chromium for the real-browser test, installed when missing and apt-get is usable.
browser:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else echo "chromium is missing: install it with 'sudo apt-get install chromium'" >&2; fi

run: data
	$(PY) -m streamlit run streamlit_app.py --server.address $(HOST) --server.port $(PORT)

test: setup-test data browser
	$(PY) -m pytest tests

sweep: data
	$(PY) -m ae_core sweep

bench: data
	$(PY) -m benchmarks
