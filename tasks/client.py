"""Python client API: submit OCR jobs, follow them, cancel them, collect results.

Runs in client processes (submit.py, the HTTP API, other Python services). Light: its
Celery app only sends tasks by name (`tasks.queue.app.sending_app`), so importing and
constructing `OcrClient` loads no numpy, PIL, huggingface_hub, PyMuPDF, tesserocr or
MLX (tests/clients/test_cli.py checks). Operator commands (audits, unload, languages, live
queues) are in tasks/operator_console.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import redis
from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeoutError
from kombu.exceptions import OperationalError
from kombu.utils.uuid import uuid

from tasks import client_wait
from tasks.admission import admit, read_input
from tasks.client_wait import (
    ProgressCallback,
    WorkersCallback,
    not_found,
    scaling_from_zero,
    unserved,
)
from tasks.errors import (
    AmbiguousId,
    BadRequest,
    NoWorker,
    OcrError,
    ScalingFromZero,
    ServiceUnreachable,
)
from tasks.lifecycle.result_reader import (
    Reading,
    stored_document,
    stored_kind,
    stored_public,
)
from tasks.lifecycle.url_policy import is_url, parse_url
from tasks.queue.routing import DEFAULT_QUEUE, PRIORITIES, from_zero_engine
from tasks.queue.sender import JobSender
from tasks.records.clients import ClientRules, client_name, login_client
from tasks.records.jobs import Job, Reservation
from tasks.records.request import JobRequest, retry_request
from tasks.records.status import WaitStatus
from tasks.settings import Settings
from tasks.state.connection import connect
from tasks.state.job_state import JobProgress, JobStateReader
from tasks.state.liveness import WorkerPresence
from tasks.state.reservations import Reservations
from tasks.state.stores import OutputStore, new_blob_key

# What Redis or the Celery transport raise while Redis is unreachable (mid-run too).
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError, OperationalError)
NO_WORKER_GRACE = 6.0   # seconds a job may wait in a queue no live worker consumes
WORKER_RECHECK = 15.0   # seconds between worker checks while jobs run (2 s once one lacks)
PRESENCE_REUSE = 1.0   # seconds a presence read is reused by `admit` (a burst of sends)
SHORT_ID = 8           # the fewest characters of a job id that `full_id` finds it by
WHOLE_ID = 36          # the characters of a whole job id (a Celery task id, a uuid4)
RESULTS_READ = 256     # ended jobs whose results `results` reads in one round trip

__all__ = ["CONNECTION_ERRORS", "JobProgress", "OcrClient"]


class OcrClient:
    """Submit jobs to `ocr.document` and collect their results."""

    def __init__(self, settings: Settings | None = None, app: Celery | None = None,
                 client: str | None = None) -> None:
        """`client`: the name jobs are sent under; else OCR_CLIENT, else the login name."""
        self.settings = settings or Settings.from_env()
        self.client = client_name(client or self.settings.client or login_client())
        if app is None:
            from tasks.queue.app import sending_app

            app = sending_app(self.settings)
        self.app = app
        self._redis = redis_client = connect(self.settings.redis_target, patient=False)
        self._outputs = OutputStore(redis_client, self.settings.result_ttl)
        self.sender = JobSender(self.settings, redis_client, app)  # every job it sends
        self._blobs = self.sender.blobs
        self._control = self.sender.control
        self.index = self.sender.index  # jobs by client (`jobs`)
        self.no_worker_grace = NO_WORKER_GRACE  # `wait`: seconds before `no_worker`
        self.worker_recheck = WORKER_RECHECK
        self.states = JobStateReader(redis_client, app.backend)
        self._presence_seen: tuple[float, dict[str, set[str]]] | None = None

    def submit(self, source: str | Path | bytes, *, filename: str | None = None,
               priority: str | None = None, deadline: float | None = None,
               traceparent: str | None = None, **options: Any) -> str:
        """Upload the input to Redis and enqueue a job; returns the job id.

        A `source` that is an `s3://` or `https://` URL is not uploaded: the job names
        it (`url`) and the worker reads it, under its OCR_ALLOWED_URLS.
        `options` are the task's kwargs (engine, pages, password, output, mode,
        callback_task, callback_queue, callback_url, result_url). `priority` is interactive,
        normal (default) or batch; `deadline` is seconds from now: a job not started by
        then never starts, a running one stops reading pages. `traceparent`: enqueue's.
        """
        given = {k: v for k, v in options.items() if v is not None}
        job_id = uuid()
        by_url = isinstance(source, str) and is_url(source)
        if by_url:
            # By URL: the worker reads the object itself; nothing is uploaded.
            url = parse_url(str(source)).url
            if filename is None:
                filename = url.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0]
            request = JobRequest.for_door({"url": url, "filename": filename, **given})
        else:
            if filename is None:
                filename = Path(source).name if not isinstance(source, bytes) else ""
            request = JobRequest.for_door({"filename": filename, **given})
        reservation = self.admit(request, priority=priority, job_id=job_id)
        data = None if by_url else read_input(source, self.settings)
        if data is not None:
            request = request.stored_as(new_blob_key())
        return self.enqueue(Job(job_id, replace(
            request, client=self.client,
            deadline=None if deadline is None else time.time() + deadline),
            reservation=reservation, traceparent=traceparent, input=data))

    def put_input(self, source: str | Path | bytes) -> str:
        """Store a job's input (a file or bytes, within OCR_MAX_INPUT_MB); its blob key."""
        return self._blobs.put(read_input(source, self.settings))

    def admit(self, request: JobRequest | Mapping[str, Any], *, priority: str | None = None,
              rules: ClientRules | None = None, books: Reservations | None = None,
              service: bool = False, job_id: str = "") -> Reservation:
        """Refuse, before anything is stored, a job the service cannot run; its reservation.

        `request`: the job's (`JobRequest.for_door`), or the kwargs it is built of.

        The gate (`tasks/admission.py`) with this client's rules (the service-wide
        ones) unless `rules` are given: priority, URLs, options' shape and page syntax,
        its engine (`unknown_engine`, or `engine_unavailable` naming its `make` target);
        one read of the presence records, reused for PRESENCE_REUSE s (a job refused
        on a reused read is judged again on a fresh one). `books`: the service's page
        caps and jobs in flight (the HTTP API's, a batch's), which the reservation of
        job `job_id` holds until the sender commits or releases it.
        """
        if not isinstance(request, JobRequest):
            request = JobRequest.for_door(request)
        asked = request

        def judged(live: dict[str, set[str]]) -> Reservation:
            return admit(asked, rules or self.rules, self.settings, live,
                         priority=priority, books=books, service=service, job_id=job_id)

        seen = self._presence_seen
        if seen is not None and time.monotonic() - seen[0] < PRESENCE_REUSE:
            try:
                return judged(seen[1])
            except OcrError:
                pass  # judged again on a fresh read
        return judged(self.live_queues())

    @property
    def rules(self) -> ClientRules:
        """The rules of the client jobs are sent under: the service-wide ones."""
        return ClientRules.service_wide(self.client)

    def enqueue(self, job: JobRequest | Job, *, priority: str | None = None) -> str:
        """Send `ocr.document` with this job; its id. Every job sent here passed the gate.

        A `JobRequest` (its input stored, or named by URL) is admitted here (`admit`:
        this client's rules, at `priority`) and sent under this client. A `Job`
        carries the reservation the gate took for it (`admit`), and what it is sent
        with (its owner, traceparent, prefixes, input; its request its client and
        deadline). The sender (tasks/queue/sender.py) writes and sends it, and commits
        or releases its reservation.
        """
        if isinstance(job, JobRequest):
            job_id = uuid()
            job = Job(job_id, replace(job, client=self.client),
                      reservation=self.admit(job, priority=priority, job_id=job_id))
        return self.sender.send(job)

    def cancel(self, ids: Iterable[str], wait: float = 10.0) -> dict[str, str]:
        """Cancel jobs by sending the public task `ocr.cancel` for each.

        Returns, by id, `cancelled`, the status of a job that had already ended
        (`success`, `partial`, `failure`, `cancelled`), or `requested` when no worker
        answered within
        `wait` seconds (the cancel still happens when one takes the message). Queued jobs
        never start; running ones stop (their running page is killed) and keep the
        pages they finished. An id with no record raises `JobNotFound` (nothing is sent).
        """
        for job_id in dict.fromkeys(ids):
            self.status(job_id)  # JobNotFound before any cancel is sent
        sent = {job_id: self.app.send_task("ocr.cancel", kwargs={"job_id": job_id},
                                           priority=PRIORITIES["interactive"])
                for job_id in dict.fromkeys(ids)}
        outcome: dict[str, str] = {}
        deadline = time.monotonic() + wait
        for job_id, reply in sent.items():
            try:
                answer = reply.get(timeout=max(0.0, deadline - time.monotonic()),
                                   propagate=False)
            except CeleryTimeoutError:
                outcome[job_id] = "requested"
                continue
            status = answer.get("status") if isinstance(answer, dict) else None
            outcome[job_id] = ("cancelled" if status == "cancelled" else
                               self.status(job_id).status.lower())
        return outcome

    def retry(self, job_id: str, password: str | None = None,
              priority: str | None = None) -> str:
        """Re-read the failed pages of a PARTIAL job; returns the new job's id.

        The new job's result is complete: it merges the pages the earlier job had.
        An id with no record raises `JobNotFound`.
        """
        self.status(job_id)
        return self.enqueue(JobRequest.for_door(self.retry_kwargs(job_id, password)),
                            priority=priority)

    def retry_kwargs(self, job_id: str, password: str | None = None) -> dict[str, Any]:
        """The `ocr.document` kwargs that re-read the failed pages of a PARTIAL job."""
        return retry_request(self.result(job_id, original=True), job_id, password)

    def fetch_output(self, result: dict[str, Any]) -> bytes | None:
        """The stored file of a finished job (None when it has none or it expired).

        The searchable PDF (`output=pdf`), the hOCR or the ALTO document, with the
        corrected lines `result` carries written in (the job's `Reading`).
        """
        kind = stored_kind(result)
        stored = None if kind is None else stored_document(result, kind, self._outputs)
        if stored is None or kind is None or not any(
                p.get("corrected_lines") for p in result.get("pages") or []):
            return stored
        return self.read(str(result["id"])).document(kind, stored)

    def content(self, reading: Reading, fmt: str) -> bytes:
        """What a reader gets of `reading` in `fmt` (a stored document: b"" when expired)."""
        return reading.content(fmt, stored_document(reading.result, fmt, self._outputs))

    def read(self, job_id: str, original: bool = False) -> Reading:
        """A finished job's result as every reader gets it (tasks/lifecycle/result_reader.py).

        With the corrections of the client that sent it, unless `original`.
        """
        return Reading.of(self.results([job_id], original=True)[job_id], self._redis,
                          original)

    def full_id(self, job_id: str) -> str:
        """The job `job_id` names: a whole id, or a prefix of SHORT_ID characters or more.

        As git finds a commit by its short hash: a prefix that begins exactly one job in
        the job index gives that job's id; one that begins several raises `AmbiguousId`
        naming them. A whole id, and a prefix that begins none, come back as given (a
        read of them says `not_found`).
        """
        if not SHORT_ID <= len(job_id) < WHOLE_ID:
            return job_id
        try:
            found = self.index.starting_with(job_id, most=3)
        except redis.exceptions.NoPermissionError:  # the `client` user lists no jobs
            raise BadRequest(f"{job_id} is a short id, and this Redis user may not read "
                             "the job index that short ids are looked up in: give the "
                             "whole id") from None
        if len(found) > 1:
            shown = ", ".join(sorted(found)[:2]) + (", ..." if len(found) > 2 else "")
            raise AmbiguousId(f"{job_id} begins several jobs ({shown}): give more of "
                              "its characters")
        return found[0] if found else job_id

    def status(self, job_id: str) -> JobProgress:
        """Where the job stands, in one round trip (`tasks.state.job_state`).

        `JobNotFound` for an id with no record: never sent, or its records expired
        (OCR_RESULT_TTL after it ended); a job a stock Celery sender sent (no control
        hash) is unknown until a worker starts it.
        """
        progress = self.states.read(job_id)
        if not progress.known:
            raise not_found(job_id)
        return progress

    def result(self, job_id: str, original: bool = False) -> dict[str, Any]:
        """The public result of a finished job; a job's `filename` names its input.

        Its stored state and its record are read in one round trip. It carries the
        corrections of the client that sent it (`read`), unless `original`.
        """
        return self.results([job_id], original)[job_id]

    def results(self, job_ids: list[str], original: bool = False
                ) -> dict[str, dict[str, Any]]:
        """`result` of each of `job_ids`: their states and records, in one round trip.

        (One for each RESULTS_READ of them.)
        """
        out = {}
        for first in range(0, len(job_ids), RESULTS_READ):
            some = job_ids[first:first + RESULTS_READ]
            for job_id, (meta, control) in zip(some, self.states.endings_of(some),
                                               strict=True):
                public = self._public(job_id, meta, control)
                out[job_id] = public if original or "status" not in public else \
                    Reading.of(public, self._redis).result
        return out

    def _public(self, job_id: str, meta: dict[str, Any],
                control: dict[str, str]) -> dict[str, Any]:
        result = stored_public(job_id, meta, control,
                               lambda: self._control.cancelled_result(job_id))
        if "status" in result:  # a job's result (not an audit report)
            if not result.get("filename"):
                result["filename"] = control.get("filename", "")
            result.setdefault("client", control.get("client", ""))
            delivery = self._control.callback(control)  # the callback_url's, once tried
            if delivery is not None:
                result["callback"] = delivery
        return result

    def filename(self, job_id: str) -> str:
        """The input's file name a job was sent with ("" when unknown or expired)."""
        return self._control.info(job_id).get("filename", "")

    def queue_of(self, job_id: str) -> str:
        """The queue a job was sent to (jobs this client did not send: `ocr`)."""
        return self.recorded_queue(job_id) or DEFAULT_QUEUE

    def recorded_queue(self, job_id: str) -> str | None:
        """The queue a job's record names; None for a job sent without one (`send_task`)."""
        return self.recorded_queues([job_id]).get(job_id)

    def recorded_queues(self, job_ids: list[str]) -> dict[str, str]:
        """`recorded_queue` of each of `job_ids` that has one: one round trip."""
        queues = self._control.field_of(job_ids, "queue") if job_ids else []
        return {job_id: queue for job_id, queue in zip(job_ids, queues, strict=True) if queue}

    def wait(self, ids: Iterable[str], on_progress: ProgressCallback | None = None,
             timeout: float | None = None, poll: float = 0.2, *,
             watch_workers: bool = True, on_workers: WorkersCallback | None = None,
             must_exist: bool = False) -> dict[str, dict[str, Any]]:
        """Wait for every job and return the results by id.

        One blocking read waits on all the jobs' ending notices at once
        (tasks/state/job_notices.py); an ended job's result is read once. The statuses
        are read only for `on_progress` (every `max(poll, 1)` s) and as a sweep for a
        job that ended without a notice (after 1 s, then twice as long each time, up to
        SWEEP_MAX). Jobs still open at `timeout` are reported with status TIMEOUT; they
        go on. An id with no record waits as a queued job does (a stock Celery sender's
        job has none until a worker starts it); `must_exist=True` raises `JobNotFound`
        for it at the first read of the statuses (1 s in). The live workers' presence
        records are read 1 s in (a job ended by then costs no read of them; the jobs'
        queues are read then too) and every `worker_recheck` s (2 s while a job lacks
        one): jobs whose recorded queue no live worker consumes for `no_worker_grace` s
        are reported PENDING with error `no_worker` (they stay queued); one waiting for
        an engine of OCR_ENGINES_FROM_ZERO is waited for (its pool scales from zero).
        `watch_workers=False`: never. `on_workers(queues, live)` sees each read. Redis
        restarting or failing over: the next look tries again.
        """
        return client_wait.wait(self, ids, on_progress, timeout, poll,
                                watch_workers=watch_workers, on_workers=on_workers,
                                must_exist=must_exist)

    def no_worker(self, queue: str) -> NoWorker | ScalingFromZero | None:
        """Why a job waits in `queue` with no live worker to take it (one read), or None.

        `scaling_from_zero` for the queue of an engine whose pool scales from zero
        (OCR_ENGINES_FROM_ZERO): the job waits for its first worker; else `no_worker`.
        """
        if not unserved({"": queue}, self.live_queues()):
            return None
        engine = from_zero_engine(queue, self.settings.engines_from_zero)
        if engine is not None:
            return scaling_from_zero(engine)
        return NoWorker(f"no live worker consumes queue '{queue}'")

    def no_worker_record(self, job_id: str, queue: str) -> dict[str, Any]:
        """What `wait` answers for a job no live worker can take: PENDING, `no_worker`."""
        error = NoWorker(f"no live worker consumes queue '{queue}'")
        return {"id": job_id, "status": WaitStatus.PENDING.value,
                "filename": self.filename(job_id), "error": error.to_dict()}

    def live_queues(self) -> dict[str, set[str]]:
        """The queues of each worker not silent for OCR_WORKER_LIVENESS_SECONDS, by node."""
        live = WorkerPresence(self._redis).live_queues(
            window=self.settings.worker_liveness_seconds)
        self._presence_seen = (time.monotonic(), live)
        return live

    def check_service(self) -> None:
        """Raise `ServiceUnreachable` (with the URL, password masked) unless Redis answers."""
        try:
            self._redis.ping()
        except CONNECTION_ERRORS as exc:
            raise ServiceUnreachable(self.unreachable_message(exc)) from None

    def unreachable_message(self, exc: BaseException) -> str:
        reason = str(exc).strip().rstrip(".") or type(exc).__name__
        return f"cannot reach Redis at {self.settings.redis_target.masked} ({reason})"

    def close(self) -> None:
        self.app.close()

