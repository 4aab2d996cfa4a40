"""The one sender: every job is written to Redis and sent to `ocr.document` here.

Runs in client processes (`OcrClient.enqueue`: submit.py, the HTTP API, local batches)
and in worker children (a batch's driver, `tasks/batch_worker.py`). A job is
admitted first (tasks/admission.py); then `JobSender.send` takes its `OutgoingJob` and

0. when asked, holds its fewest pages against the client's page caps
   (`PageUsage.reserve`; `page_quota_exceeded`) and reserves its place among the
   client's jobs in flight (`InFlight.reserve`; `quota_exceeded`), each checked and
   taken in one script, nothing written when refused; a send that fails after them
   gives both back,
1. writes its control hash `ocr:job:<id>` (input blob, file name, deadline, queue,
   priority, when accepted; its owner, client, batch, and `prefixes`: the JSON list of the
   client's own URL prefixes, which the worker checks each redirect hop against),
2. lists it under its client (`JobIndex`), and stores its input when the job carries
   it (`OutgoingJob.input`: under its `blob` key), in the round trip of 1,
3. waits for OCR_REDIS_MIN_REPLICAS replicas to hold those writes (`JobControl.keep`),
4. sends the message with its client's lane header (`ocr_client`) and a W3C
   `traceparent` when given; a message no replica confirmed (`ReplicaMissing`) is
   withdrawn: should it survive, it never starts.

`stalled` reads end claims (`ocr:job:<id>:ended`) for the batch driver: an ending
whose holder never finished it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis
from celery import Celery

from tasks import tracing
from tasks.errors import OcrError, QuotaExceeded, ReplicaMissing
from tasks.queue.message_headers import job_headers
from tasks.queue.routing import job_queue, priority_value
from tasks.records.clients import client_name
from tasks.settings import Settings
from tasks.state import lua
from tasks.state.boundary import transient
from tasks.state.client_rules import InFlight
from tasks.state.job_control import ENDING_DONE, JobControl
from tasks.state.job_index import JobIndex
from tasks.state.job_state import JobStateReader
from tasks.state.keys import job_ended_key
from tasks.state.stores import BlobStore
from tasks.state.usage import PageCaps, PageUsage, fewest_pages

SEND_TASK = "ocr.document"


@dataclass(frozen=True)
class OutgoingJob:
    """One admitted job, as the sender writes and sends it.

    `kwargs`: `ocr.document`'s (its input already stored or named); `priority`: a
    name of `PRIORITIES`, as the gate chose it; `deadline`: epoch seconds (a job not
    started by then never starts); `created`: the time it is listed under; `prefixes`:
    the client's own URL prefixes (None: OCR_ALLOWED_URLS alone); `count_in_flight`:
    count it among the client's jobs in flight until it ends, refused when
    `in_flight_limit` (0: none) are unfinished; `page_caps`: the client's, which the
    fewest pages the job reads are held against until they are counted.
    """

    job_id: str
    kwargs: dict[str, Any]
    priority: str
    client: str = ""
    owner: str = ""
    batch: str = ""
    deadline: float | None = None
    created: float | None = None
    traceparent: str | None = None
    prefixes: tuple[str, ...] | None = None
    count_in_flight: bool = False
    in_flight_limit: int = 0
    page_caps: PageCaps | None = None
    extra: dict[str, str] = field(default_factory=dict)  # more control-hash fields
    input: bytes | None = None  # stored under kwargs["blob"] with the job's record


class JobSender:
    """Writes and sends jobs (thread-safe: Redis calls and Celery's producer pool)."""

    def __init__(self, settings: Settings, redis_client: redis.Redis, app: Celery) -> None:
        self.settings = settings
        self.app = app
        self._redis = redis_client
        self.control = JobControl(redis_client, settings.result_ttl)
        self.blobs = BlobStore(redis_client, settings.blob_ttl)
        self.index = JobIndex(redis_client, settings.blob_ttl + settings.result_ttl,
                              settings.jobs_listed)
        self.in_flight = InFlight(redis_client, settings.blob_ttl + settings.result_ttl)
        self._states = JobStateReader(redis_client, app.backend)
        self.usage = PageUsage(redis_client)

    def send(self, job: OutgoingJob) -> str:
        """Write, keep and send the job; its id. ReplicaMissing: nothing runs.

        PageQuotaExceeded, QuotaExceeded: the client's page caps or jobs in flight are
        full, nothing was written.
        """
        client = client_name(job.client)
        held = job.page_caps is not None and job.page_caps.any
        if job.page_caps is not None:
            pages = job.kwargs.get("pages")
            self.usage.reserve(client, job.job_id,
                               fewest_pages(pages if isinstance(pages, str) else None),
                               job.page_caps, self._states.ended)
        try:
            if job.count_in_flight and not self.in_flight.reserve(
                    client, job.job_id, job.in_flight_limit, self._states.ended,
                    job.created):
                raise over_in_flight(job.in_flight_limit)
            return self._send(job, client)
        except BaseException:
            self._give_back(client, job.job_id, job.count_in_flight, held)
            raise

    def _send(self, job: OutgoingJob, client: str) -> str:
        kwargs = dict(job.kwargs)
        send: dict[str, Any] = {"task_id": job.job_id,
                                "priority": priority_value(self.settings, job.priority)}
        if job.deadline is not None:
            kwargs["deadline"] = job.deadline
            send["expires"] = datetime.fromtimestamp(job.deadline, tz=UTC)
        control = {"blob": str(kwargs.get("blob", "")),
                   "filename": str(kwargs.get("filename", "")),
                   "deadline": str(kwargs.get("deadline", "")),
                   "queue": job_queue(kwargs.get("engine")),  # where route_task sends it
                   "priority": job.priority, "accepted": f"{time.time():.3f}", **job.extra}
        for name, value in (("owner", job.owner), ("client", client), ("batch", job.batch)):
            if value:
                control[name] = value
        if job.prefixes is not None:
            control["prefixes"] = json.dumps(list(job.prefixes))
        # The job's input, record and index entries: one round trip.
        pipe = self._redis.pipeline(transaction=False)
        if job.input is not None:
            self.blobs.queue_put(pipe, control["blob"], job.input)
        self.control.remember_in(pipe, job.job_id, control)
        self.index.add(job.job_id, client, job.created, pipe=pipe)
        try:
            with transient("job control (Redis)"):
                lua.execute(pipe)
        except (OcrError, redis.RedisError):
            self.index.forget_ttls()
            raise
        # The input and record reach replicas on their own connection too: its server
        # may not be the broker's (another Redis; or, mid-failover, an old primary).
        target = self.settings.redis_target
        if not self.control.keep(job.job_id, target):
            self._withdraw(job)
            raise ReplicaMissing("the job's input and record reached no Redis replica in "
                                 f"{target.replica_timeout:g} s; send it again")
        headers = job_headers(client, listed=True)
        if tracing.trace_id_of(job.traceparent) is not None:
            headers["traceparent"] = str(job.traceparent).strip()
        try:
            # send_task shows the kwargs without password or payload (Flower, logs); the
            # transport returns once OCR_REDIS_MIN_REPLICAS replicas hold the message.
            with tracing.continued(job.traceparent), _unsubscribed(self.app):
                self.app.send_task(SEND_TASK, kwargs=kwargs, headers=headers, **send)
        except ReplicaMissing:
            self._withdraw(job)
            raise
        return job.job_id

    def _withdraw(self, job: OutgoingJob) -> None:
        """A job whose message no replica confirmed: should it survive, it never starts.

        Its sender was told it was not accepted, and sends it again under a new id.
        """
        try:
            self.control.cancel(job.job_id)
        except (OcrError, redis.RedisError):
            pass  # Redis went away: the job's record and message likely went with it

    def _give_back(self, client: str, job_id: str, in_flight: bool, held: bool) -> None:
        """A job not sent leaves the client's jobs in flight and its pages' hold."""
        try:
            if in_flight:
                self.in_flight.remove(client, job_id)
            if held:
                self.usage.release(client, job_id)
        except redis.RedisError:
            pass  # Redis went away: both are freed when a reservation finds it ended

    def stalled(self, job_ids: list[str], seconds: float) -> list[str]:
        """Jobs whose end claim, taken `seconds` ago or more, still names a holder.

        Their ending died with its host (the worker parent too, which would take it
        over). A claim lives OCR_RESULT_TTL: its age is that less its TTL.
        """
        pipe = self._redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.get(job_ended_key(job_id))
            pipe.ttl(job_ended_key(job_id))
        raw = pipe.execute()
        out = []
        for i, job_id in enumerate(job_ids):
            holder, ttl = raw[2 * i], int(raw[2 * i + 1])
            if holder is None or holder in (ENDING_DONE.encode(), b"1") or ttl < 0:
                continue
            if self.settings.result_ttl - ttl >= seconds:
                out.append(job_id)
        return out


def over_in_flight(limit: int) -> QuotaExceeded:
    """The refusal of a job past the client's `limit` jobs in flight (429 at the API)."""
    return QuotaExceeded(f"{limit} jobs are unfinished (the client's jobs-in-flight "
                         "quota; batch documents count)", headers={"Retry-After": "5"})


@contextmanager
def _unsubscribed(app: Celery) -> Iterator[None]:
    """Send without Celery's result backend subscribing to the job's result channel.

    Runs in the sending process (a client, the API, the batch driver). A Redis result
    backend SUBSCRIBEs to each sent task's channel so that `AsyncResult.get` hears
    the ending; clients learn a job's ending from its notice (`ocr:job:<id>:notice`)
    instead, so that subscription is never read. The worker still stores the result.
    `app.backend` is the calling thread's own, so other threads' sends are untouched.
    """
    backend = app.backend
    backend.on_task_call = _no_subscription
    try:
        yield
    finally:
        del backend.on_task_call


def _no_subscription(producer: Any, task_id: str) -> None:
    """A backend's `on_task_call` that subscribes to nothing."""
