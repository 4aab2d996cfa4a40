"""Every Redis key name the service writes beside Celery's own, in one place.

Imported by the stores in this package, the model registry, the poison guard and the
metrics exporter and the HTTP API; other code asks those for keys rather than building
them. Every key is under `ocr:` and every key has a TTL, except the HTTP API's client
tokens (`ocr:api:token:*`, `ocr:api:clients`), which live until revoked.
"""

from __future__ import annotations

ROOT = "ocr:"
BLOB_PREFIX = ROOT + "blob:"          # input bytes: ocr:blob:<id>
CACHE_PREFIX = ROOT + "cache:"        # result cache: ocr:cache:<sha256>
OUTPUT_PREFIX = ROOT + "output:"      # produced files: ocr:output:<job id>
JOB_PREFIX = ROOT + "job:"            # per-job control hash and ocr:job:<id>:cancelled
DOC_PREFIX = ROOT + "doc:"            # fan-out join: ocr:doc:<id>:meta|pages|merged
DELIVERY_PREFIX = ROOT + "deliveries:"  # poison guard: starts of one task id
# model lifecycle (tasks/models/registry.py): last-used, loaded:<host>:<pid>:<model>,
# configured:<host>:<pid>, report[:<host>:<dir>], prune-lock:<host>:<dir>,
# scheduled-audit, audit-run:<run>:<host>:<dir>
MODELS_PREFIX = ROOT + "models:"
METRICS_PREFIX = ROOT + "metrics:"    # counters and gauges (tasks/state/metrics.py)
DEAD_LETTER_KEY = ROOT + "dead-letter"  # refused broker messages (a capped list)
WORKERS_KEY = ROOT + "workers"        # hash: worker node -> its queues (tasks/state/liveness.py)
# The HTTP API (tasks/api/): clients' tokens and the jobs they sent.
API_PREFIX = ROOT + "api:"
API_TOKEN_PREFIX = API_PREFIX + "token:"      # sha256 of a token -> client record (no TTL)
API_CLIENTS_KEY = API_PREFIX + "clients"      # hash: client name -> JSON record (no TTL)
API_JOB_PREFIX = API_PREFIX + "job:"          # hash per job: owner, output, filename
API_IDEMPOTENCY_PREFIX = API_PREFIX + "idem:"  # <client>:<sha256 of key> -> job id
API_RATE_PREFIX = API_PREFIX + "rate:"        # <client>:<minute> request counter
API_INFLIGHT_PREFIX = API_PREFIX + "inflight:"  # sorted set per client: open job ids
API_UPLOAD_PREFIX = API_PREFIX + "upload:"    # an upload being received (renamed to a blob)
API_WEBHOOK_PREFIX = API_PREFIX + "webhook:"  # hash per client: its callback signing secrets
API_BYTES_PREFIX = API_PREFIX + "bytes:"      # <client>: bytes of its inputs waiting in Redis


def job_ended_key(job_id: str) -> str:
    """`ocr:job:<id>:ended`: the one exit's claim; once set, the job takes no writes."""
    return f"{JOB_PREFIX}{job_id}:ended"


def doc_key(doc_id: str, part: str) -> str:
    """`ocr:doc:<id>:<part>` of a fanned-out PDF (`meta`, `pages`)."""
    return f"{DOC_PREFIX}{doc_id}:{part}"
