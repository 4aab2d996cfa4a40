# The OCR queue's one image: every Procfile role (api, worker with any engine, control,
# beat, flower, metrics) runs from it as the Procfile's own line, started by `sh -c`
# with only environment variables set (compose.yaml, deploy/kubernetes/, docs/deploy.md):
#
#   docker build -t ocr-queue .            # anywhere the package index is reachable
#   make image                             # here: local base image and host-built wheels
#
# Build arguments:
#   LANGS    tesseract languages, Debian's tesseract-ocr-<lang> packages
#            (default "eng vie ell chi_sim"; `lang=auto` and OCR_LANG need them)
#   WHEELS   "index" (default): Python packages from the package index; "local": only
#            from ./wheels (`make wheels` downloads the lock's files there), nothing
#            downloaded. Either way every package is requirements-image.lock's, each file
#            checked against its hash (`pip install --require-hashes`)
#   MLX      "" (default): no in-process VLM (workers use tesseract, rapidocr or
#            vlm-api); "cpu" or "cuda": requirements-vlm.txt with mlx[cpu] or mlx[cuda]
#            for OCR_ENGINE=mlx-vlm (cuda: run with the NVIDIA container toolkit; not
#            built by the tests, well over the 900 MB of the default image, and not in
#            the lock: those packages are pinned by version only)
#   BASE     the Debian base, by its version and digest (`make image` gives its own,
#            made from Debian's packages)
#   VERSION, SOURCE   the OCI labels
# No model weights are in the image: mount a model directory (OCR_MODEL_DIR) or point
# vlm-api workers at an inference server.
ARG BASE=debian:12.11-slim@sha256:b1a741487078b369e78119849663d7f1a5341ef2768798f7b7406c4240f86aef

FROM ${BASE} AS build
ARG WHEELS=index
ARG MLX=
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
# Only the files it installs from (requirements-dev.txt changing rebuilds nothing).
COPY requirements-image.lock requirements.txt requirements-vlm.txt /src/
# ./wheels holds only its README unless `make wheels` filled it (git-ignored otherwise).
COPY wheels/ /wheels/
# The engines of the default image: tesseract (requirements.txt), rapidocr, the vlm-api
# client, boto3 for s3:// inputs, exactly as requirements-image.lock pins them (`make
# lock`), every file checked against its hash, nothing else pulled in (--no-deps: the
# lock holds every dependency). OpenCV without GUI: rapidocr only needs cv2, and
# opencv-python's cv2 wants libGL, which a slim image does not have.
RUN set -eu; \
    if [ "$WHEELS" = local ]; then from="--no-index --find-links /wheels"; else from=""; fi; \
    pip() { /opt/venv/bin/pip --disable-pip-version-check --no-cache-dir "$@"; }; \
    pip install $from --require-hashes --no-deps -r /src/requirements-image.lock; \
    if [ -n "$MLX" ]; then \
      sed "s/^mlx\[cpu\]/mlx[$MLX]/" /src/requirements-vlm.txt > /src/requirements-vlm-image.txt; \
      pip install $from -r /src/requirements-vlm-image.txt; \
    fi; \
    /opt/venv/bin/python -c 'import cv2, tesserocr, pymupdf, rapidocr_onnxruntime, boto3, openai'; \
    pip uninstall -y pip setuptools; \
    find /opt/venv -name tests -path '*/site-packages/*/tests' -prune -exec rm -rf {} +

FROM ${BASE}
ARG LANGS="eng vie ell chi_sim"
ARG VERSION=dev
ARG SOURCE=https://github.com/ocr-queue/ocr-queue
LABEL org.opencontainers.image.title="ocr-queue" \
      org.opencontainers.image.description="OCR job queue: Celery workers (tesseract, rapidocr, vlm-api), HTTP API, beat, Flower, metrics" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
# python3 for the venv; Debian's traineddata per language; redis-server for compose's
# own Redis (the same image, so nothing else is pulled); ca-certificates for https
# inputs and callbacks; tini as the first process. No compiler, no pip cache, no apt lists.
RUN set -eu; \
    langs=""; for l in $LANGS; do \
      langs="$langs tesseract-ocr-$(echo "$l" | tr 'A-Z_' 'a-z-')"; done; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 ca-certificates redis-server tini $langs; \
    rm -rf /var/lib/apt/lists/* /var/cache/apt/* /usr/share/doc/* /usr/share/man/* \
      /usr/share/locale/*; \
    groupadd --system --gid 10001 ocr; \
    useradd --system --uid 10001 --gid ocr --home-dir /app --shell /usr/sbin/nologin ocr
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY LICENSE Procfile submit.py ocr_admin.py worker_config.py pyproject.toml ./
COPY tasks/ tasks/
COPY scripts/ scripts/
# var/: beat's schedule, Flower's database and password, the project's Redis data; owned
# by the service's user so named volumes mounted there inherit it.
RUN python3 -m compileall -q tasks scripts *.py \
 && mkdir -p var/redis && chown -R ocr:ocr var
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    API_ADDRESS=0.0.0.0 \
    METRICS_ADDRESS=0.0.0.0 \
    FLOWER_ADDRESS=0.0.0.0
USER 10001:10001
EXPOSE 8000 5555 9808
# tini is PID 1 and passes SIGTERM on to the role: a process that is PID 1 itself never
# gets a signal it has no handler for, so a worker stopped while it boots (before Celery
# installs its handlers) or a role with no handler would wait out the whole grace
# period and be killed. Give a role's line as the command (CMD, compose's `command`,
# Kubernetes' `args`), not as the entrypoint.
ENTRYPOINT ["tini", "--"]
# The Procfile's worker line (compose.yaml and the manifests give each role its own).
CMD ["sh", "-c", "exec celery -A tasks worker --without-mingle --without-gossip --heartbeat-interval=5 --loglevel=${LOG_LEVEL:-INFO} --queues=ocr-control,${OCR_QUEUES:-ocr}"]
