"""`ocr.batch_step`: a batch's driver, one step at a time, on the control queue.

Thin: the step is tasks/lifecycle/batches.py; here are its Celery ports (send a
document's job under the batch's client, read job endings, cancel, the end's webhook)
and the chain of steps: a step that returns a delay sends the next one with that
countdown. Each chain is named in the batch's record (`chain`): whoever starts a new
one (the API on create, cancel and retry; a worker as it starts, for every unfinished
batch, so a batch whose step's message died with its worker goes on) names it there,
and a step of any other chain stops. Task bodies run in the worker pool children and
the control worker; `resume_batches` in the worker parent once it is ready.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

import redis
from celery import Task, shared_task
from celery.signals import worker_ready
from kombu.utils.uuid import uuid

from tasks.errors import OcrError, ResultWriteFailed, error_info
from tasks.lifecycle.batches import BatchDriver
from tasks.queue.batch_chain import STEP_TASK, batch_store, send_step, start_chain
from tasks.queue.message_headers import job_headers
from tasks.queue.parent_endings import JobServices
from tasks.queue.routing import CONTROL_QUEUE, PRIORITIES, job_queue, priority_value
from tasks.records.redis_target import RedisTarget
from tasks.records.status import CeleryState
from tasks.settings import Settings
from tasks.state.boundary import CONNECTION_ERRORS
from tasks.state.connection import connect
from tasks.state.job_state import JobStateReader
from tasks.state.keys import job_cancelled_key, job_ended_key, job_key, output_key

log = logging.getLogger(__name__)
# How long a settled document's job records stay (its line is in the target).
SETTLED_TTL = 600
# An ending's claim held this long by a process that never finished it: its host died.
STALLED_SECONDS = 120


@functools.cache
def _redis(target: RedisTarget) -> redis.Redis:
    return connect(target)


class CeleryBatchPorts:
    """The ports of `BatchDriver` in a worker: jobs sent and read through this app."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.settings: Settings = app.ocr_settings
        self.services = JobServices.for_app(app)
        self.states = JobStateReader(_redis(self.settings.redis_target), app.backend)

    def send(self, record: dict[str, str], kwargs: dict[str, Any]) -> str:
        job_id = uuid()
        client = record.get("client", "")
        control = {"filename": str(kwargs.get("filename", "")),
                   "queue": job_queue(kwargs.get("engine")), "accepted": f"{time.time():.3f}",
                   "batch": record["id"]}
        if record.get("owner"):
            control["owner"] = record["owner"]
        if client:
            control["client"] = client
        self.services.stores.control.remember(job_id, **control)
        self.services.index.add(job_id, client, None)
        self.app.send_task("ocr.document", kwargs=kwargs, task_id=job_id,
                           headers=job_headers(client),
                           priority=priority_value(self.settings,
                                                   record.get("priority") or "batch"))
        return job_id

    def ended(self, job_ids: list[str]) -> list[str]:
        return self.states.ended(job_ids)

    def result(self, job_id: str) -> dict[str, Any]:
        res = self.app.AsyncResult(job_id)
        state = res.state
        if state == CeleryState.SUCCESS:
            return dict(res.result)
        cancelled = self.services.stores.control.cancelled_result(job_id)
        if cancelled is not None or state == CeleryState.REVOKED:
            return cancelled or {"id": job_id, "status": "CANCELLED"}
        exc = res.result if isinstance(res.result, BaseException) else OcrError()
        return {"id": job_id, "status": "FAILURE", "error": error_info(exc)}

    def cancel(self, job_ids: list[str]) -> None:
        for job_id in job_ids:
            self.app.send_task("ocr.cancel", kwargs={"job_id": job_id},
                               priority=PRIORITIES["interactive"])

    def stalled(self, job_ids: list[str]) -> list[str]:
        """Jobs whose end claim, taken STALLED_SECONDS ago or more, still names a holder.

        Their ending died with its host (the worker parent too, which would take it over).
        """
        client = _redis(self.settings.redis_target)
        pipe = client.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.get(job_ended_key(job_id))
            pipe.ttl(job_ended_key(job_id))
        raw = pipe.execute()
        claim_ttl = self.settings.result_ttl  # JobControl's claims live this long
        out = []
        for i, job_id in enumerate(job_ids):
            holder, ttl = raw[2 * i], int(raw[2 * i + 1])
            if holder is None or holder in (b"done", b"1") or ttl < 0:
                continue
            if claim_ttl - ttl >= STALLED_SECONDS:
                out.append(job_id)
        return out

    def forget(self, job_ids: list[str]) -> None:
        """Shorten to SETTLED_TTL the records of jobs whose lines are written.

        Their result, control hash, end claim and stored output (a searchable PDF may be
        megabytes) would stay OCR_RESULT_TTL: a collection's worth of them is what a
        batch keeps out of Redis.
        """
        pipe = _redis(self.settings.redis_target).pipeline(transaction=False)
        for job_id in job_ids:
            for key in (self.app.backend.get_key_for_task(job_id), job_key(job_id),
                        job_ended_key(job_id), job_cancelled_key(job_id), output_key(job_id)):
                pipe.expire(key, SETTLED_TTL)
        pipe.execute()

    def notify(self, record: dict[str, str], body: dict[str, Any]) -> None:
        self.app.send_task("ocr.http_callback", args=[record["callback_url"], body],
                           queue=CONTROL_QUEUE)


def _driver(app: Any) -> BatchDriver:
    made = getattr(app, "_batch_driver", None)
    if made is None:
        settings: Settings = app.ocr_settings
        store = batch_store(settings, _redis(settings.redis_target))
        made = app._batch_driver = BatchDriver(store, CeleryBatchPorts(app), settings)
    return made


@shared_task(name=STEP_TASK, bind=True, ignore_result=True)
def batch_step(self: Task, batch_id: str, chain: str) -> None:
    """One step of a batch's driver; the next step is sent with its countdown."""
    driver = _driver(self.app)
    try:
        delay = driver.step(str(batch_id), str(chain))
    except OcrError as exc:
        if not exc.retryable and not isinstance(exc, ResultWriteFailed):
            # its source or target refused: it cannot go on (a write that failed is
            # tried again by the next step)
            driver.fail(str(batch_id), exc)
            return
        log.warning("batch %s: step failed (%s); again shortly", batch_id, exc.code)
        delay = max(driver.settings.batch_step_seconds, 5.0)
    except CONNECTION_ERRORS as exc:
        # A store or Redis briefly away: the same chain tries again.
        log.warning("batch %s: step failed (%s); again shortly", batch_id, exc)
        delay = max(driver.settings.batch_step_seconds, 5.0)
    if delay is not None:
        send_step(self.app, batch_id, chain, delay)


def resume_batches(app: Any) -> None:
    """A new chain of steps for every unfinished batch (a worker just started)."""
    settings = app.ocr_settings
    store = batch_store(settings, _redis(settings.redis_target))
    try:
        for batch_id in store.running():
            start_chain(app, store, batch_id)
    except CONNECTION_ERRORS as exc:
        log.warning("unfinished batches not resumed: %s", exc)


worker_ready.connect(lambda sender, **_: resume_batches(sender.app), weak=False)
