# Two commands: `make run` (the service, offline, bundled engine) and `make test`;
# `make vlm` adds the vision-language engine's packages (requirements-vlm.txt);
# `make bench` runs the benchmarks (bench/README.md; not part of `make test`).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The venv's bin first, as for any Procfile runner; no PYTHONPATH: the Procfile's Python
# processes run as modules (`python -m scripts.run_api`) from the repository root.
export PATH := $(abspath $(VENV))/bin:$(PATH)

# Tesseract languages this machine should have (OCR_LANGS, space separated; the tests
# read Vietnamese, Greek, Chinese, German and French pages, and a notice in six Latin
# languages (Italian, Spanish and Portuguese besides), so `make test` adds those).
OCR_LANGS ?= eng
comma := ,
TEST_LANGS := eng vie ell chi_sim deu fra ita spa por

.PHONY: help samples langs test-langs run run-starting vlm vlm-api rapidocr s3 test test-long test-floor lint bench bench-quick clean redis-server rabbitmq-server bench-tools screenshot chromium promtool podman base-image wheels image lock ocrmypdf-plugin

# `make help`: the targets a user runs, one line each (the rest are their steps).
help:
	@printf '%s\n' \
	  'make run          the service: Redis, workers, beat, API, console, Flower (offline)' \
	  'make test         lint, import contracts, types and the tests (not the long forms)' \
	  'make test-long    the long forms alone: soaks, clusters, the image built and run' \
	  'make test-floor   the queue tests at the floor of the celery/kombu range' \
	  'make lint         ruff, import contracts (lint-imports) and mypy' \
	  'make bench        every benchmark (bench/README.md); bench-quick: a smoke run' \
	  'make langs        tesseract languages of OCR_LANGS (OCR_LANGS="eng deu")' \
	  'make rapidocr     the rapidocr engine (Chinese by PP-OCR; docs/languages.md)' \
	  'make vlm          the vision-language engine (mlx, mlx-vlm); vlm-api: its client' \
	  'make s3           boto3, for s3:// inputs and result_url' \
	  'make samples      draw samples/ again' \
	  'make image        the container image (podman) and its SBOM; lock: its lock file' \
	  'make screenshot   docs/flower.png and docs/console.png again' \
	  'make clean        remove var/ and the tools'"'"' caches'

# The first run installs with the venv's own pip, asks the index nothing about pip's own
# releases, and compiles no bytecode ahead: Python compiles what a process imports as
# it first imports it (bench/first_result.py). `make test` and `make bench` upgrade pip.
$(VENV)/.runtime: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-compile --disable-pip-version-check -r requirements.txt
	touch $@

# The VLM engine's packages (mlx, mlx-vlm and what they pull in): `make vlm`.
$(VENV)/.vlm: $(VENV)/.runtime requirements-vlm.txt
	$(PY) -m pip install -q -r requirements-vlm.txt
	touch $@

# The vlm-api engine's client (openai): `make vlm-api`.
$(VENV)/.vlm-api: $(VENV)/.runtime requirements-vlm-api.txt
	$(PY) -m pip install -q -r requirements-vlm-api.txt
	touch $@

# The rapidocr engine's packages: `make rapidocr`, and `make run` when Chinese is asked.
$(VENV)/.rapidocr: $(VENV)/.runtime requirements-rapidocr.txt
	$(PY) -m pip install -q -r requirements-rapidocr.txt
	touch $@

# boto3 for s3:// inputs and result_url: `make s3`.
$(VENV)/.s3: $(VENV)/.runtime requirements-s3.txt
	$(PY) -m pip install -q -r requirements-s3.txt
	touch $@

$(VENV)/.dev: $(VENV)/.vlm $(VENV)/.vlm-api $(VENV)/.rapidocr $(VENV)/.s3 requirements-dev.txt
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

# `make run` installs the service; the rapidocr engine (217 MiB) only when Chinese is
# asked (OCR_LANGS names chi_sim, which the default routing reads with it:
# OCR_LANG_ENGINES; or OCR_ENGINE=rapidocr); the VLM packages only when a VLM worker is
# configured, or the Procfile's `vlm-server` (mlx_vlm.server) serves vlm-api workers
# (no OCR_VLM_API_URL).
RUN_NEEDS := $(VENV)/.runtime
ifneq ($(filter chi_sim,$(subst +, ,$(subst $(comma), ,$(OCR_LANGS))))$(filter rapidocr,$(OCR_ENGINE)),)
RUN_NEEDS += $(VENV)/.rapidocr
endif
ifneq ($(strip $(OCR_MODEL))$(filter mlx-vlm,$(OCR_ENGINE))$(if $(strip $(OCR_VLM_API_URL)),,$(filter vlm-api,$(OCR_ENGINE))),)
RUN_NEEDS += $(VENV)/.vlm
endif
ifneq ($(filter vlm-api,$(OCR_ENGINE)),)
RUN_NEEDS += $(VENV)/.vlm-api
endif
ifneq ($(findstring s3://,$(OCR_ALLOWED_URLS)),)
RUN_NEEDS += $(VENV)/.s3
endif

$(VENV)/.bench: $(VENV)/.dev requirements-bench.txt
	$(PY) -m pip install -q -r requirements-bench.txt
	touch $@

# OCRmyPDF 17 in a clean venv of its own (no project package in it), and the plugin of
# integrations/ocrmypdf installed there as a user installs it (`pip install
# integrations/ocrmypdf[redis]`): tests/clients/test_ocrmypdf_plugin.py and bench/ocrmypdf.py run
# its `ocrmypdf`. The venv is rebuilt only when its requirements change, the plugin
# reinstalled when its files do. OCRmyPDF's own engine needs Debian's tesseract CLI.
OCRMYPDF_VENV := .venv-ocrmypdf
PLUGIN_FILES := integrations/ocrmypdf/pyproject.toml integrations/ocrmypdf/README.md \
	$(wildcard integrations/ocrmypdf/ocrmypdf_ocr_queue/*.py)

$(OCRMYPDF_VENV)/.ocrmypdf: integrations/ocrmypdf/requirements.txt
	rm -rf $(OCRMYPDF_VENV)
	$(PYTHON) -m venv $(OCRMYPDF_VENV)
	$(OCRMYPDF_VENV)/bin/python -m pip install -q --upgrade pip
	$(OCRMYPDF_VENV)/bin/python -m pip install -q -r integrations/ocrmypdf/requirements.txt
	touch $@

$(OCRMYPDF_VENV)/.plugin: $(OCRMYPDF_VENV)/.ocrmypdf $(PLUGIN_FILES)
	rm -rf integrations/ocrmypdf/build integrations/ocrmypdf/*.egg-info
	$(OCRMYPDF_VENV)/bin/python -m pip install -q "./integrations/ocrmypdf[redis]"
	rm -rf integrations/ocrmypdf/build integrations/ocrmypdf/*.egg-info
	touch $@

ocrmypdf-plugin: $(OCRMYPDF_VENV)/.plugin bench-tools

# redis-server: Debian's package when root, otherwise say what to do.
redis-server:
	@command -v redis-server >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; \
	  else echo "redis-server is missing: apt-get install redis-server (Debian/Ubuntu) or brew install redis (macOS)"; exit 1; fi; }

# RabbitMQ for the broker tests (tests/queue/test_brokers.py, each in a vhost of its own on
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

# The documents of samples/ that README's and the docs' examples read, drawn again
# (scripts/make_samples.py; tests/units/test_samples.py checks the committed files).
samples: $(VENV)/.runtime
	$(PY) -m scripts.make_samples

# Traineddata of OCR_LANGS: pip tessdata-* wheels, Debian's tesseract-ocr-<lang> when root.
langs: $(VENV)/.runtime
	$(PY) -m scripts.install_langs $(OCR_LANGS)

test-langs: $(VENV)/.runtime
	$(PY) -m scripts.install_langs $(sort $(OCR_LANGS) $(TEST_LANGS))

# scripts/supervise.py runs the Procfile (PROCESSES="worker beat": only those); Ctrl-C
# stops every process, also through a pipe. First, var/starting names make's pid:
# submit.py and ocr_admin.py wait for this run's Redis while it installs and starts
# (tasks/cli/core.py); the supervisor removes it once its Redis is up. That first step
# refuses, changing nothing, while another `make run` runs or starts in this checkout.
PROCESSES ?=
run: run-starting $(RUN_NEEDS) redis-server langs
	mkdir -p var
	$(PY) scripts/supervise.py $(PROCESSES)

run-starting:
	@$(PYTHON) scripts/supervise.py --starting $$PPID

vlm: $(VENV)/.vlm

vlm-api: $(VENV)/.vlm-api

rapidocr: $(VENV)/.rapidocr

s3: $(VENV)/.s3

# The container image (Dockerfile, compose.yaml, docs/deploy.md): `make image` builds
# ocr-queue:<version> (pyproject.toml's) with podman and writes its CycloneDX SBOM to
# var/sbom/. No registry is needed: the base image is made by debootstrap when missing,
# and the Python packages are requirements-image.lock's files, fetched here and checked
# against their hashes (`make wheels`, into wheels/, git-ignored), so the build
# downloads only Debian packages. Elsewhere `docker build .` takes the same files from
# the package index. `make lock` regenerates the lock after a requirements change.
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE ?= ocr-queue:$(VERSION)
SBOM_DIR ?= var/sbom
BASE_IMAGE ?= debian:bookworm-slim
IMAGE_LANGS ?= eng vie ell chi_sim
DEBIAN_MIRROR ?= http://deb.debian.org/debian
IMAGE_BUILD_ARGS ?=
# Debian's podman 4.3 cannot set rlimits with its default runtime here: runc, and
# ulimits given (the tests use the same file).
export CONTAINERS_CONF := $(abspath var/podman/containers.conf)

# podman, debootstrap and runc: Debian's packages when root, otherwise say what to do.
podman:
	@command -v podman >/dev/null && command -v debootstrap >/dev/null && command -v runc >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman debootstrap runc; \
	  else echo "podman is missing: apt-get install podman debootstrap runc (Debian/Ubuntu)"; exit 1; fi; }
	@mkdir -p $(dir $(CONTAINERS_CONF))
	@printf '%s\n' '[containers]' 'default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]' \
	  '' '[engine]' 'runtime = "runc"' > $(CONTAINERS_CONF)

# debian:bookworm-slim from Debian's packages (minbase), when no such image is stored.
base-image: podman
	@podman image exists $(BASE_IMAGE) || { \
	  root=$$(mktemp -d) && debootstrap --variant=minbase bookworm $$root $(DEBIAN_MIRROR) >/dev/null && \
	  rm -rf $$root/var/cache/apt/archives/*.deb $$root/var/lib/apt/lists/* $$root/usr/share/doc/* \
	    $$root/usr/share/man/* $$root/usr/share/info/* $$root/usr/share/locale/* && \
	  tar -C $$root -c . | podman import - $(BASE_IMAGE) && rm -rf $$root; }

# The lock's files for this machine (every package the image installs, hash-checked).
wheels/.done: $(VENV)/.runtime requirements-image.lock
	$(PY) -m scripts.image_lock --download wheels
	touch $@

wheels: wheels/.done

# The lock of the image's packages (scripts/image_lock.py; asks the package index).
lock: $(VENV)/.runtime
	$(PY) -m scripts.image_lock

image: base-image wheels
	podman build --isolation chroot --layers -t $(IMAGE) --build-arg WHEELS=local \
	  --build-arg BASE=$(BASE_IMAGE) --build-arg LANGS="$(IMAGE_LANGS)" \
	  --build-arg VERSION=$$(git describe --always --dirty 2>/dev/null || echo dev) $(IMAGE_BUILD_ARGS) .
	podman images $(IMAGE)
	$(PY) -m scripts.image_sbom $(IMAGE) --out $(SBOM_DIR)/$(subst :,-,$(notdir $(IMAGE))).cdx.json

lint: $(VENV)/.dev
	ruff check .
	lint-imports --no-cache
	mypy

# Three test processes for `make test`: most of a test's time is spent waiting on the
# processes it started, so three modules at once fit two cores (docs/testing.md: 12 min
# 44 s of pytest from a fresh clone against 18 min 35 s with two on one machine, the
# CPUs busy 85 % against 68 %). `make test-long` and `make test-floor` keep two
# (FOCUSED_TEST_PROCESSES): the long forms' soaks and clusters keep the cores busy
# themselves, and the floor's queue modules are few. TEST_PROCESSES=0 runs them in
# this one process (the summary's last lines: each process's seconds, and how busy the
# CPUs were). The longest groups go first, in tests/conftest.py's order
# (--no-loadscope-reorder: pytest-xdist would order them by their number of tests).
# `make test` leaves out the long forms (`-m "not long"`: the soaks, the clusters of
# their own, the image built and run, a second failover); `make test-long` runs them
# alone, and CI runs both (.ci/run). Each long form keeps a short form, or a test per
# promise, in `make test` (docs/testing.md, "Two tiers").
TEST_PROCESSES ?= 3
FOCUSED_TEST_PROCESSES ?= 2
processes = $(if $(filter-out 0,$(1)),-n $(1) --dist loadgroup --no-loadscope-reorder)
test: $(VENV)/.dev redis-server rabbitmq-server podman chromium promtool test-langs ocrmypdf-plugin lint
	pytest $(call processes,$(TEST_PROCESSES)) -m "not long"

test-long: $(VENV)/.dev redis-server rabbitmq-server podman test-langs
	pytest $(call processes,$(FOCUSED_TEST_PROCESSES)) -m long

# The two ends of requirements.txt's celery/kombu range: `make test` runs the top (pip's
# pick, in .venv, what the image locks); `make test-floor` runs the queue's tests at the
# floor, in .venv-floor: the service's requirements held to constraints-floor.txt, and
# the test runner's pins of requirements-dev.txt (rebuilt when any of them changes).
# CI runs it after `make test` (docs/testing.md, "Both ends of the celery/kombu range").
FLOOR_VENV := .venv-floor
FLOOR_TOOLS := pytest|pytest-timeout|pytest-xdist|execnet|psutil|httpx
FLOOR_TESTS := tests/units/test_kombu_overrides.py tests/queue/test_queue.py \
	tests/queue/test_big_messages.py tests/queue/test_hardening.py tests/queue/test_brokers.py \
	tests/queue/test_dead_host.py tests/queue/test_fair_shares.py tests/queue/test_reliability.py \
	tests/queue/test_held_records.py tests/queue/test_transport_commands.py \
	tests/queue/test_broker_migration.py

$(FLOOR_VENV)/.floor: requirements.txt requirements-dev.txt constraints-floor.txt
	rm -rf $(FLOOR_VENV)
	$(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/python -m pip install -q --upgrade pip
	$(FLOOR_VENV)/bin/python -m pip install -q -c constraints-floor.txt -r requirements.txt \
	  $$(grep -E '^($(FLOOR_TOOLS))==' requirements-dev.txt)
	touch $@

test-floor: $(FLOOR_VENV)/.floor redis-server rabbitmq-server
	$(FLOOR_VENV)/bin/python -m pip list | grep -Ei '^(celery|kombu|redis) '
	PATH=$(abspath $(FLOOR_VENV))/bin:$$PATH $(FLOOR_VENV)/bin/pytest $(call processes,$(FOCUSED_TEST_PROCESSES)) \
	  -m "not long" $(FLOOR_TESTS)

# OMP_THREAD_LIMIT=1: one OpenMP thread per tesseract, as the workers run it
# (OCR_TESSERACT_THREADS=1); Debian's tesseract on 2 cores is ~8x slower without it.
bench: $(VENV)/.bench redis-server rabbitmq-server bench-tools ocrmypdf-plugin
	OMP_THREAD_LIMIT=1 $(PY) -m bench

bench-quick: $(VENV)/.bench redis-server rabbitmq-server bench-tools ocrmypdf-plugin
	OMP_THREAD_LIMIT=1 $(PY) -m bench --quick

# Debian's chromium for the browser tests (Flower's workers page, the API's /docs page)
# and the Flower screenshot.
chromium:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else echo "chromium is missing: apt-get install chromium (Debian/Ubuntu)"; exit 1; fi; }

# promtool (Debian's prometheus package; its server is stopped if the install started
# it): the alert rules' unit tests and the dashboard's expressions (tests/deploy/
# test_monitoring.py).
promtool:
	@command -v promtool >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends prometheus && { service prometheus stop >/dev/null 2>&1 || true; }; \
	  else echo "promtool is missing: apt-get install prometheus (Debian/Ubuntu) or brew install prometheus (macOS)"; exit 1; fi; }

# docs/flower.png: Flower's workers page with a real worker, and docs/console.png: a
# job page of the console, taken by the screenshot tests in headless chromium (the
# tests fail here rather than skip without chromium).
screenshot: $(VENV)/.dev redis-server chromium
	FLOWER_SCREENSHOT=docs/flower.png pytest -q -p no:cacheprovider \
	  tests/clients/test_integration.py -k test_flower_dashboard_screenshot
	CONSOLE_SCREENSHOT=docs/console.png pytest -q -p no:cacheprovider \
	  tests/console/test_console.py -k test_a_job_page_screenshot

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache $(OCRMYPDF_VENV)
