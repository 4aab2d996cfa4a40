"""Every Redis key name the service writes beside Celery's own, in one place.

A key is made by a function here (`job_key(id)`, `api_job_key(id)`, ...): its shape is
decided once. The prefixes stay for the stores that scan or match a whole family
(blob names, the model registry, metrics). Imported by the stores in this package, the
model registry, the poison guard, the metrics exporter and the HTTP API; other code
asks those for keys rather than building them. Every key is under `ocr:` and every
key has a TTL, except the HTTP API's client tokens (`ocr:api:token:*`,
`ocr:api:clients`, `ocr:lane-weights`), which live until revoked, and the broker's
lanes (`ocr:lane:*`, `ocr:lanes:*`), which live like its queues.
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
DEAD_LETTER_COUNT_KEY = ROOT + "dead-letter:count"  # how many were ever refused
WORKERS_KEY = ROOT + "workers"        # hash: worker node -> its queues (tasks/state/liveness.py)
WAKE_PREFIX = ROOT + "wake:"          # a queue's doorbell (tasks/queue/transport.py)
# The broker's lanes (tasks/queue/lanes.py), kept like the queues' lists (no TTL): a
# client's lane of a queue's list, ocr:lane:<list>:<client>; per priority step, the
# ring of the clients with messages waiting in any queue, ocr:lanes:<step>, its turn
# (:turn) and their counts (:count); and the clients' weights (the API's token store).
LANE_PREFIX = ROOT + "lane:"
LANES_PREFIX = ROOT + "lanes:"
LANE_WEIGHTS_KEY = ROOT + "lane-weights"
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
# Batches (tasks/state/batch_store.py): ocr:batch:<id> and its :flight and :lock.
BATCH_PREFIX = ROOT + "batch:"
BATCHES_RUNNING_KEY = ROOT + "batches:running"  # set of the ids of unfinished batches


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


def api_webhook_key(client: str) -> str:
    """`ocr:api:webhook:<client>`: the client's callback signing secrets."""
    return f"{API_WEBHOOK_PREFIX}{client}"


def batch_key(batch_id: str, part: str = "") -> str:
    """`ocr:batch:<id>` (the record), `ocr:batch:<id>:flight` (its jobs), `:lock`."""
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


def wake_key(queue: str) -> str:
    """`ocr:wake:<queue>`: the queue's doorbell, one item at most, rung by each publish.

    Idle workers wait on it (BLPOP) instead of on the queue's lists, so that taking a
    message stays one atomic server-side step (tasks/queue/transport.py).
    """
    return f"{WAKE_PREFIX}{queue}"


def lane_key(list_key: str, client: str) -> str:
    """`ocr:lane:<list>:<client>`: `client`'s messages waiting in a queue's list."""
    return f"{LANE_PREFIX}{list_key}:{client}"


def lanes_key(step: int) -> str:
    """`ocr:lanes:<step>`: the ring of clients with messages of priority `step` waiting.

    Beside it, `:turn` (hash: the pages left in a client's turn) and `:count` (hash: a
    client's messages waiting in every queue at that step).
    """
    return f"{LANES_PREFIX}{step}"


def doc_key(doc_id: str, part: str) -> str:
    """`ocr:doc:<id>:<part>` of a fanned-out PDF (`meta`, `pages`)."""
    return f"{DOC_PREFIX}{doc_id}:{part}"
