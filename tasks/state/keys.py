"""Every Redis key name the service writes beside Celery's own, in one place.

A key is made by a function here (`job_key(id)`, `api_job_key(id)`, ...): its shape is
decided once. The prefixes stay for the stores that scan or match a whole family
(blob names, the model registry, metrics). Imported by the stores in this package, the
model registry, the poison guard, the metrics exporter and the HTTP API; other code
asks those for keys rather than building them. Every key is under `ocr:` and every
key has a TTL, except the HTTP API's client tokens (`ocr:api:token:*`,
`ocr:api:clients`), which live until revoked, and a client's line corrections
(`ocr:corrections:*`), a person's work, bounded instead: a few versions a line
(OCR_CORRECTION_VERSIONS), counted in the client's bytes quota. The broker's
keys (queues' lists, lanes, rings, wake-ups, dead letters, kombu's unacknowledged
messages) are not here: their one owner is tasks/broker/layout.py.
"""

from __future__ import annotations

ROOT = "ocr:"
BLOB_PREFIX = ROOT + "blob:"          # input bytes: ocr:blob:<id>
CACHE_PREFIX = ROOT + "cache:"        # result cache: ocr:cache:<sha256>
OUTPUT_PREFIX = ROOT + "output:"      # produced files: ocr:output:<job id>
JOB_PREFIX = ROOT + "job:"            # per-job control hash and ocr:job:<id>:cancelled
DOC_PREFIX = ROOT + "doc:"            # fan-out join: ocr:doc:<id>:meta|pages|merged|cancel
DELIVERY_PREFIX = ROOT + "deliveries:"  # poison guard: starts of one task id
# model lifecycle (tasks/models/registry.py): last-used, loaded:<host>:<pid>:<model>,
# configured:<host>:<pid>, report[:<host>:<dir>], prune-lock:<host>:<dir>,
# scheduled-audit, audit-run:<run>:<host>:<dir>
MODELS_PREFIX = ROOT + "models:"
METRICS_PREFIX = ROOT + "metrics:"    # counters and gauges (tasks/state/metrics.py)
WORKERS_KEY = ROOT + "workers"        # hash: worker node -> its queues (tasks/state/liveness.py)
# Jobs by client, newest first (tasks/state/job_index.py): sorted sets of job ids.
JOBS_PREFIX = ROOT + "jobs:"
JOBS_ALL_KEY = JOBS_PREFIX + "all"    # every client's jobs (operators: submit.py jobs)
USAGE_PREFIX = ROOT + "usage:"       # pages read per client: ocr:usage:day|month:<date>
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
API_SESSION_PREFIX = API_PREFIX + "session:"  # a console sign-in (tasks/api/sessions.py)
# Page previews (tasks/state/previews.py): ocr:preview:<job id>:<page>, as long as results;
# ocr:preview:<job id>:source names the job whose previews a cached answer shows.
PREVIEW_PREFIX = ROOT + "preview:"
# Line corrections (tasks/state/corrections.py): ocr:corrections:<client>,
# ocr:corrections:<client>:<sha256> and their size ocr:corrections:<client>:bytes (no TTL).
CORRECTIONS_PREFIX = ROOT + "corrections:"
# Batches (tasks/state/batch_store.py): ocr:batch:<id> and its :flight, :seen and :lock.
BATCH_PREFIX = ROOT + "batch:"
BATCHES_RUNNING_KEY = ROOT + "batches:running"  # set of the ids of unfinished batches
# The golden set's scores (tasks/state/golden.py): ocr:golden:history (a list, newest
# first), ocr:golden:run:<run>:<engine> (a run's documents), ocr:golden:job:<job id>.
GOLDEN_PREFIX = ROOT + "golden:"
GOLDEN_HISTORY_KEY = GOLDEN_PREFIX + "history"


def golden_run_key(run: str, engine: str) -> str:
    """`ocr:golden:run:<run>:<engine>`: a golden-set run's scores of one engine, by document."""
    return f"{GOLDEN_PREFIX}run:{run}:{engine}"


def golden_job_key(job_id: str) -> str:
    """`ocr:golden:job:<id>`: which run, engine and document a golden-set job reads."""
    return f"{GOLDEN_PREFIX}job:{job_id}"


def job_key(job_id: str) -> str:
    """`ocr:job:<id>`: the job's control hash (blob, filename, queue, owner, cancelled)."""
    return f"{JOB_PREFIX}{job_id}"


def job_cancelled_key(job_id: str) -> str:
    """`ocr:job:<id>:cancelled`: a cancelled job's result (the pages it kept)."""
    return f"{JOB_PREFIX}{job_id}:cancelled"


def output_key(job_id: str) -> str:
    """`ocr:output:<job id>`: the file a job produced (searchable PDF, hOCR, ALTO)."""
    return f"{OUTPUT_PREFIX}{job_id}"


def cache_key(digest: str) -> str:
    """`ocr:cache:<sha256>`: a cached result."""
    return f"{CACHE_PREFIX}{digest}"


def delivery_key(task_id: str) -> str:
    """`ocr:deliveries:<task id>`: the poison guard's count of a task's starts."""
    return f"{DELIVERY_PREFIX}{task_id}"


def api_job_key(job_id: str) -> str:
    """`ocr:api:job:<id>`: the HTTP API's record of a job (owner, output, filename)."""
    return f"{API_JOB_PREFIX}{job_id}"


def api_idempotency_key(client: str, digest: str) -> str:
    """`ocr:api:idem:<client>:<sha256 of the Idempotency-Key>` -> the job it made."""
    return f"{API_IDEMPOTENCY_PREFIX}{client}:{digest}"


def api_inflight_key(client: str) -> str:
    """`ocr:api:inflight:<client>`: sorted set of the client's unfinished job ids."""
    return f"{API_INFLIGHT_PREFIX}{client}"


def api_upload_key(token: str) -> str:
    """`ocr:api:upload:<hex>`: an upload being received (renamed to a blob)."""
    return f"{API_UPLOAD_PREFIX}{token}"


def api_blob_key(client: str, token: str) -> str:
    """`ocr:blob:api.<client>.<hex>`: an input uploaded through the API (its owner named)."""
    return f"{BLOB_PREFIX}api.{client}.{token}"


def api_rate_key(client: str, minute: int) -> str:
    """`ocr:api:rate:<client>:<minute>`: the client's request counter of that minute."""
    return f"{API_RATE_PREFIX}{client}:{minute}"


def api_bytes_key(client: str) -> str:
    """`ocr:api:bytes:<client>`: bytes of the client's inputs waiting in Redis."""
    return f"{API_BYTES_PREFIX}{client}"


def api_token_key(digest: str) -> str:
    """`ocr:api:token:<sha256 of a token>` -> the client's record (no TTL)."""
    return f"{API_TOKEN_PREFIX}{digest}"


def api_session_key(digest: str) -> str:
    """`ocr:api:session:<sha256 of the cookie>`: a console session (JSON, with a TTL)."""
    return f"{API_SESSION_PREFIX}{digest}"


def api_webhook_key(client: str) -> str:
    """`ocr:api:webhook:<client>`: the client's callback signing secrets."""
    return f"{API_WEBHOOK_PREFIX}{client}"


def batch_key(batch_id: str, part: str = "") -> str:
    """`ocr:batch:<id>` (the record), `:flight` (its jobs), `:seen` (its reads), `:lock`."""
    return f"{BATCH_PREFIX}{batch_id}" + (f":{part}" if part else "")


def job_ended_key(job_id: str) -> str:
    """`ocr:job:<id>:ended`: the one exit's claim; once set, the job takes no writes."""
    return f"{job_key(job_id)}:ended"


def job_notice_key(job_id: str) -> str:
    """`ocr:job:<id>:notice`: a one-entry stream written once the job has ended.

    Clients block on it (XREAD, many jobs at once) instead of polling the result.
    """
    return f"{job_key(job_id)}:notice"


def jobs_client_key(client: str) -> str:
    """`ocr:jobs:client:<name>`: one client's jobs by the time they were sent."""
    return f"{JOBS_PREFIX}client:{client}"


def doc_key(doc_id: str, part: str) -> str:
    """`ocr:doc:<id>:<part>` of a fanned-out PDF (`meta`, `pages`)."""
    return f"{DOC_PREFIX}{doc_id}:{part}"


def preview_key(job_id: str, page: int) -> str:
    """`ocr:preview:<job id>:<page>`: the page image as the engine read it (WebP)."""
    return f"{PREVIEW_PREFIX}{job_id}:{page}"


def preview_source_key(job_id: str) -> str:
    """`ocr:preview:<job id>:source`: the job whose previews job `job_id` shows (a cache hit)."""
    return f"{PREVIEW_PREFIX}{job_id}:source"


def corrections_key(client: str, digest: str) -> str:
    """`ocr:corrections:<client>:<sha256>`: a client's corrected lines of one document."""
    return f"{CORRECTIONS_PREFIX}{client}:{digest}"


def corrected_pages_key(client: str) -> str:
    """`ocr:corrections:<client>`: the client's corrected pages, `<sha256>:<page>` each."""
    return f"{CORRECTIONS_PREFIX}{client}"


def corrections_bytes_key(client: str) -> str:
    """`ocr:corrections:<client>:bytes`: the bytes of the client's correction records."""
    return f"{CORRECTIONS_PREFIX}{client}:bytes"
