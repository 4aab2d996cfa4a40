"""The endings only the worker parent sees, and endings finished for a dead ender.

Celery's side of a job's one exit beside its task (tasks/queue/job_task.py), over the
process's `JobServices` (tasks/queue/job_services.py). `connect_parent_endings()`
connects, in the worker parent, `task_revoked` (a job cancelled or expired before or
while it ran) and `task_failure` (a job whose child was killed at its hard time limit).
When a cancel's SIGKILL reached a child that was ending its job (its end claim taken,
the rest not done), the parent takes the claim over and finishes the ending
(`take_over_killed`; Linux: a child is told by /proc); a pool child finishes the ending
of a job whose whole worker died while ending it (`finish_abandoned`).
`connect_refusals()` stores the FAILURE of a message the broker refused (the Redis
transport's hook `on_refused`: tasks/broker/refusals.py) or Celery would not decode.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import redis
from billiard.exceptions import TimeLimitExceeded
from celery import states
from celery.signals import celeryd_after_setup, task_failure, task_rejected, task_revoked
from kombu.exceptions import ContentDisallowed

from tasks import tracing
from tasks.broker.channel import hooks_named
from tasks.engines.resident import engine_for_job
from tasks.errors import (
    BadRequest,
    ContentRefused,
    DeadlineExceeded,
    InternalError,
    OcrError,
    Timeout,
)
from tasks.lifecycle.claim_holders import gone, local_pid, parent_of
from tasks.lifecycle.inputs import decode_request
from tasks.queue import job_services
from tasks.queue.job_services import PROGRESS_STATE, JobServices
from tasks.queue.message_headers import client_from
from tasks.queue.result_records import whole_result
from tasks.records.jobs import SOURCE_FIELD, JobStatus, Outcome
from tasks.records.request import JobRequest
from tasks.records.results import DocumentResult

if TYPE_CHECKING:
    from tasks.queue.ocr_celery import OcrCelery
    from tasks.settings import Settings

log = logging.getLogger(__name__)
JOB_TASK = "ocr.document"
# Seconds the worker parent waits for a child it sent SIGKILL to be gone.
KILLED_WAIT = 5.0


def request_of(kwargs: Any, settings: Settings) -> JobRequest | None:
    """The decoded request of a job message, or None when its kwargs are invalid."""
    if not isinstance(kwargs, dict):
        return None
    try:
        return decode_request(kwargs, settings)
    except OcrError:
        return None


def end_from_message(app: OcrCelery, job_id: str, kwargs: Any, status: JobStatus,
                     error: OcrError | None = None, request: Any = None,
                     client: str = "") -> bool:
    """End a job known only by its message (kwargs); frees its uploaded input too.

    `request`: the message's, whose `traceparent` names the job's trace. `client`: the
    one its message names, else the one its control hash recorded.
    """
    try:
        outcome = _outcome_of_message(app, job_id, kwargs, status, error,
                                      client or client_from(request))
        outcome.trace_id = tracing.trace_id_of(
            tracing.headers_of(request).get("traceparent"))
        return JobServices.for_app(app).ender.end(outcome)
    except (redis.RedisError, OcrError) as exc:
        log.error("job %s could not be ended here: %s", job_id, type(exc).__name__)
        return False


def take_over_killed(app: OcrCelery, job_id: str, kwargs: Any, status: JobStatus,
                     error: OcrError | None = None) -> bool:
    """Finish the ending of a job whose child this parent killed while it held the claim.

    The claim must name a process of this host that is one of this parent's children
    (it was just sent SIGKILL) or already gone; the parent waits (at most KILLED_WAIT
    seconds) until that child is gone, so that the two never both finish, then takes
    the claim over (only one taker wins) and ends the job with the outcome its message
    gives. False when there was nothing to take over (the claim names a live process
    that is not this parent's child, another host, or no one).
    """
    services = JobServices.for_app(app)
    try:
        holder = services.stores.control.end_holder(job_id)
        pid = local_pid(holder)
        if holder is None or pid is None:
            return False
        deadline = time.monotonic() + KILLED_WAIT
        while not gone(pid):
            if parent_of(pid) != os.getpid() or time.monotonic() >= deadline:
                return False  # a live process that is not a child this parent killed
            time.sleep(0.02)
        if not services.ender.take_over(job_id, holder):
            return False
        # The child may have stored its result before it was killed: that is the ending.
        services.ender.finish(_stored_outcome(app, job_id, kwargs, app.AsyncResult(job_id))
                              or _outcome_of_message(app, job_id, kwargs, status, error))
    except (redis.RedisError, OcrError) as exc:
        log.error("job %s could not be taken over here: %s", job_id, type(exc).__name__)
        return False
    log.warning("job %s: ended by the worker parent, its child %d killed while ending it",
                job_id, pid)
    return True


def finish_abandoned(app: OcrCelery, job_id: str, kwargs: Any) -> bool:
    """Finish the ending of a job whose ender died with its whole worker (a redelivery).

    Runs in a pool child, before a redelivered job message runs. The end claim names a
    process of this host that is gone (its worker parent and children were killed
    between the claim and `mark_ended`: no parent was left to `take_over_killed`). With
    the result stored (a success, a cancel or a failure), the ending is finished from
    it (callbacks, the `ocr.job` line, the input freed); with none stored, the claim is
    given back and the job runs. False when the claim names a live process, another
    host, or no one. A holder on another host is not judged (its pid says nothing
    here): that ending's input expires with OCR_BLOB_TTL.
    """
    services = JobServices.for_app(app)
    holder = services.ender.take_over_abandoned(job_id)
    if holder is None:
        return False
    stored = app.AsyncResult(job_id)
    outcome = _stored_outcome(app, job_id, kwargs, stored)
    if outcome is None:
        if stored.state in states.UNREADY_STATES or stored.state == PROGRESS_STATE:
            services.ender.release(job_id)  # no ending was stored: the job runs again
            log.warning("job %s: its ender %s died before storing; run again", job_id,
                        holder)
            return False
        outcome = _stored_error(app, job_id, kwargs, stored)
    services.ender.finish(outcome)
    log.warning("job %s: ending finished here, its ender %s gone with its worker",
                job_id, holder)
    return True


def _stored_error(app: OcrCelery, job_id: str, kwargs: Any, stored: Any) -> Outcome:
    """The ending a killed ender had stored as a cancel (REVOKED) or a failure."""
    if stored.state == states.REVOKED:
        return _outcome_of_message(app, job_id, kwargs, JobStatus.CANCELLED, None)
    error = stored.result
    if not isinstance(error, OcrError):  # an exception this release does not know
        error = InternalError(f"the job ended {stored.state}: {error}")
    return _outcome_of_message(app, job_id, kwargs, JobStatus.FAILURE, error)


def _stored_outcome(app: OcrCelery, job_id: str, kwargs: Any,
                    stored: Any) -> Outcome | None:
    """The ending a killed ender had `stored` (a SUCCESS or PARTIAL result), else None."""
    if stored.state not in (JobStatus.SUCCESS.value, JobStatus.PARTIAL.value) \
            or not isinstance(stored.result, dict):
        return None
    outcome = _outcome_of_message(app, job_id, kwargs, JobStatus(stored.state), None)
    outcome.result = DocumentResult.from_json(whole_result(app, stored.result))
    outcome.source = str(stored.result.get(SOURCE_FIELD) or "")  # stored again by reference
    return outcome


def _outcome_of_message(app: OcrCelery, job_id: str, kwargs: Any, status: JobStatus,
                        error: OcrError | None, client: str = "") -> Outcome:
    """The outcome of a job ended from its message alone; its uploaded input freed too."""
    settings: Settings = app.ocr_settings
    client = client or JobServices.for_app(app).stores.control.client(job_id)
    request = request_of(kwargs, settings)
    if request is not None:
        request = replace(request, client=client)
    blob = kwargs.get("blob") if isinstance(kwargs, dict) else None
    extra = (blob,) if isinstance(blob, str) and request is None else ()
    if status is JobStatus.FAILURE:
        outcome = Outcome.failed(job_id, error or BadRequest(), request,
                                 engine=_engine_of(request, app))
    else:
        outcome = Outcome(job_id, status, request, DocumentResult(
            status=status, id=job_id, filename=request.filename if request else ""),
            engine=_engine_of(request, app))
    outcome.extra_blobs = extra
    outcome.sender = client
    return outcome


def _engine_of(request: JobRequest | None, app: OcrCelery) -> str:
    """The engine the job runs on, as a pool child decides it (`resident.engine_for_job`)."""
    if request is None:
        return app.ocr_engine
    return engine_for_job(request.engine, request.lang, app.ocr_engine, app.ocr_settings)


def connect_parent_endings(app: OcrCelery) -> None:
    """Connect the worker-parent handlers (once per process)."""
    if getattr(app, "_parent_endings", False):
        return
    app._parent_endings = True

    def on_after_setup(sender: str, **_: Any) -> None:
        job_services.node_started(sender)

    def on_revoked(sender: Any, request: Any = None, expired: bool = False,
                   terminated: bool = False, **_: Any) -> None:
        if getattr(sender, "name", None) != JOB_TASK or request is None:
            return
        kwargs = getattr(request, "kwargs", None) or {}
        if expired:
            end_from_message(app, str(request.id), kwargs, JobStatus.FAILURE,
                             DeadlineExceeded("the job's deadline passed"), request)
        elif not end_from_message(app, str(request.id), kwargs, JobStatus.CANCELLED,
                                  request=request) and terminated:
            # The killed child may have been ending the job: its claim, the rest undone.
            take_over_killed(app, str(request.id), kwargs, JobStatus.CANCELLED)

    def on_failure(sender: Any, task_id: str, exception: BaseException,
                   kwargs: dict[str, Any] | None = None, **_: Any) -> None:
        # Only the worker parent sees TimeLimitExceeded: the child was killed.
        if getattr(sender, "name", None) == JOB_TASK and isinstance(exception,
                                                                    TimeLimitExceeded):
            settings: Settings = app.ocr_settings
            end_from_message(app, task_id, kwargs or {}, JobStatus.FAILURE, Timeout(
                f"the job ran past its hard time limit of {settings.hard_time_limit} s "
                "and its worker child was stopped"))

    celeryd_after_setup.connect(on_after_setup, weak=False)
    task_revoked.connect(on_revoked, weak=False)
    task_failure.connect(on_failure, weak=False)


def connect_refusals(app: OcrCelery) -> None:
    """End FAILURE each refused message whose task id was read (worker parent: `JobEnder`).

    Two sources: the Redis transport's hook `on_refused`, and Celery's own
    `task_rejected` for a message it refused to deserialize (ContentDisallowed), which
    is how a pickled message ends on other brokers (AMQP) instead of staying PENDING.
    """

    def failed(task_id: str, error: OcrError) -> None:
        if getattr(app, "ocr_settings", None) is None:
            app.backend.mark_as_failure(task_id, error)
            return
        # The one exit: its FAILURE, summary and notice; its place in flight freed.
        end_from_message(app, task_id, None, JobStatus.FAILURE, error)

    def on_refused(task_id: str | None, error: OcrError, queue: str) -> None:
        if task_id is not None:
            failed(task_id, error)

    def on_rejected(sender: Any, message: Any, exc: BaseException | None,
                    **_: Any) -> None:
        headers = getattr(message, "headers", None)
        if isinstance(exc, ContentDisallowed) and isinstance(headers, dict) \
                and isinstance(headers.get("id"), str):
            failed(headers["id"], ContentRefused(
                f"content type {str(message.content_type)[:60]!r} is not accepted "
                "(JSON only)"))

    settings = getattr(app, "ocr_settings", None)
    name = (app.conf.broker_transport_options or {}).get("ocr_hooks")
    if settings is not None and not settings.broker_is_amqp and name:
        hooks_named(name).on_refused = on_refused
    task_rejected.connect(on_rejected, weak=False, dispatch_uid="ocr-rejected")
