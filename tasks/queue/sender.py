"""The one sender: every job is written to Redis and sent to `ocr.document` here.

Runs in client processes (`OcrClient.enqueue`: submit.py, the HTTP API, local batches)
and in worker children (a batch's driver, `tasks/batch_worker.py`). A job is
admitted first (tasks/admission.py:admit): its reservation (tasks/state/reservations.py)
names its queue and priority, and holds its place among the client's jobs in flight
and its pages. `JobSender.send` takes the `Job` (tasks/records/jobs.py) with that
reservation, commits it once
the job is sent, or releases it when the send fails; it

1. writes its control hash `ocr:job:<id>` (input blob, file name, deadline, queue,
   priority, when accepted; its owner, client, batch, `prefixes`: the JSON list of the
   client's own URL prefixes, which the worker checks each redirect hop against, and
   `result_prefixes`: those it writes results under, which the worker holds its
   `result_url` write to),
2. lists it under its client (`JobIndex`), and stores its input when the job carries
   it (`Job.input`: under its `blob` key), in the round trip of 1,
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
from datetime import UTC, datetime
from typing import Any

import redis
from celery import Celery

from tasks import tracing
from tasks.errors import OcrError, ReplicaMissing
from tasks.queue.message_headers import job_headers
from tasks.queue.routing import priority_value
from tasks.records.clients import client_name
from tasks.records.jobs import Job, Reservation
from tasks.records.request import SEALED_OPTIONS
from tasks.settings import Settings
from tasks.state import lua
from tasks.state.boundary import transient
from tasks.state.job_control import ENDING_DONE, JobControl
from tasks.state.job_index import JobIndex
from tasks.state.job_state import JobStateReader
from tasks.state.keys import job_ended_key
from tasks.state.reservations import Reservations
from tasks.state.stores import BlobStore

SEND_TASK = "ocr.document"


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
        self._states = JobStateReader(redis_client, app.backend)
        self.reservations = Reservations(redis_client, settings.blob_ttl + settings.result_ttl,
                                         self._states.ended)

    def send(self, job: Job) -> str:
        """Write, keep and send the job, admitted (its reservation); its id.

        The reservation is committed once the job is sent, else released.
        ReplicaMissing: nothing runs.
        """
        reservation = job.reservation
        if reservation is None or reservation.job_id != job.id:
            raise ValueError("a job is sent with the reservation the gate took for it")
        try:
            sent = self._send(job, reservation, client_name(job.request.client))
        except BaseException:
            self.reservations.release(reservation)
            raise
        self.reservations.commit(reservation)
        return sent

    def _send(self, job: Job, reservation: Reservation, client: str) -> str:
        request = job.request
        send: dict[str, Any] = {"task_id": job.id,
                                "priority": priority_value(self.settings, job.priority)}
        if request.deadline is not None:
            send["expires"] = datetime.fromtimestamp(request.deadline, tz=UTC)
        kwargs = request.to_kwargs()  # the one encoding: `ocr.document` decodes it once
        sealed = {name: kwargs.pop(name) for name in SEALED_OPTIONS if name in kwargs}
        control = {"blob": request.blob or "", "filename": request.filename,
                   "deadline": "" if request.deadline is None else str(request.deadline),
                   "queue": reservation.queue,
                   "priority": job.priority, "accepted": f"{time.time():.3f}", **job.extra}
        for name, value in (("owner", job.owner), ("client", client), ("batch", job.batch)):
            if value:
                control[name] = value
        if job.url_prefixes is not None:
            control["prefixes"] = json.dumps(list(job.url_prefixes))
        if job.result_prefixes is not None:
            control["result_prefixes"] = json.dumps(list(job.result_prefixes))
        # The job's input, record and index entries: one round trip.
        pipe = self._redis.pipeline(transaction=False)
        if job.input is not None:
            self.blobs.queue_put(pipe, control["blob"], job.input)
        if sealed:  # read by workers alone, freed with the job
            kwargs["sealed"] = self.control.seal_in(pipe, sealed, self.settings.blob_ttl)
        self.control.remember_in(pipe, job.id, control)
        self.index.add(job.id, client, job.created, pipe=pipe)
        try:
            with transient("job control (Redis)"):
                lua.execute(pipe)
        except (OcrError, redis.RedisError):
            self.index.forget_ttls()
            raise
        # The input and record reach replicas on their own connection too: its server
        # may not be the broker's (another Redis; or, mid-failover, an old primary).
        target = self.settings.redis_target
        if not self.control.keep(job.id, target):
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
        return job.id

    def _withdraw(self, job: Job) -> None:
        """A job whose message no replica confirmed: should it survive, it never starts.

        Its sender was told it was not accepted, and sends it again under a new id.
        """
        try:
            self.control.cancel(job.id)
        except (OcrError, redis.RedisError):
            pass  # Redis went away: the job's record and message likely went with it

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
