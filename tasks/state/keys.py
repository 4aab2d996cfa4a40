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
messages) are not here: their one owner is tasks/broker/layout.py. FAMILIES declares
each family of these keys with the roles that write or only read it: the Redis users
and the ACL matrix are built from it (tasks/redis_users.py).
"""

from __future__ import annotations

import datetime as dt

from tasks.records.key_families import KeyFamily

ROOT = "ocr:"
# Celery's result backend: celery-task-meta-<task id> (Celery's name, not ours).
RESULT_PREFIX = "celery-task-meta-"
BLOB_PREFIX = ROOT + "blob:"          # input bytes: ocr:blob:<id>
API_BLOB_START = "api."               # an API upload's: ocr:blob:api.<client>.<hex>
# A job's sealed arguments (its password, its ground truth), apart from its message:
# ocr:sealed:<random token> (tasks/state/job_control.py).
SEALED_PREFIX = ROOT + "sealed:"
CACHE_PREFIX = ROOT + "cache:"        # result cache: ocr:cache:<sha256>
OUTPUT_PREFIX = ROOT + "output:"      # produced files: ocr:output:<job id>
JOB_PREFIX = ROOT + "job:"            # per-job control hash and ocr:job:<id>:cancelled
DOC_PREFIX = ROOT + "doc:"  # fan-out join: ocr:doc:<id>:meta|escalation|pages|merged|cancel
DELIVERY_PREFIX = ROOT + "deliveries:"  # poison guard: starts of one task id
# model lifecycle (tasks/models/registry.py): last-used, loaded:<host>:<pid>:<model>,
# configured:<host>:<pid>, report[:<host>:<dir>], prune-lock:<host>:<dir>,
# scheduled-audit, audit-run:<run>:<host>:<dir>
MODELS_PREFIX = ROOT + "models:"
MODELS_LAST_USED_KEY = MODELS_PREFIX + "last-used"   # hash: model entry -> its last use
MODELS_LOADED_PREFIX = MODELS_PREFIX + "loaded:"      # <host>:<pid>:<model>
MODELS_CONFIGURED_PREFIX = MODELS_PREFIX + "configured:"  # <host>:<pid>
MODELS_REPORT_KEY = MODELS_PREFIX + "report"          # the latest audit report, any host
MODELS_HOST_REPORT_PREFIX = MODELS_PREFIX + "report:"  # <host>:<model dir>
MODELS_PRUNE_LOCK_KEY = MODELS_PREFIX + "prune-lock"  # :<host>:<model dir>
MODELS_SCHEDULED_KEY = MODELS_PREFIX + "scheduled-audit"
MODELS_RUN_PREFIX = MODELS_PREFIX + "audit-run:"      # <run>:<host>:<model dir>
METRICS_PREFIX = ROOT + "metrics:"    # counters and gauges (tasks/state/metrics.py)
METRICS_NODES_KEY = METRICS_PREFIX + "nodes"    # set: the nodes that wrote metrics
METRICS_HISTOGRAMS_KEY = METRICS_PREFIX + "histograms"  # hash: every histogram's buckets
# hash: queue -> when its oldest waiting message was sent (tasks/metrics/queue_depth.py)
METRICS_OLDEST_KEY = METRICS_PREFIX + "oldest"
WORKERS_KEY = ROOT + "workers"        # hash: worker node -> its queues (tasks/state/liveness.py)
# Jobs by client, newest first (tasks/state/job_index.py): sorted sets of job ids.
JOBS_PREFIX = ROOT + "jobs:"
JOBS_ALL_KEY = JOBS_PREFIX + "all"    # every client's jobs (operators: submit.py jobs)
USAGE_PREFIX = ROOT + "usage:"       # pages read per client: ocr:usage:day|month:<date>
USAGE_HELD_PREFIX = USAGE_PREFIX + "held:"  # pages held for a client's jobs sent: <client>
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
API_RESULTS_PREFIX = API_PREFIX + "results:"  # <client>: its jobs' stored results, counted
API_SESSION_PREFIX = API_PREFIX + "session:"  # a console sign-in (tasks/api/sessions.py)
# Page previews (tasks/state/previews.py): ocr:preview:<job id>:<page>, as long as results;
# ocr:preview:<job id>:source names the job whose previews a cached answer shows.
PREVIEW_PREFIX = ROOT + "preview:"
# Line corrections (tasks/state/corrections.py): ocr:corrections:<client>,
# ocr:corrections:<client>:<sha256> and their size ocr:corrections:<client>:bytes (no TTL).
CORRECTIONS_PREFIX = ROOT + "corrections:"
# Batches (tasks/state/batch_store.py): ocr:batch:<id> and its :flight, :seen and :lock.
BATCH_PREFIX = ROOT + "batch:"
BATCHES_PREFIX = ROOT + "batches:"
BATCHES_RUNNING_KEY = BATCHES_PREFIX + "running"  # set of the ids of unfinished batches
# The golden set's scores (tasks/state/golden.py): ocr:golden:history (a list, newest
# first), ocr:golden:run:<run>:<engine> (a run's documents), ocr:golden:job:<job id>.
GOLDEN_PREFIX = ROOT + "golden:"
GOLDEN_HISTORY_KEY = GOLDEN_PREFIX + "history"
# The callback outbox (tasks/state/callback_outbox.py): ocr:callbacks:<delivery id>, and
# ocr:callbacks:due (a sorted set: each delivery by when it is due) and :wake (a doorbell).
CALLBACKS_PREFIX = ROOT + "callbacks:"
CALLBACKS_DUE_KEY = CALLBACKS_PREFIX + "due"
CALLBACKS_WAKE_KEY = CALLBACKS_PREFIX + "wake"


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


def result_key(job_id: str) -> str:
    """`celery-task-meta-<job id>`: a job's record in Celery's Redis result backend."""
    return f"{RESULT_PREFIX}{job_id}"


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


def sealed_key(token: str) -> str:
    """`ocr:sealed:<token>`: a job's sealed arguments (hash), named in its message only."""
    return f"{SEALED_PREFIX}{token}"


def api_blob_key(client: str, token: str) -> str:
    """`ocr:blob:api.<client>.<hex>`: an input uploaded through the API (its owner named)."""
    return f"{BLOB_PREFIX}{API_BLOB_START}{client}.{token}"


def api_rate_key(client: str, minute: int) -> str:
    """`ocr:api:rate:<client>:<minute>`: the client's request counter of that minute."""
    return f"{API_RATE_PREFIX}{client}:{minute}"


def api_bytes_key(client: str) -> str:
    """`ocr:api:bytes:<client>`: bytes of the client's inputs waiting in Redis."""
    return f"{API_BYTES_PREFIX}{client}"


def api_results_key(client: str) -> str:
    """`ocr:api:results:<client>`: its jobs' stored results (`<bytes>:<id>` by end)."""
    return f"{API_RESULTS_PREFIX}{client}"


def api_results_bytes_key(client: str) -> str:
    """`ocr:api:results:<client>:bytes`: the bytes of its jobs' stored results."""
    return f"{api_results_key(client)}:bytes"


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


def callback_key(delivery_id: str) -> str:
    """`ocr:callbacks:<delivery id>`: one callback of an ending, kept until it is sent."""
    return f"{CALLBACKS_PREFIX}{delivery_id}"


def job_ended_key(job_id: str) -> str:
    """`ocr:job:<id>:ended`: the one exit's claim; once set, the job takes no writes."""
    return f"{job_key(job_id)}:ended"


def job_summary_key(job_id: str) -> str:
    """`ocr:job:<id>:summary`: an ended job's summary (JSON), what status reads show."""
    return f"{job_key(job_id)}:summary"


def job_notice_key(job_id: str) -> str:
    """`ocr:job:<id>:notice`: a one-entry stream written once the job has ended.

    Clients block on it (XREAD, many jobs at once) instead of polling the result.
    """
    return f"{job_key(job_id)}:notice"


def jobs_client_key(client: str) -> str:
    """`ocr:jobs:client:<name>`: one client's jobs by the time they were sent."""
    return f"{JOBS_PREFIX}client:{client}"


def doc_key(doc_id: str, part: str) -> str:
    """`ocr:doc:<id>:<part>` of a fanned-out PDF (`meta`, `escalation`, `pages`)."""
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


def metrics_node_key(node: str) -> str:
    """`ocr:metrics:node:<node>`: a worker node's counters."""
    return f"{METRICS_PREFIX}node:{node}"


def metrics_children_key(node: str) -> str:
    """`ocr:metrics:children:<node>`: the pool children of a node that wrote gauges."""
    return f"{METRICS_PREFIX}children:{node}"


def metrics_child_key(node: str, pid: int | str) -> str:
    """`ocr:metrics:child:<node>:<pid>`: one pool child's gauges."""
    return f"{METRICS_PREFIX}child:{node}:{pid}"


def models_loaded_key(host: str, pid: int | str, model: str) -> str:
    """`ocr:models:loaded:<host>:<pid>:<model>`: a pool child that has the model loaded."""
    return f"{MODELS_LOADED_PREFIX}{host}:{pid}:{model}"


def models_configured_key(host: str, pid: int | str) -> str:
    """`ocr:models:configured:<host>:<pid>`: a pool child's configured model."""
    return f"{MODELS_CONFIGURED_PREFIX}{host}:{pid}"


def models_host_report_key(host: str, model_dir: str) -> str:
    """`ocr:models:report:<host>:<model dir>`: the latest audit report of a host's directory."""
    return f"{MODELS_HOST_REPORT_PREFIX}{host}:{model_dir}"


def models_run_key(run: str, scope: str) -> str:
    """`ocr:models:audit-run:<run>:<host>:<model dir>`: one host directory's claim of a run."""
    return f"{MODELS_RUN_PREFIX}{run}:{scope}"


def models_prune_lock_key(scope: str = "") -> str:
    """`ocr:models:prune-lock[:<host>:<model dir>]`: the lock an audit holds while it prunes."""
    return f"{MODELS_PRUNE_LOCK_KEY}:{scope}" if scope else MODELS_PRUNE_LOCK_KEY


def usage_held_key(client: str) -> str:
    """`ocr:usage:held:<client>`: pages held for the client's jobs sent (job -> pages)."""
    return f"{USAGE_HELD_PREFIX}{client}"


def usage_job_key(job: str) -> str:
    """`ocr:usage:job:<id>`: the pages of a job already counted (a set)."""
    return f"{USAGE_PREFIX}job:{job}"


def usage_day_key(day: dt.date) -> str:
    """`ocr:usage:day:<YYYY-MM-DD>`: the pages each client read that day."""
    return f"{USAGE_PREFIX}day:{day.isoformat()}"


def usage_month_key(day: dt.date) -> str:
    """`ocr:usage:month:<YYYY-MM>`: the pages each client read in `day`'s month."""
    return f"{USAGE_PREFIX}month:{day.year:04d}-{day.month:02d}"


def usage_engines_key(day: dt.date) -> str:
    """`ocr:usage:day:<YYYY-MM-DD>:engines`: the pages each engine read that day."""
    return f"{usage_day_key(day)}:engines"


# Who touches the state's keys (FAMILIES): the processes that run jobs (workers, the
# control worker) and those that send them (the HTTP API, the clients).
RUNNERS = ("worker", "control")
SENDERS = ("api", "client")


def _all(prefix: str) -> str:
    """The Redis glob of every key under `prefix`."""
    return prefix + "*"


def _all_but(prefix: str, start: str) -> tuple[str, ...]:
    """Redis globs of every key under `prefix` but those under `prefix + start`.

    A glob cannot say "not this prefix": one glob for each letter of `start`, as
    `ocr:blob:[^a]*`, `ocr:blob:a[^p]*`, ...
    """
    return tuple(f"{prefix}{start[:i]}[^{start[i]}]*" for i in range(len(start)))


# The state's key families, each with the roles that write or only read it: the Redis
# users and docs/security.md's matrix are built from these (tasks/redis_users.py).
FAMILIES: tuple[KeyFamily, ...] = (
    KeyFamily("results", (_all(RESULT_PREFIX),), (RESULT_PREFIX + "1",),
              writers=RUNNERS, readers=(*SENDERS, "beat", "flower")),
    KeyFamily("job records", (_all(JOB_PREFIX),), (job_key("1"), job_cancelled_key("1")),
              writers=(*RUNNERS, *SENDERS)),
    # A client stores its input and names it in its message; it reads none back, nor
    # writes an input uploaded through the API.
    KeyFamily("inputs sent by clients", _all_but(BLOB_PREFIX, API_BLOB_START),
              (BLOB_PREFIX + "0" * 32, BLOB_PREFIX + "report-01", BLOB_PREFIX + "ap.x.1"),
              writers=(*RUNNERS, "api"), appenders=("client",)),
    # A sender writes a job's sealed arguments under a random name its message alone
    # carries: only the consumers, who read messages, find them.
    KeyFamily("sealed job arguments", (_all(SEALED_PREFIX),), (sealed_key("0" * 32),),
              writers=RUNNERS, appenders=SENDERS),
    KeyFamily("inputs uploaded through the API", (_all(BLOB_PREFIX + API_BLOB_START),),
              (api_blob_key("alice", "0" * 32),), writers=(*RUNNERS, "api")),
    KeyFamily("documents' pages (the fan-out's join)", (_all(DOC_PREFIX),),
              (doc_key("1", "meta"), doc_key("1", "escalation")),
              writers=RUNNERS, readers=SENDERS),
    KeyFamily("job lists", (_all(JOBS_PREFIX),), (jobs_client_key("alice"), JOBS_ALL_KEY),
              writers=(*RUNNERS, "api"), appenders=("client",)),
    KeyFamily("batches", (_all(BATCH_PREFIX), _all(BATCHES_PREFIX)),
              (batch_key("1"), BATCHES_RUNNING_KEY),
              writers=(*RUNNERS, *SENDERS), readers=("metrics",)),
    KeyFamily("jobs in flight", (_all(API_INFLIGHT_PREFIX),), (api_inflight_key("alice"),),
              writers=(*RUNNERS, "api")),
    KeyFamily("API job records", (_all(API_JOB_PREFIX),), (api_job_key("1"),),
              writers=(*RUNNERS, "api")),
    KeyFamily("API tokens", (_all(API_TOKEN_PREFIX),), (api_token_key("1"),),
              readers=("api",)),
    KeyFamily("clients' records", (API_CLIENTS_KEY,), (API_CLIENTS_KEY,),
              readers=(*RUNNERS, "api")),
    KeyFamily("webhook secrets", (_all(API_WEBHOOK_PREFIX),), (api_webhook_key("alice"),),
              readers=RUNNERS),
    KeyFamily("uploads being received", (_all(API_UPLOAD_PREFIX),), (api_upload_key("1"),),
              writers=("api",)),
    # the batch driver (the control worker) sums a client's bytes before it sends a
    # document (STORED drops what has gone from the sum as it reads it)
    KeyFamily("bytes quotas", (_all(API_BYTES_PREFIX),), (api_bytes_key("alice"),),
              writers=("api", "control")),
    KeyFamily("stored results' count", (_all(API_RESULTS_PREFIX),),
              (api_results_key("alice"), api_results_bytes_key("alice")),
              writers=(*RUNNERS, "api")),
    KeyFamily("Idempotency-Keys and request rates",
              (_all(API_IDEMPOTENCY_PREFIX), _all(API_RATE_PREFIX)),
              (api_idempotency_key("alice", "1"), api_rate_key("alice", 1)),
              writers=("api",)),
    KeyFamily("console sessions", (_all(API_SESSION_PREFIX),), (api_session_key("1"),),
              writers=("api",)),
    KeyFamily("line corrections and their bytes", (_all(CORRECTIONS_PREFIX),),
              (corrected_pages_key("alice"), corrections_bytes_key("alice")),
              writers=("api",), readers=("client", *RUNNERS)),
    KeyFamily("page usage", (_all(USAGE_PREFIX),),
              (usage_day_key(dt.date(2026, 1, 1)), usage_month_key(dt.date(2026, 1, 1)),
               usage_engines_key(dt.date(2026, 1, 1)), usage_job_key("1")),
              writers=("worker",), readers=("control", "api")),
    KeyFamily("pages held for jobs sent", (_all(USAGE_HELD_PREFIX),),
              (usage_held_key("alice"),), writers=(*RUNNERS, "api")),
    KeyFamily("result cache", (_all(CACHE_PREFIX),), (cache_key("1"),), writers=("worker",)),
    KeyFamily("outputs", (_all(OUTPUT_PREFIX),), (output_key("1"),),
              writers=RUNNERS, readers=SENDERS),
    KeyFamily("page previews", (_all(PREVIEW_PREFIX),), (preview_key("1", 1),),
              writers=("worker",), readers=("api",)),
    KeyFamily("poison guard's counts", (_all(DELIVERY_PREFIX),), (delivery_key("1"),),
              writers=RUNNERS),
    KeyFamily("metrics", (_all(METRICS_PREFIX),),
              (METRICS_HISTOGRAMS_KEY, metrics_node_key("w1@host")),
              writers=RUNNERS, readers=("metrics",)),
    KeyFamily("the model registry", (_all(MODELS_PREFIX),),
              (MODELS_LAST_USED_KEY, MODELS_LOADED_PREFIX + "h:1:m"),
              writers=("worker",)),
    KeyFamily("the golden set's scores", (_all(GOLDEN_PREFIX),), (GOLDEN_HISTORY_KEY,),
              writers=("worker",), readers=("metrics",)),
    KeyFamily("the callback outbox", (_all(CALLBACKS_PREFIX),),
              (callback_key("1.SUCCESS.http"), CALLBACKS_DUE_KEY), writers=RUNNERS),
    KeyFamily("workers' presence", (WORKERS_KEY,), (WORKERS_KEY,),
              writers=RUNNERS, readers=(*SENDERS, "flower", "metrics")),
)
