"""What the HTTP API does, without HTTP: clients, limits, submit, status, results, cancel.

Runs in the `api` process, called from its routes (in worker threads: every call here
blocks on Redis). Talks only to Redis and sends tasks by name through `OcrClient`'s
app: no engine, MLX or PyMuPDF import.

Isolation: each job the API sends has a record `ocr:api:job:<id>` naming its owner
(a job submit.py sent under client NAME: one made from its control hash, naming NAME,
`ApiJobs.decode`); a client asking about a job it does not own gets 404, exactly as
for a job that does not exist. Inputs go to blob keys made here from 128 random bits
and never shown to clients (results are answered without `input_blob` or output keys),
and API clients cannot send `blob` or `merge_from` at all. The owner is also recorded as
`owner=api:<client>` in the job's control hash (`ocr:job:<id>`) for the workers.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, replace
from typing import Any

import redis

from tasks import inference_server
from tasks.api._access import ClientAccess, own_limit
from tasks.api._errors import IdempotencyKeyReused, NotFinished, NotFound
from tasks.api._job_inputs import job_request
from tasks.api._quotas import ClientBytes
from tasks.api._readiness import ReadinessCheck
from tasks.api._results import ResultBody, links, result_body
from tasks.api._schemas import (
    FINAL_STATUSES,
    JobInfo,
    JobOptions,
    Progress,
    RetryOptions,
    shown_priority,
)
from tasks.api.tokens import ApiClient, TokenStore
from tasks.client import OcrClient
from tasks.errors import BadRequest, InputTooLarge
from tasks.lifecycle.result_reader import Reading
from tasks.queue.routing import PRIORITIES
from tasks.records.clients import ClientRules
from tasks.records.jobs import Job, Reservation, job_summary
from tasks.records.request import JobRequest
from tasks.records.status import JobStatus, WaitStatus
from tasks.settings import Settings
from tasks.state import lua
from tasks.state.api_jobs import ApiJobs
from tasks.state.job_state import Marks, as_marks
from tasks.state.keys import API_UPLOAD_PREFIX, api_blob_key, api_upload_key
from tasks.state.liveness import WorkerPresence
from tasks.state.stored_bytes import over_quota
from tasks.state.stores import BlobStore, OutputStore
from tasks.state.usage import PageUsage

CANCEL_TASK = "ocr.cancel"
SERVER_CHECK_SECONDS = 5.0  # the inference server is asked at most this often


@dataclass(frozen=True)
class Submitted:
    id: str
    replayed: bool  # an earlier request with the same Idempotency-Key made this job


class JobService:
    """The API's operations on behalf of an authenticated `ApiClient` (thread-safe)."""

    def __init__(self, settings: Settings, client: OcrClient, redis_client: redis.Redis) -> None:
        self.settings = settings
        self.client = client
        self._redis = redis_client
        self.tokens = TokenStore(redis_client)
        self._blobs = BlobStore(redis_client, settings.blob_ttl)
        self._outputs = OutputStore(redis_client, settings.result_ttl)
        self.previews = self._outputs.previews()  # page images (tasks/api/_pages.py)
        self.jobs = ApiJobs(redis_client, settings.blob_ttl + settings.result_ttl,
                            settings.result_ttl)
        self.access = ClientAccess(settings, self.tokens, redis_client)
        self.bytes = ClientBytes(redis_client, settings.blob_ttl)
        self.usage = PageUsage(redis_client)  # pages read per client, against its caps
        self.books = self.client.sender.reservations  # page caps and jobs in flight
        self.readiness = ReadinessCheck(
            WorkerPresence(redis_client), redis_client,
            inference_server.ServerWatch(settings, SERVER_CHECK_SECONDS),
            from_zero=settings.engines_from_zero)

    # --- uploads ------------------------------------------------------------------

    def new_upload(self) -> str:
        """A key an upload is appended to; only `submit` turns it into a job's blob."""
        return api_upload_key(uuid.uuid4().hex)

    def append(self, caller: ApiClient, key: str, data: bytes) -> None:
        """Append a piece of an upload, within the client's bytes quota (else 429)."""
        limit = self.max_bytes(caller)
        if not self.bytes.append(caller.name, key, data, limit):
            raise over_quota(limit)

    def max_bytes(self, caller: ApiClient) -> int:
        return own_limit(caller.max_bytes, self.settings.api_client_max_bytes)

    def check_room(self, caller: ApiClient, size: int) -> None:
        """Refuse, before reading it, an upload of `size` bytes the quota cannot take."""
        limit = self.max_bytes(caller)
        if limit and size > limit - self.bytes.stored(caller.name):
            raise over_quota(limit)

    def discard(self, caller: ApiClient, key: str | None) -> None:
        """Delete an upload that will not become a job's input, and its bytes record."""
        if key and key.startswith(API_UPLOAD_PREFIX):
            self.bytes.discard(caller.name, key)

    def check_engine(self, engine: str) -> None:
        """Refuse an engine no job could run (`OcrClient.admit`), before an upload is read.

        `unknown_engine` (422), or `engine_unavailable` (503) when live workers run
        other engines only: one read of the presence records, no broker call.
        """
        self.client.admit({"engine": engine})

    # --- jobs ---------------------------------------------------------------------

    def submit(self, caller: ApiClient, options: JobOptions, upload: str | None,
               filename: str = "", idempotency_key: str | None = None,
               traceparent: str | None = None) -> Submitted:
        """Send one job; `upload` is the key of a received file (else `options.path`).

        Refused before anything is sent: what the workers would refuse and an engine
        no live worker runs (`OcrClient.admit`). With an Idempotency-Key, the first
        request to claim it (SET NX) sends the job; a later one with the same options
        gets that job back and its upload is dropped; one with other options is
        refused (409 `idempotency_key_reused`).
        """
        digest = None if not idempotency_key else self._idempotency(idempotency_key)
        fingerprint = _fingerprint(options, filename)
        rules = caller.rules(self.settings)
        reservation = None
        try:
            request = job_request(options, upload, filename, self.settings)
            earlier = self._replay(caller, digest, fingerprint)
            if earlier is not None:
                self.discard(caller, upload)
                return Submitted(earlier, True)
            self.check_room(caller, 0)  # 429 while its stored bytes are past its quota
            job_id = str(uuid.uuid4())
            reservation = self.admit(rules, request, options.priority, job_id)  # the gate
            if digest and not self.jobs.claim_key(caller.name, digest, job_id, fingerprint):
                earlier = self._replay(caller, digest, fingerprint)
                if earlier is None:  # the claimant failed to send and let go
                    raise NotFinished("a request with this Idempotency-Key is being "
                                      "retried; ask again")
                self.books.release(reservation)
                self.discard(caller, upload)
                return Submitted(earlier, True)
        except BaseException:
            if reservation is not None:
                self.books.release(reservation)
            self.discard(caller, upload)
            raise
        adopted = None
        try:
            if upload is not None:
                adopted = api_blob_key(caller.name, uuid.uuid4().hex)
                self.bytes.adopt(caller.name, upload, adopted)  # keeps its TTL
                request = request.stored_as(adopted)
            created = self.jobs.remember(caller.name, job_id, options.output,
                                         request.filename)
            self.client.enqueue(Job(
                job_id, replace(request, client=caller.name, deadline=options.deadline),
                reservation=reservation, owner=f"api:{caller.name}", created=created,
                traceparent=traceparent,  # the request's, passed on
                url_prefixes=rules.allowed_urls, result_prefixes=rules.result_urls))
        except BaseException:
            self.books.release(reservation)
            if digest:
                self.jobs.release_key(caller.name, digest)
            self.discard(caller, upload)
            if adopted is not None:  # the upload adopted: the blob goes, and its bytes record
                self.bytes.discard(caller.name, adopted)
            self.jobs.forget(caller.name, job_id)
            raise
        return Submitted(job_id, False)

    def _replay(self, caller: ApiClient, digest: str | None, fingerprint: str) -> str | None:
        """The job an earlier request with this key made (same options), or None."""
        keyed = None if digest is None else self.jobs.keyed(caller.name, digest)
        if keyed is None:
            return None
        job_id, sent_with = keyed
        if sent_with and sent_with != fingerprint:
            raise IdempotencyKeyReused(
                f"this Idempotency-Key was used for job {job_id} with other options; "
                "use a new key for a new job")
        if not self.jobs.sent_or_abandoned(job_id, caller.name, digest or ""):
            return None  # its claimant died before sending it: the key is free again
        return job_id

    def check_upload_size(self, size: int) -> None:
        if size > self.settings.max_input_bytes:
            raise InputTooLarge(f"the upload is larger than {self.settings.max_input_mb} MB "
                                "(OCR_MAX_INPUT_MB); nothing was stored")

    def admit(self, rules: ClientRules, request: JobRequest,
              priority: str | None, job_id: str) -> Reservation:
        """The gate, with the service's books (page caps, jobs in flight); the reservation.

        A `lang` no live worker reads is refused there: `unknown_language` or
        `language_unavailable` (422), as every door refuses it.
        """
        return self.client.admit(request, priority=priority, rules=rules, books=self.books,
                                 service=True, job_id=job_id)

    def _record(self, caller: ApiClient, job_id: str) -> dict[str, str]:
        """The job's record, or NotFound when it is not this client's."""
        if len(job_id) > 64:
            raise NotFound()
        record = self.jobs.record(job_id)
        if record.get("owner") != caller.name:
            raise NotFound()
        return record

    def status(self, caller: ApiClient, job_id: str) -> JobInfo:
        """The job's status: one Redis round trip while it runs (record and marks)."""
        if len(job_id) > 64:
            raise NotFound()
        pipe = self._redis.pipeline(transaction=False)
        self.jobs.queue_record(pipe, job_id)
        self.client.states.queue_marks(pipe, job_id)
        raw_record, sent, marks = lua.execute(pipe)
        record = self.jobs.decode(raw_record, sent)
        if record.get("owner") != caller.name:
            raise NotFound()
        return self._status(job_id, record, as_marks(marks))[0]

    def current_status(self, caller: ApiClient, job_id: str) -> JobStatus | WaitStatus:
        """A replayed job's status now; QUEUED while the first request still sends it."""
        try:
            return self.status(caller, job_id).status
        except NotFound:  # the key is claimed before the job's record is written
            return WaitStatus.QUEUED

    @property
    def redis(self) -> redis.Redis:
        return self._redis

    def shown(self, job_id: str, record: dict[str, str], marks: Marks) -> JobInfo:
        """A job's status from its record and marks read already (`GET /v1/jobs`)."""
        return self._status(job_id, record, marks)[0]

    def progress_marks(self, job_id: str) -> Marks:
        """What changes when the job moves on, in one round trip (`tasks.state.job_state`).

        The events stream reads these alone, and builds a status only when they changed.
        """
        return self.client.states.marks(job_id)

    def _status(self, job_id: str, record: dict[str, str], marks: Marks | None = None,
                ) -> tuple[JobInfo, dict[str, Any] | None]:
        """The job's status as the API shows it, from its summary once it has ended.

        The marks hold an ended job's summary (`tasks.records.jobs.job_summary`), never
        its result; a job ended without one (by an earlier release) is read whole,
        once. A read changes nothing: the one exit frees a job's place in flight.
        """
        now = self.client.states.progress(job_id, marks or self.progress_marks(job_id))
        summary: dict[str, Any] | None = None
        status: JobStatus | WaitStatus = now.status
        error = None
        if now.final:
            summary = now.result if now.result is not None and "read_pages" in now.result \
                else job_summary(now.result or self.client.result(job_id, original=True), 0)
            status = JobStatus.of(summary.get("status"))
            error = summary.get("error")
        elif status == WaitStatus.QUEUED:  # said while no live worker consumes its queue
            waiting = self.client.no_worker(self.client.queue_of(job_id))
            error = None if waiting is None else waiting.to_dict()
        return JobInfo(
            id=job_id, status=status, state=now.state,  # type: ignore[arg-type]
            progress=Progress(done=now.done, total=now.total if now.planned else None),
            error=error, client=record["owner"], priority=shown_priority(now.priority),
            filename=str((summary or {}).get("filename") or record.get("filename", "")),
            output=record.get("output") or str((summary or {}).get("output") or "text"),
            created=float(record.get("created", 0)),
            links=links(job_id)), summary

    def summary(self, caller: ApiClient, job_id: str) -> tuple[JobInfo, dict[str, Any]]:
        """The client's own job that has ended: its status and summary (no result read)."""
        status, summary = self._status(job_id, self._record(caller, job_id))
        if summary is None:
            raise NotFinished(f"the job is {status.status}; follow {links(job_id).events}")
        return status, summary

    def finished(self, caller: ApiClient, job_id: str
                 ) -> tuple[dict[str, str], JobInfo, dict[str, Any]]:
        """The client's own job that has ended: its record, status and stored result."""
        record = self._record(caller, job_id)
        status, summary = self._status(job_id, record)
        if summary is None:
            raise NotFinished(f"the job is {status.status}; follow {links(job_id).events}")
        return record, status, self.client.result(job_id, original=True)

    def stored(self, job_id: str) -> dict[str, Any]:
        """An ended job's stored result, as its engine read it: its owner checked first."""
        return self.client.result(job_id, original=True)

    def result(self, caller: ApiClient, job_id: str, fmt: str,
               original: bool = False) -> ResultBody:
        """The result in `fmt`, the client's corrections applied unless `original`.

        Read as every reader reads it (`Reading`); a stored hOCR, ALTO or PDF takes
        the corrections by the body's `correct` (heavy work).
        """
        record, status, result = self.finished(caller, job_id)
        return result_body(Reading.of(result, self._redis, original), status.status,
                           status.output, fmt, self._outputs)

    def retry(self, caller: ApiClient, job_id: str, options: RetryOptions) -> str:
        """Re-read the failed pages of the client's own PARTIAL job; the new job's id.

        The new job names the earlier one (`merge_from`) and its stored input: both
        the client's own, as the record check just showed.
        """
        record = self._record(caller, job_id)
        rules = caller.rules(self.settings)
        status, _ = self._status(job_id, record)
        if status.status != JobStatus.PARTIAL:
            raise BadRequest(f"only a PARTIAL job can be retried; this one is {status.status}")
        request = JobRequest.for_door(self.client.retry_kwargs(job_id, options.password))
        self.check_room(caller, 0)  # 429 while its stored bytes are past its quota
        new_id = str(uuid.uuid4())
        reservation = self.admit(rules, request, options.priority, new_id)  # the gate
        try:
            created = self.jobs.remember(caller.name, new_id, request.output,
                                         request.filename)
            self.client.enqueue(Job(
                new_id, replace(request, client=caller.name), reservation=reservation,
                owner=f"api:{caller.name}", created=created,
                url_prefixes=rules.allowed_urls, result_prefixes=rules.result_urls))
        except BaseException:
            self.books.release(reservation)
            self.jobs.forget(caller.name, new_id)
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

    def _idempotency(self, key: str) -> str:
        if len(key) > 255:
            raise BadRequest("Idempotency-Key is at most 255 characters")
        return hashlib.sha256(key.encode()).hexdigest()


def _fingerprint(options: JobOptions, filename: str) -> str:
    """What an Idempotency-Key is bound to: the job's options and its file's name."""
    given = {**options.model_dump(exclude_none=True), "file": filename}
    return hashlib.sha256(json.dumps(given, sort_keys=True).encode()).hexdigest()[:32]
