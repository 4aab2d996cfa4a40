# Two commands: `make run` (the service, offline, bundled engine) and `make test`;
# `make vlm` adds the vision-language engine's packages (requirements-vlm.txt);
# `make bench` runs the benchmarks of issue 7 (not part of `make test`).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The venv's bin first, as for any Procfile runner; no PYTHONPATH: the Procfile's Python
# processes run as modules (`python -m scripts.run_api`) from the repository root.
export PATH := $(abspath $(VENV))/bin:$(PATH)

# Tesseract languages this machine should have (OCR_LANGS, space separated; the tests
# read Vietnamese, Greek and Chinese pages, so `make test` adds those).
OCR_LANGS ?= eng
TEST_LANGS := eng vie ell chi_sim

.PHONY: langs test-langs run vlm vlm-api rapidocr s3 test lint bench bench-quick clean redis-server rabbitmq-server bench-tools screenshot chromium

$(VENV)/.runtime: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

# The VLM engine's packages (mlx, mlx-vlm and what they pull in): `make vlm`.
$(VENV)/.vlm: $(VENV)/.runtime requirements-vlm.txt
	$(PY) -m pip install -q -r requirements-vlm.txt
	touch $@

# The vlm-api engine's client (openai): `make vlm-api`.
$(VENV)/.vlm-api: $(VENV)/.runtime requirements-vlm-api.txt
	$(PY) -m pip install -q -r requirements-vlm-api.txt
	touch $@

# The rapidocr engine's packages (issue 25): `make rapidocr`.
$(VENV)/.rapidocr: $(VENV)/.runtime requirements-rapidocr.txt
	$(PY) -m pip install -q -r requirements-rapidocr.txt
	touch $@

# boto3 for s3:// inputs and result_url (issue 32): `make s3`.
$(VENV)/.s3: $(VENV)/.runtime requirements-s3.txt
	$(PY) -m pip install -q -r requirements-s3.txt
	touch $@

$(VENV)/.dev: $(VENV)/.vlm $(VENV)/.vlm-api $(VENV)/.rapidocr $(VENV)/.s3 requirements-dev.txt
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

# `make run` installs the VLM packages only when a VLM worker is configured, or the
# Procfile's `vlm-server` (mlx_vlm.server) serves vlm-api workers (no OCR_VLM_API_URL).
RUN_NEEDS := $(VENV)/.runtime
ifneq ($(strip $(OCR_MODEL))$(filter mlx-vlm,$(OCR_ENGINE))$(if $(strip $(OCR_VLM_API_URL)),,$(filter vlm-api,$(OCR_ENGINE))),)
RUN_NEEDS += $(VENV)/.vlm
endif
ifneq ($(filter vlm-api,$(OCR_ENGINE)),)
RUN_NEEDS += $(VENV)/.vlm-api
endif
ifneq ($(filter rapidocr,$(OCR_ENGINE))$(findstring rapidocr,$(OCR_LANG_ENGINES)),)
RUN_NEEDS += $(VENV)/.rapidocr
endif
ifneq ($(findstring s3://,$(OCR_ALLOWED_URLS)),)
RUN_NEEDS += $(VENV)/.s3
endif

$(VENV)/.bench: $(VENV)/.dev requirements-bench.txt
	$(PY) -m pip install -q -r requirements-bench.txt
	touch $@

# redis-server: Debian's package when root, otherwise say what to do.
redis-server:
	@command -v redis-server >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; \
	  else echo "redis-server is missing: apt-get install redis-server (Debian/Ubuntu) or brew install redis (macOS)"; exit 1; fi; }

# RabbitMQ for the broker tests (tests/test_brokers.py, each in a vhost of its own on
# 127.0.0.1:5672): Debian's package, installed and started when root; without it those
# tests skip and say why. `make run` does not need it (Redis stays the default broker).
rabbitmq-server:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  command -v rabbitmqctl >/dev/null || { apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server; }; \
	  rabbitmqctl -q status >/dev/null 2>&1 || { service rabbitmq-server start >/dev/null 2>&1 || \
	    rabbitmq-server -detached; rabbitmqctl -q await_startup --timeout 120; }; \
	else command -v rabbitmqctl >/dev/null || \
	  echo "rabbitmq-server is missing: the RabbitMQ tests skip (apt-get install rabbitmq-server)"; fi

# The peers of the benchmarks: Debian's tesseract CLI and Ghostscript (for OCRmyPDF).
bench-tools:
	@command -v tesseract >/dev/null && command -v gs >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tesseract-ocr ghostscript; \
	  else echo "tesseract or gs is missing: apt-get install tesseract-ocr ghostscript (Debian/Ubuntu) or brew install tesseract ghostscript (macOS); the peer rows are skipped without them"; fi; }

# Traineddata of OCR_LANGS: pip tessdata-* wheels, Debian's tesseract-ocr-<lang> when root.
langs: $(VENV)/.runtime
	$(PY) -m scripts.install_langs $(OCR_LANGS)

test-langs: $(VENV)/.runtime
	$(PY) -m scripts.install_langs $(sort $(OCR_LANGS) $(TEST_LANGS))

# scripts/supervise.py runs the Procfile (PROCESSES="worker beat": only those); Ctrl-C
# stops every process, also through a pipe.
PROCESSES ?=
run: $(RUN_NEEDS) redis-server langs
	mkdir -p var
	$(PY) scripts/supervise.py $(PROCESSES)

vlm: $(VENV)/.vlm

vlm-api: $(VENV)/.vlm-api

rapidocr: $(VENV)/.rapidocr

s3: $(VENV)/.s3

lint: $(VENV)/.dev
	ruff check .
	mypy

test: $(VENV)/.dev redis-server rabbitmq-server test-langs lint
	pytest

# OMP_THREAD_LIMIT=1: one OpenMP thread per tesseract, as the workers run it
# (OCR_TESSERACT_THREADS=1); Debian's tesseract on 2 cores is ~8x slower without it.
bench: $(VENV)/.bench redis-server rabbitmq-server bench-tools
	OMP_THREAD_LIMIT=1 $(PY) -m bench

bench-quick: $(VENV)/.bench redis-server rabbitmq-server bench-tools
	OMP_THREAD_LIMIT=1 $(PY) -m bench --quick

# Debian's chromium for the Flower screenshot (not needed by `make test`).
chromium:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else echo "chromium is missing: apt-get install chromium (Debian/Ubuntu)"; exit 1; fi; }

# docs/flower.png: Flower's workers page with a real worker, taken by the screenshot
# test in headless chromium (the test fails here rather than skip without chromium).
screenshot: $(VENV)/.dev redis-server chromium
	FLOWER_SCREENSHOT=docs/flower.png pytest -q -p no:cacheprovider \
	  tests/test_integration.py -k test_flower_dashboard_screenshot

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
