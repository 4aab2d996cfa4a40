"""`ocr.batch_step`: a batch's driver, one step at a time, on the batch queue.

Runs in the workers: task bodies in the control worker's threads (the one worker that
consumes the batch queue, tasks/queue/routing.py), `resume_batches` in every worker
parent once it is ready. A step runs only while its client holds fewer than
OCR_BATCH_THREADS_PER_CLIENT of the pool's threads and the pool keeps a thread for
cancels and callbacks (tasks/queue/batch_steps.py); else it reads nothing and is sent
again after OCR_BATCH_STEP_SECONDS. Thin: the step is
tasks/lifecycle/batches.py; here are its ports in a worker (the batch's source and
target, the gate for each document, the one sender, job endings, cancel, the end's
webhook) and the chain of steps: a step that returns a delay sends the next one with
that countdown. It sits on the client's floor: it calls the gate (tasks/admission.py)
and the sender (tasks/queue/sender.py), as every door does. Each chain is named in
the batch's record (`chain`): whoever starts a new one (the API on create, cancel and
retry; a worker as it starts, for every unfinished batch, so a batch whose step's
message died with its worker goes on) names it there, and a step of any other chain
stops. A local folder's batch (submit.py drives it) is never stepped here.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from dataclasses import replace
from typing import Any

import redis
from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_ready
from kombu.utils.uuid import uuid

from tasks.admission import admit
from tasks.errors import OcrError, ResultWriteFailed
from tasks.lifecycle.batch_sources import Source, Target, source_of
from tasks.lifecycle.batches import BatchDriver
from tasks.lifecycle.fetcher import Fetcher
from tasks.lifecycle.result_reader import stored_public
from tasks.queue.batch_steps import STEP_TASK, batch_store, send_step, start_chain
from tasks.queue.client_shares import ClientShares
from tasks.queue.job_services import JobServices
from tasks.queue.routing import PRIORITIES, job_queue
from tasks.queue.sender import JobSender
from tasks.records.batches import BatchRecord
from tasks.records.clients import ClientRules, client_name
from tasks.records.jobs import Job, Reservation
from tasks.records.redis_target import RedisTarget
from tasks.records.request import JobRequest
from tasks.settings import Settings
from tasks.state.api_jobs import ApiJobs
from tasks.state.boundary import CONNECTION_ERRORS
from tasks.state.callback_outbox import HTTP, Delivery
from tasks.state.client_rules import read_rules
from tasks.state.connection import connect
from tasks.state.job_state import JobStateReader
from tasks.state.keys import (
    API_CLIENTS_KEY,
    api_job_key,
    job_cancelled_key,
    job_ended_key,
    job_key,
    output_key,
)
from tasks.state.liveness import WorkerPresence
from tasks.state.stored_bytes import check_stored

log = logging.getLogger(__name__)
# How long a settled document's job records stay (its line is in the target).
SETTLED_TTL = 600
# An ending's claim held this long by a process that never finished it: its host died.
STALLED_SECONDS = 120
RULES_SECONDS = 1.0  # a client's rules and the live workers, read again after this


@functools.cache
def _redis(target: RedisTarget) -> redis.Redis:
    return connect(target)


class CeleryBatchPorts:
    """The ports of `BatchDriver` in a worker: jobs admitted, sent and read here."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.settings: Settings = app.ocr_settings
        self.services = JobServices.for_app(app)
        client = _redis(self.settings.redis_target)
        self.states = JobStateReader(client, app.backend)
        self.sender = JobSender(self.settings, client, app)
        # an API client's batch: each document is that client's job, as if it sent it
        self.api_jobs = ApiJobs(client, self.settings.blob_ttl + self.settings.result_ttl,
                                self.settings.result_ttl)
        self.books = self.sender.reservations  # page caps and jobs in flight
        self._read: dict[str, tuple[float, Any]] = {}

    def _fresh(self, key: str, read: Any) -> Any:
        """What `read()` answers, read again at most every RULES_SECONDS."""
        at, value = self._read.get(key, (0.0, None))
        if time.monotonic() - at > RULES_SECONDS:
            value = read()
            self._read[key] = (time.monotonic(), value)
        return value

    def rules(self, record: BatchRecord) -> ClientRules:
        """The batch's client's rules: its token's (an API batch), else the service's."""
        if not record.api_client:
            return ClientRules.service_wide(record.client)
        return self._fresh(f"rules:{record.api_client}", lambda: read_rules(
            _redis(self.settings.redis_target), record.api_client, self.settings))

    def fetcher(self, record: BatchRecord) -> Fetcher:
        """Every read of the batch's: under its client's prefixes and OCR_ALLOWED_URLS.

        Its target: under the client's result prefixes too, and no read-only prefix.
        """
        rules = self.rules(record)
        return Fetcher.for_client(self.settings, rules.allowed_urls, rules.result_urls)

    def target(self, record: BatchRecord) -> Target:
        return self.fetcher(record).target(record.target)

    def source(self, record: BatchRecord, target: Target) -> Source:
        fetcher = self.fetcher(record)
        return source_of(record.source, self.settings, fetcher,
                         fetcher.target(record.target), record.id)

    def admit(self, record: BatchRecord, request: JobRequest) -> Reservation:
        if record.api_client:  # its documents wait while its stored bytes are past its quota
            check_stored(_redis(self.settings.redis_target), record.api_client,
                         self._fresh(f"bytes:{record.api_client}",
                                     lambda: self._max_bytes(record.api_client)))
        live = self._fresh("live", lambda: WorkerPresence(
            _redis(self.settings.redis_target)).live_queues())
        return admit(request, self.rules(record), self.settings, live,
                     priority=record.priority or "batch", books=self.books, job_id=uuid())

    def _max_bytes(self, name: str) -> int:
        """The client's bytes quota: its token's `--max-bytes`, else the default."""
        raw = _redis(self.settings.redis_target).hget(API_CLIENTS_KEY, name)
        own = json.loads(raw).get("max_bytes") if raw else None
        return self.settings.api_client_max_bytes if own is None else int(own)

    def release(self, reservation: Reservation) -> None:
        self.books.release(reservation)

    def send(self, record: BatchRecord, request: JobRequest,
             reservation: Reservation | None = None, replacing: str = "") -> str:
        """Send one document's job; an API batch's is recorded as its client's job.

        That record (`ocr:api:job:<id>`, owner the batch's API client) is what the HTTP
        API and the console check a job's client by: the document's status, result,
        pages and corrections are then its client's only, as for a job it sent.
        Without a `reservation` (a job sent again in `replacing`'s place) it takes its
        place in flight, past the client's limit, and holds no pages.
        """
        rules = self.rules(record)
        if reservation is None:
            reservation = self.books.take(uuid(), rules.name, job_queue(request.engine),
                                          record.priority or "batch", limit=0)
        job_id = reservation.job_id
        created = None
        if record.api_client:
            created = self.api_jobs.remember(record.api_client, job_id, request.output,
                                             request.filename)
        try:
            self.sender.send(Job(
                job_id, replace(request, client=record.client), reservation=reservation,
                owner=record.owner, batch=record.id, created=created,
                url_prefixes=rules.allowed_urls, result_prefixes=rules.result_urls))
        except BaseException:
            if record.api_client:  # nothing was sent: no record of it either
                self.api_jobs.forget(record.api_client, job_id)
            raise
        if replacing:
            self.books.in_flight.remove(rules.name, replacing)
        return job_id

    def endings(self, record: BatchRecord, job_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Those of `job_ids` that ended, each with its public result.

        Their stored states in one MGET, each decoded once; only a job that did not
        succeed (a failure, a cancel) costs one more read, its cancel record.
        """
        control = self.services.stores.control
        return {job_id: stored_public(job_id, meta, {},
                                      functools.partial(control.cancelled_result, job_id))
                for job_id, meta in self.states.endings(job_ids).items()}

    def cancel(self, job_ids: list[str]) -> None:
        for job_id in job_ids:
            self.app.send_task("ocr.cancel", kwargs={"job_id": job_id},
                               priority=PRIORITIES["interactive"])

    def stalled(self, job_ids: list[str]) -> list[str]:
        return self.sender.stalled(job_ids, STALLED_SECONDS)

    def forget(self, job_ids: list[str]) -> None:
        """Shorten to SETTLED_TTL the records of jobs whose lines are written.

        Their result, control hash, end claim, stored output (a searchable PDF may be
        megabytes) and API job record would stay OCR_RESULT_TTL: a collection's worth
        of them is what a batch keeps out of Redis. The record goes with the result, so
        the HTTP API then answers 404 for the job, not a state it no longer knows.
        """
        pipe = _redis(self.settings.redis_target).pipeline(transaction=False)
        for job_id in job_ids:
            for key in (self.app.backend.get_key_for_task(job_id), job_key(job_id),
                        job_ended_key(job_id), job_cancelled_key(job_id), output_key(job_id),
                        api_job_key(job_id)):
                pipe.expire(key, SETTLED_TTL)
        pipe.execute()

    def notify(self, record: BatchRecord, body: dict[str, Any]) -> None:
        # into the callback outbox, signed with the batch's owner's secret (its record
        # names it); one delivery per ending of the batch
        event = f"{record.id}.batch.{body.get('status')}"
        self.services.stores.control.put_callbacks([Delivery(
            f"{event}.{HTTP}", HTTP, str(record.callback_url), {**body, "event_id": event},
            owner=record.owner, client=record.owner.removeprefix("api:"),
            first=time.time())])


def _driver(app: Any) -> BatchDriver:
    made = getattr(app, "_batch_driver", None)
    if made is None:
        settings: Settings = app.ocr_settings
        store = batch_store(settings, _redis(settings.redis_target))
        made = app._batch_driver = BatchDriver(store, CeleryBatchPorts(app), settings)
    return made


def _slots(app: Any) -> ClientShares:
    """The batch steps running in this process, counted (sized by `size_slots`)."""
    made = getattr(app, "_batch_slots", None)
    if made is None:
        made = app._batch_slots = ClientShares(1, app.ocr_settings.batch_threads_per_client)
    return made


def size_slots(app: Any, pool_threads: int) -> None:
    """Count this worker's batch steps against its pool of `pool_threads` threads.

    The pool's last thread is left to the control tasks.
    """
    app._batch_slots = ClientShares(max(1, pool_threads - 1),
                                    app.ocr_settings.batch_threads_per_client)


@shared_task(name=STEP_TASK, bind=True, ignore_result=True)
def batch_step(self: Task, batch_id: str, chain: str) -> None:
    """One step of a batch's driver; the next step is sent with its countdown."""
    driver = _driver(self.app)
    record = driver.store.get(str(batch_id))
    if record.local or not record.driven_by(str(chain)):
        return  # submit.py steps a local folder's batch itself; or no step drives it now
    with _slots(self.app).held(client_name(record.client)) as room:
        if not room:  # its client's threads are taken, or the pool's last one: later
            driver.store.touch(str(batch_id))  # its chain lives: not stale (the API's)
            send_step(self.app, batch_id, chain, driver.settings.batch_step_seconds)
            return
        _step(self, driver, str(batch_id), str(chain))


def _step(task: Task, driver: BatchDriver, batch_id: str, chain: str) -> None:
    """Run one step; send the next with its countdown (sooner after a failure)."""
    try:
        delay = driver.step(batch_id, chain)
    except OcrError as exc:
        if not exc.retryable and not isinstance(exc, ResultWriteFailed):
            # its source or target refused: it cannot go on (a write that failed is
            # tried again by the next step)
            driver.fail(batch_id, exc)
            return
        log.warning("batch %s: step failed (%s); again shortly", batch_id, exc.code)
        delay = max(driver.settings.batch_step_seconds, 5.0)
    except (*CONNECTION_ERRORS, SoftTimeLimitExceeded) as exc:
        # A store or Redis briefly away, or a step past its time limit on a loaded
        # host: the same chain goes on (the cursor moved past each document sent).
        log.warning("batch %s: step failed (%r); again shortly", batch_id, exc)
        delay = max(driver.settings.batch_step_seconds, 5.0)
    if delay is not None:
        send_step(task.app, batch_id, chain, delay)


def resume_batches(app: Any) -> None:
    """A new chain of steps for every unfinished batch (a worker just started)."""
    settings = app.ocr_settings
    store = batch_store(settings, _redis(settings.redis_target))
    try:
        for batch_id in store.running():
            if not store.get(batch_id).local:
                start_chain(app, store, batch_id)
    except CONNECTION_ERRORS as exc:
        log.warning("unfinished batches not resumed: %s", exc)


def on_worker_ready(sender: Any, **_: Any) -> None:
    """A worker ready (`sender`: its consumer): its pool sized, its batches resumed."""
    size_slots(sender.app, sender.controller.concurrency)
    resume_batches(sender.app)


worker_ready.connect(on_worker_ready, weak=False)
