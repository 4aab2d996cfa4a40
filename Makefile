# Two commands: `make run` (the service, offline, bundled engine) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
export PYTHONPATH := $(abspath .)

.PHONY: run test lint bench clean redis-server

$(VENV)/.runtime: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

# redis-server: Debian's package when root, otherwise say what to do.
redis-server:
	@command -v redis-server >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; \
	  else echo "redis-server is missing: apt-get install redis-server (Debian/Ubuntu) or brew install redis (macOS)"; exit 1; fi; }

run: $(VENV)/.runtime redis-server
	mkdir -p var
	honcho start

lint: $(VENV)/.dev
	ruff check .
	mypy

test: $(VENV)/.dev redis-server lint
	pytest

bench: $(VENV)/.dev redis-server
	$(PY) -m bench

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
