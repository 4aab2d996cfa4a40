"""What the HTTP API does, without HTTP: clients, limits, submit, status, results, cancel.

Runs in the `api` process, called from its routes (in worker threads: every call here
blocks on Redis). Talks only to Redis and sends tasks by name through `OcrClient`'s
app: no engine, MLX or PyMuPDF import.

Isolation: each job the API sends has a record `ocr:api:job:<id>` naming its owner;
a client asking about a job it does not own gets 404, exactly as for a job that does
not exist. Inputs go to blob keys made here from 128 random bits and never shown to
clients (results are answered without `input_blob` or output keys), and API clients
cannot send `blob` or `merge_from` at all. The owner is also recorded as
`owner=api:<client>` in the job's control hash (`ocr:job:<id>`) for the workers.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import redis

from tasks import inference_server as vlm_server
from tasks.api._access import ClientAccess, own_limit
from tasks.api._errors import (
    FormatUnavailable,
    JobUnsuccessful,
    NotFinished,
    NotFound,
    QuotaExceeded,
)
from tasks.api._quotas import ClientBytes
from tasks.api._readiness import ReadinessCheck
from tasks.api._schemas import (
    FINAL_STATUSES,
    JobInfo,
    JobOptions,
    Links,
    Progress,
    RetryOptions,
)
from tasks.api.tokens import ApiClient, TokenStore
from tasks.client import JobProgress, OcrClient
from tasks.errors import BadRequest, InputTooLarge, PathNotAllowed
from tasks.lifecycle.callback_urls import callback_target
from tasks.lifecycle.url_policy import check_url
from tasks.queue.routing import PRIORITIES
from tasks.records.status import CeleryState, JobStatus, WaitStatus, celery_final, from_celery
from tasks.settings import Settings
from tasks.state.keys import (
    API_IDEMPOTENCY_PREFIX,
    API_INFLIGHT_PREFIX,
    API_JOB_PREFIX,
    API_UPLOAD_PREFIX,
    BLOB_PREFIX,
    JOB_PREFIX,
    OUTPUT_PREFIX,
)
from tasks.state.liveness import WorkerPresence
from tasks.state.stores import BlobStore, JobControl, OutputStore

CANCEL_TASK = "ocr.cancel"
SERVER_CHECK_SECONDS = 5.0  # the inference server is asked at most this often
MEDIA_TYPES = {
    "text": "text/plain; charset=utf-8",
    "markdown": "text/markdown; charset=utf-8",
    "json": "application/json",
    "hocr": "text/html; charset=utf-8",
    "alto": "application/xml",
    "pdf": "application/pdf",
}


# A job's raw stored state and cancel result: what changes as it moves on.
Marks = tuple[bytes | str | None, bytes | str | None]


@dataclass(frozen=True)
class Submitted:
    id: str
    replayed: bool  # an earlier request with the same Idempotency-Key made this job


@dataclass(frozen=True)
class ResultBody:
    content: bytes
    media_type: str
    filename: str


class JobService:
    """The API's operations on behalf of an authenticated `ApiClient` (thread-safe)."""

    def __init__(self, settings: Settings, client: OcrClient, redis_client: redis.Redis) -> None:
        self.settings = settings
        self.client = client
        self._redis = redis_client
        self.tokens = TokenStore(redis_client)
        self._blobs = BlobStore(redis_client, settings.blob_ttl)
        self._outputs = OutputStore(redis_client, settings.result_ttl)
        self._control = JobControl(redis_client, settings.result_ttl)
        self._record_ttl = settings.blob_ttl + settings.result_ttl
        self.access = ClientAccess(settings, self.tokens, redis_client)
        self.bytes = ClientBytes(redis_client, settings.blob_ttl)
        self.readiness = ReadinessCheck(WorkerPresence(redis_client), redis_client,
                                        vlm_server.ServerWatch(settings, SERVER_CHECK_SECONDS))

    # --- uploads ------------------------------------------------------------------

    def new_upload(self) -> str:
        """A key an upload is appended to; only `submit` turns it into a job's blob."""
        return f"{API_UPLOAD_PREFIX}{uuid.uuid4().hex}"

    def append(self, caller: ApiClient, key: str, data: bytes) -> None:
        """Append a piece of an upload, within the client's bytes quota (else 429)."""
        limit = self.max_bytes(caller)
        if not self.bytes.append(caller.name, key, data, limit):
            raise _over_bytes(limit)

    def max_bytes(self, caller: ApiClient) -> int:
        return own_limit(caller.max_bytes, self.settings.api_client_max_bytes)

    def check_room(self, caller: ApiClient, size: int) -> None:
        """Refuse, before reading it, an upload of `size` bytes the quota cannot take."""
        limit = self.max_bytes(caller)
        if limit and size > limit - self.bytes.waiting(caller.name):
            raise _over_bytes(limit)

    def discard(self, key: str | None) -> None:
        if key and key.startswith(API_UPLOAD_PREFIX):
            self._redis.delete(key)

    # --- jobs ---------------------------------------------------------------------

    def replay(self, caller: ApiClient, idempotency_key: str | None) -> str | None:
        """The job an earlier request with this Idempotency-Key made, if any."""
        if not idempotency_key:
            return None
        raw = self._redis.get(self._idempotency(caller, idempotency_key))
        return None if raw is None else _text(raw)

    def submit(self, caller: ApiClient, options: JobOptions, upload: str | None,
               filename: str = "", idempotency_key: str | None = None) -> Submitted:
        """Send one job; `upload` is the key of a received file (else `options.path`).

        With an Idempotency-Key, the first request to claim it (SET NX) sends the job;
        every other one gets that job's id back, and its upload is dropped.
        """
        try:
            kwargs = self._input_kwargs(options, upload, filename, caller)
            earlier = self.replay(caller, idempotency_key)
            if earlier is not None:
                self.discard(upload)
                return Submitted(earlier, True)
            self._check_in_flight(caller)
            job_id = str(uuid.uuid4())
            if idempotency_key:
                claimed = self._redis.set(self._idempotency(caller, idempotency_key), job_id,
                                          nx=True, ex=self.settings.result_ttl)
                if not claimed:
                    earlier = self.replay(caller, idempotency_key)
                    if earlier is None:  # the claimant failed to send and let go
                        raise NotFinished("a request with this Idempotency-Key is being "
                                          "retried; ask again")
                    self.discard(upload)
                    return Submitted(earlier, True)
        except BaseException:
            self.discard(upload)
            raise
        try:
            if upload is not None:
                kwargs["blob"] = f"{BLOB_PREFIX}api.{caller.name}.{uuid.uuid4().hex}"
                self.bytes.adopt(caller.name, upload, kwargs["blob"])  # keeps its TTL
            self._remember(caller, job_id, options.output, str(kwargs.get("filename", "")))
            deadline = None if options.deadline is None else options.deadline - time.time()
            self.client.enqueue(kwargs, priority=options.priority, deadline=deadline,
                                job_id=job_id, owner=f"api:{caller.name}")
        except BaseException:
            if idempotency_key:
                self._redis.delete(self._idempotency(caller, idempotency_key))
            self.discard(upload)
            self._blobs.delete(kwargs.get("blob"))
            self._forget(caller, job_id)
            raise
        return Submitted(job_id, False)

    def _input_kwargs(self, options: JobOptions, upload: str | None,
                      filename: str, caller: ApiClient) -> dict[str, Any]:
        kwargs = options.task_kwargs()
        if options.deadline is not None and options.deadline <= time.time():
            raise BadRequest("`deadline` is in the past")
        if options.callback_url is not None:
            # The workers' own rule (allow-list, no private addresses unless listed).
            kwargs["callback_url"] = callback_target(options.callback_url, self.settings).url
        if options.result_url is not None:
            kwargs["result_url"] = self._check_url(options.result_url, caller,
                                                   "`result_url`", prefix_ok=True)
        if upload is not None:
            if options.path is not None or options.url is not None:
                raise BadRequest("send either a file, a `path` or a `url`, not two")
            kwargs.setdefault("filename", filename)
            return kwargs
        if options.url is not None:
            if options.path is not None:
                raise BadRequest("send either a `path` or a `url`, not both")
            kwargs["url"] = self._check_url(options.url, caller, "`url`")
            kwargs.setdefault("filename", kwargs["url"].rstrip("/").rsplit("/", 1)[-1])
            return kwargs
        if options.path is None:
            raise BadRequest("send a `file` (multipart), or a `path` or `url` (JSON)")
        self._check_path(options.path)
        kwargs["path"] = options.path
        kwargs.setdefault("filename", PurePosixPath(options.path).name)
        return kwargs

    def _check_url(self, raw: str, caller: ApiClient, what: str,
                   prefix_ok: bool = False) -> str:
        """The normalised URL, when OCR_ALLOWED_URLS and the client's prefixes admit it.

        The client's own prefixes: `tokens create --allowed-url`. Else UrlNotAllowed.
        """
        parsed = check_url(raw, self.settings.allowed_urls, what, prefix_ok)
        if prefix_ok and parsed.scheme != "s3":
            raise BadRequest(f"{what} must be an s3:// URL (results are written to a bucket)")
        if caller.allowed_urls is not None:
            check_url(raw, tuple(caller.allowed_urls), f"{what} (this client's prefixes)",
                      prefix_ok)
        return parsed.url

    def _check_path(self, raw: str) -> None:
        """Refuse early what the worker would refuse; the worker resolves links itself."""
        path = PurePosixPath(raw)
        if not path.is_absolute() or ".." in path.parts or "\x00" in raw:
            raise BadRequest("`path` must be an absolute path without `..`")
        if not any(path.is_relative_to(str(root)) for root in self.settings.allowed_roots):
            raise PathNotAllowed("the path is outside the allowed roots (OCR_ALLOWED_ROOTS)")

    def check_upload_size(self, size: int) -> None:
        if size > self.settings.max_input_bytes:
            raise InputTooLarge(f"the upload is larger than {self.settings.max_input_mb} MB "
                                "(OCR_MAX_INPUT_MB); nothing was stored")

    def _check_in_flight(self, caller: ApiClient) -> None:
        limit = own_limit(caller.jobs_in_flight, self.settings.api_jobs_in_flight)
        if not limit:
            return
        key = API_INFLIGHT_PREFIX + caller.name
        open_ids = [_text(m) for m in self._redis.zrange(key, 0, -1)]  # type: ignore[arg-type]
        if len(open_ids) < limit:
            return
        # Which of them ended: their stored states, in one round trip.
        backend = self.client.app.backend
        states = backend.mget([backend.get_key_for_task(i) for i in open_ids])
        finished = [i for i, raw in zip(open_ids, states, strict=True)
                    if raw and celery_final(str(backend.decode_result(raw).get("status")))]
        if finished:
            self._redis.zrem(key, *finished)
        if len(open_ids) - len(finished) >= limit:
            raise QuotaExceeded(f"{limit} jobs are unfinished (the client's jobs-in-flight "
                                "quota)", headers={"Retry-After": "5"})

    def _remember(self, caller: ApiClient, job_id: str, output: str, filename: str) -> None:
        now = time.time()
        pipe = self._redis.pipeline()
        pipe.hset(API_JOB_PREFIX + job_id, mapping={
            "owner": caller.name, "created": f"{now:.3f}", "output": output,
            "filename": filename})
        pipe.expire(API_JOB_PREFIX + job_id, self._record_ttl)
        pipe.zadd(API_INFLIGHT_PREFIX + caller.name, {job_id: now})
        pipe.expire(API_INFLIGHT_PREFIX + caller.name, self._record_ttl)
        pipe.execute()

    def _forget(self, caller: ApiClient, job_id: str) -> None:
        """Drop the record of a job that could not be sent."""
        pipe = self._redis.pipeline()
        pipe.delete(API_JOB_PREFIX + job_id)
        pipe.zrem(API_INFLIGHT_PREFIX + caller.name, job_id)
        pipe.execute()

    def _record(self, caller: ApiClient, job_id: str) -> dict[str, str]:
        """The job's record, or NotFound when it is not this client's."""
        if len(job_id) > 64:
            raise NotFound()
        raw = self._redis.hgetall(API_JOB_PREFIX + job_id)
        record = {_text(k): _text(v) for k, v in raw.items()}
        if record.get("owner") != caller.name:
            raise NotFound()
        return record

    def status(self, caller: ApiClient, job_id: str) -> JobInfo:
        """The job's status: one Redis round trip while it runs (record, state, cancel)."""
        if len(job_id) > 64:
            raise NotFound()
        pipe = self._redis.pipeline(transaction=False)
        pipe.hgetall(API_JOB_PREFIX + job_id)
        for key in self._mark_keys(job_id):
            pipe.get(key)
        raw_record, meta, cancelled = pipe.execute()
        record = {_text(k): _text(v) for k, v in raw_record.items()}
        if record.get("owner") != caller.name:
            raise NotFound()
        return self._status(job_id, record, (meta, cancelled))[0]

    def progress_marks(self, job_id: str) -> Marks:
        """The raw stored state of a job and its cancel result, in one round trip.

        What changes when the job moves on: the events stream reads these alone, and
        builds a status only when they changed.
        """
        meta, cancelled = self._redis.mget(self._mark_keys(job_id))
        return meta, cancelled

    def _mark_keys(self, job_id: str) -> list[str]:
        """The job's state in Celery's result backend (the same Redis) and its cancel."""
        backend_key = self.client.app.backend.get_key_for_task(job_id)
        return [_text(backend_key), f"{JOB_PREFIX}{job_id}:cancelled"]

    def _progress(self, job_id: str, meta: bytes | str | None) -> JobProgress:
        """What `OcrClient.status` answers, from the stored state already read."""
        if meta is None:
            return JobProgress(job_id, CeleryState.PENDING, 0, 0)
        decoded = self.client.app.backend.decode_result(meta)
        state = str(decoded.get("status", CeleryState.PENDING))
        info = decoded.get("result") if state == CeleryState.PROGRESS else None
        info = info if isinstance(info, dict) else {}
        return JobProgress(job_id, state, int(info.get("done", 0)), int(info.get("total", 0)))

    def _status(self, job_id: str, record: dict[str, str],
                marks: Marks | None = None,
                ) -> tuple[JobInfo, dict[str, Any] | None]:
        meta, raw_cancelled = marks if marks is not None else self.progress_marks(job_id)
        now = self._progress(job_id, meta)
        result: dict[str, Any] | None = None
        error = None
        done, total = now.done, now.total
        # A cancel's stored result is final even if a page that finished just after it
        # wrote PROGRESS over the job's state (reported to the lifecycle, issue 12).
        cancelled = None if now.final or not raw_cancelled else json.loads(raw_cancelled)
        if now.final or cancelled is not None:
            result = cancelled or self.client.result(job_id)
            status: JobStatus | WaitStatus = JobStatus.of(result.get("status"))
            error = result.get("error")
            pages = result.get("pages", [])
            done = sum(1 for p in pages if "error" not in p)
            # The pages read (a page selection reads fewer than the document has).
            numbers = {p.get("number") for p in [*pages, *result.get("failed_pages", [])]}
            total = len(numbers)
            self._redis.zrem(API_INFLIGHT_PREFIX + record["owner"], job_id)
        else:
            status = from_celery(now.state)
        return JobInfo(
            id=job_id, status=status, state=CeleryState.REVOKED if cancelled else now.state,  # type: ignore[arg-type]
            progress=Progress(done=done, total=total), error=error,
            filename=str((result or {}).get("filename") or record.get("filename", "")),
            output=record.get("output", "text"), created=float(record.get("created", 0)),
            links=links(job_id)), result

    def result(self, caller: ApiClient, job_id: str, fmt: str) -> ResultBody:
        record = self._record(caller, job_id)
        status, result = self._status(job_id, record)
        if result is None:
            raise NotFinished(f"the job is {status.status}; follow {links(job_id).events}")
        name = str(result.get("filename") or job_id)
        if fmt == "json":
            return ResultBody(json.dumps(public_result(result)).encode(), MEDIA_TYPES["json"],
                              f"{name}.json")
        if status.status not in (JobStatus.SUCCESS, JobStatus.PARTIAL):
            raise JobUnsuccessful(dict(result.get("error") or {
                "code": "cancelled", "message": "the job was cancelled", "retryable": False}))
        output = str(result.get("output") or record.get("output", "text"))
        if fmt == "text":
            return ResultBody(str(result.get("text", "")).encode(), MEDIA_TYPES["text"],
                              f"{name}.txt")
        if fmt == "markdown":
            if output != "markdown":
                raise FormatUnavailable(f"the job's output is {output}; send it with "
                                        "output=markdown")
            return ResultBody(str(result.get("text", "")).encode(), MEDIA_TYPES["markdown"],
                              f"{name}.md")
        content = self._document(result, fmt)
        if content is None:
            raise FormatUnavailable(f"the job's output is {output} and has no {fmt}; send it "
                                    f"with output={fmt}" if output != fmt else
                                    f"the job's {fmt} has expired")
        suffix = {"pdf": ".ocr.pdf", "hocr": ".hocr", "alto": ".alto.xml"}[fmt]
        return ResultBody(content, MEDIA_TYPES[fmt], f"{name}{suffix}")

    def _document(self, result: dict[str, Any], fmt: str) -> bytes | None:
        """A produced file: stored under an output key (pdf), or inline in the result."""
        value = result.get(fmt)
        if isinstance(value, str):
            return value.encode()
        if isinstance(value, dict) and str(value.get("key", "")).startswith(OUTPUT_PREFIX):
            return self._outputs.get(str(value["key"]))
        return None

    def retry(self, caller: ApiClient, job_id: str, options: RetryOptions) -> str:
        """Re-read the failed pages of the client's own PARTIAL job; the new job's id.

        The new job names the earlier one (`merge_from`) and its stored input: both
        the client's own, as the record check just showed.
        """
        record = self._record(caller, job_id)
        status, _ = self._status(job_id, record)
        if status.status != JobStatus.PARTIAL:
            raise BadRequest(f"only a PARTIAL job can be retried; this one is {status.status}")
        kwargs = self.client.retry_kwargs(job_id, options.password)
        new_id = str(uuid.uuid4())
        self._remember(caller, new_id, str(kwargs["output"]), str(kwargs.get("filename", "")))
        try:
            self.client.enqueue(kwargs, priority=options.priority, job_id=new_id,
                                owner=f"api:{caller.name}")
        except BaseException:
            self._forget(caller, new_id)
            raise
        return new_id

    def cancel(self, caller: ApiClient, job_id: str) -> tuple[JobInfo, bool]:
        """Ask the workers to cancel (`ocr.cancel`); False when the job had already ended."""
        record = self._record(caller, job_id)
        status, _ = self._status(job_id, record)
        if status.status in FINAL_STATUSES:
            return status, False
        # Interactive priority: a cancel must not wait behind the queue it cancels.
        self.client.app.send_task(CANCEL_TASK, kwargs={"job_id": job_id},
                                  priority=PRIORITIES["interactive"])
        return status, True

    # --- health -------------------------------------------------------------------

    def _idempotency(self, caller: ApiClient, key: str) -> str:
        if len(key) > 255:
            raise BadRequest("Idempotency-Key is at most 255 characters")
        return f"{API_IDEMPOTENCY_PREFIX}{caller.name}:{hashlib.sha256(key.encode()).hexdigest()}"


def _over_bytes(limit: int) -> QuotaExceeded:
    return QuotaExceeded(f"the client's inputs waiting in Redis would pass its quota of "
                         f"{limit} bytes (OCR_API_CLIENT_MAX_BYTES); nothing was stored",
                         headers={"Retry-After": "30"})


def links(job_id: str) -> Links:
    base = f"/v1/jobs/{job_id}"
    return Links(self=base, result=f"{base}/result", events=f"{base}/events")


def public_result(result: dict[str, Any]) -> dict[str, Any]:
    """A result as API clients see it: no storage keys (inputs and outputs stay private)."""
    out = {k: v for k, v in result.items() if k != "input_blob"}
    for fmt in ("pdf", "hocr", "alto"):
        if isinstance(out.get(fmt), dict):
            out[fmt] = {k: v for k, v in out[fmt].items() if k != "key"}
            out[fmt]["href"] = f"/v1/jobs/{result.get('id', '')}/result?format={fmt}"
    return out


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
