"""`ocr.document`, the public job task: a thin wrapper around `tasks.lifecycle.jobs`.

Runs in worker pool children (the worker parent only sends refusals to the job's exit
through `DocumentTask`'s guards). It decodes the message into a typed request, calls the
lifecycle, retries what is retryable (tasks/queue/retry_policy.py) and hands every
ending to the job's one exit (`JobServices.ender`). A job's result is stored by that
exit, so Celery stores nothing for `ocr.document` (`ignore_result`) and logs no result
text. A PDF read page by page is split here, and its page and chunk tasks are sent
through the queue layer's port (`page_tasks.send_pages`); so is an image whose pages
escalate, its escalated pages through `PageTasks.escalate` (tasks/lifecycle/fanout.py).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from dataclasses import replace
from typing import Any, NoReturn

from billiard.exceptions import SoftTimeLimitExceeded
from celery import Celery, Task, shared_task, states
from celery.exceptions import Ignore
from kombu.utils.uuid import uuid

from tasks.engines import resident
from tasks.errors import BadRequest, DeadlineExceeded, OcrError, Timeout, WorkerLost
from tasks.lifecycle.fanout import unexpected
from tasks.lifecycle.inputs import decode_request
from tasks.lifecycle.jobs import FanOut, JobPorts, process_job
from tasks.pipeline.documents import past_deadline
from tasks.queue import telemetry, thread_limits
from tasks.queue.job_services import JobServices, page_progress, report_progress
from tasks.queue.message_headers import client_from, listed
from tasks.queue.page_tasks import page_tasks, send_pages
from tasks.queue.parent_endings import end_from_message, finish_abandoned
from tasks.queue.poison_guard import GuardedTask
from tasks.queue.result_records import result_record, whole_result
from tasks.queue.retry_policy import retry_later
from tasks.queue.routing import job_queue
from tasks.records.jobs import Job, JobStatus, Outcome, ResultRecord
from tasks.records.request import JobRequest
from tasks.records.results import DocumentResult, PageRecord
from tasks.settings import Settings
from tasks.state.boundary import transient
from tasks.state.job_control import CarriedWrites
from tasks.state.stores import blob_keys
from tasks.state.usage import PageUsage

log = logging.getLogger(__name__)


class DocumentTask(GuardedTask):
    """`ocr.document`: every refusal ends the job through its one exit.

    Its ending's event too: Celery's request sends none (`DocumentRequest`).
    """

    abstract = True
    Request = "tasks.queue.job_events:DocumentRequest"

    def started_record(self, task_id: str) -> ResultRecord:
        # What `task_track_started` would store, were results not ignored.
        return result_record(self.app, task_id, {"pid": os.getpid(),
                                                 "hostname": self.request.hostname},
                             states.STARTED)

    def start_input(self, kwargs: dict[str, Any]) -> tuple[str, int] | None:
        # An input uploaded beside the message, read as the job's own read would read it
        # (tasks/lifecycle/inputs.py); what the job may name is checked before it is used.
        blob = kwargs.get("blob")
        if not blob_keys([blob]) or kwargs.get("url") or kwargs.get("data_b64"):
            return None
        return str(blob), self.app.ocr_settings.max_input_bytes

    def check_start(self, task_id: str, kwargs: dict[str, Any], ended: bool) -> None:
        if ended:
            # A redelivery of a job that has ended: nothing to do, unless its ender died
            # with its worker halfway (then its ending is finished, or the job runs).
            finish_abandoned(self.app, task_id, kwargs)
            if JobServices.for_app(self.app).ender.has_ended(task_id):
                raise Ignore()

    def refuse_cancelled(self, task_id: str, kwargs: dict[str, Any]) -> None:
        end_from_message(self.app, task_id, kwargs, JobStatus.CANCELLED)
        raise Ignore()

    def refuse_poison(self, task_id: str, kwargs: dict[str, Any], exc: WorkerLost) -> None:
        end_from_message(self.app, task_id, kwargs, JobStatus.FAILURE, exc)
        raise Ignore()


def _previous(app: Celery, request: JobRequest) -> DocumentResult | None:
    """The result of the job a retry completes (`merge_from`)."""
    if request.merge_from is None:
        return None
    earlier = app.AsyncResult(request.merge_from)
    if earlier.state != states.SUCCESS or not isinstance(earlier.result, dict):
        raise BadRequest("`merge_from` must name a finished job whose result is stored")
    return DocumentResult.from_json(whole_result(app, earlier.result))


@shared_task(name="ocr.document", bind=True, base=DocumentTask, ignore_result=True,
             throws=(OcrError,))
def document(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """OCR one image or PDF; see docs/tasks.md for kwargs and the result schema.

    The result is stored by the job's one exit, so Celery stores nothing
    (`ignore_result`): it sees a small summary, or the job's error raised again.
    """
    started = time.time()  # the job's clock (`timings.total_seconds`) starts here
    settings: Settings = self.app.ocr_settings
    job_id = self.request.id  # its STARTED record is written as it starts (started_record)
    if args:
        end_from_message(self.app, job_id, kwargs, JobStatus.FAILURE, BadRequest(
            "ocr.document takes keyword arguments only"))
        raise Ignore()
    services = JobServices.for_app(self.app)
    try:
        with transient("Redis"):
            # Who sent it: its message's header, else what its sender recorded.
            client = client_from(self.request) or services.stores.control.client(job_id)
            # Listed under its client, also when a sender by task name did not list it.
            if not listed(self.request):
                services.index.add(job_id, client, only_new=True)
            # A job may only name its own client's input and jobs (HTTP API isolation).
            services.stores.control.check_references(job_id, kwargs.get("blob"),
                                                     kwargs.get("merge_from"))
            kwargs = services.stores.control.unsealed(kwargs)  # its password, its truth
    except OcrError as exc:
        _retry_if_transient(self, exc)
        # Ended without its request: the input it named is someone else's, not freed.
        refused = Outcome.failed(job_id, exc, None)
        refused.sender = client_from(self.request)
        _end(self, services, refused)
        raise Ignore() from None
    try:
        request = replace(decode_request(kwargs, settings), client=client)
    except OcrError as exc:
        end_from_message(self.app, job_id, kwargs, JobStatus.FAILURE, exc,
                         request=self.request, client=client)
        raise Ignore() from None
    # The engine that reads the job (its own, its language's, or this worker's): failures name it.
    engine = resident.current(settings).for_job(request.engine, request.lang)
    engines = resident.current(settings)
    carried = CarriedWrites()  # the previews and page counts its ending sends
    try:
        with transient("Redis or the broker"):
            job = Job(job_id, request, engine, started, _previous(self.app, request))
            ports = JobPorts(
                progress=functools.partial(report_progress, self.app, job_id),
                pages_read=functools.partial(_pages_read, engine, client, job_id, carried),
                check_pages=functools.partial(services.reservations.settle, job_id, client,
                                              engine=engine),
                carried=carried,
                refused=functools.partial(page_tasks(self).refusal, client))
            read = functools.partial(process_job, job, settings, engines, services.stores,
                                     ports)
            # A thread pool enforces no limit: the job's own read is bounded here.
            work = (thread_limits.bounded(settings.soft_time_limit, read)
                    if engines.threaded else read())
            if isinstance(work, FanOut):
                fan_out(self, work, services)  # raises Ignore: ended by its last page
    except OcrError as exc:
        _retry_if_transient(self, exc)  # the input stays for the retry
        outcome = Outcome.failed(job_id, exc, request, engine=engine, started=started)
    except SoftTimeLimitExceeded:
        late: OcrError = (DeadlineExceeded("the job's deadline passed while it ran")
                          if past_deadline(request.deadline) else
                          Timeout(f"the job ran past its soft time limit of "
                                  f"{settings.soft_time_limit} s"))
        outcome = Outcome.failed(job_id, late, request, engine=engine, started=started)
    except Ignore:
        raise  # fanned out: the job ends when its last page is in
    except Exception as exc:  # noqa: BLE001 - any other failure ends the job, logged
        outcome = Outcome.failed(job_id, unexpected(job_id, exc), request, engine=engine,
                                 started=started)
    else:
        outcome = work  # a FanOut raised Ignore in fan_out
    _end(self, services, outcome, carried)
    return celery_summary(outcome)


def _pages_read(engine: str, client: str, job_id: str, carried: CarriedWrites,
                pages: list[PageRecord], cached: bool) -> None:
    """Count the pages a job read: its worker's counters held, its client's usage carried."""
    counted = telemetry.pages_read(engine, pages, cached, client=client, job=job_id,
                                   recorded=True)
    if not cached:  # escalated here, their first reading kept (no live worker)
        telemetry.pages_escalated(pages)
    if counted is not None:
        carried.add("its pages' count in the client's usage",
                    functools.partial(PageUsage.queue_counted, counted=counted))


def _retry_if_transient(task: Task, exc: OcrError) -> None:
    """Retry `task` for a retryable error (until its retries are used up)."""
    if exc.retryable:
        retry_later(task, exc)


def _end(task: Task, services: JobServices, outcome: Outcome,
         carried: CarriedWrites | None = None) -> None:
    """End the job; a store unreachable at that moment retries the task instead."""
    try:
        with transient("Redis or the broker"):
            services.ender.end(outcome, carried)
    except OcrError as exc:
        if not exc.retryable:
            raise
        retry_later(task, exc)
        raise


def celery_summary(outcome: Outcome) -> dict[str, Any]:
    """What Celery sees of an ended job: the error raised again, or a summary.

    (Not `Ignore`: Celery's handling of an ignored task keeps memory per task.)
    """
    if outcome.status is JobStatus.FAILURE and outcome.error is not None:
        raise outcome.error
    pages = outcome.result.pages if outcome.result is not None else []
    return {"id": outcome.job_id, "status": outcome.status.value, "pages": len(pages)}


def fan_out(task: Task, work: FanOut, services: JobServices) -> NoReturn:
    """Enqueue one page task per OCR page or escalated page; the job ends with its last.

    Page tasks get the job's priority, and their ids are kept (for cancellation).
    Raises `Ignore`, never returns: a returned value would be stored as the job's
    SUCCESS (a message from Flower or another language's client may ask Celery to store
    results) and sent as a `task-succeeded` event, both before the job has ended.
    """
    # The queue of the engine that reads the job (named, routed by its language, or this
    # worker's): this worker consumes it, and so does every worker that can run it.
    queue = job_queue(work.meta.job.engine)
    control = services.stores.control
    meta, spent = work.sealed(functools.partial(control.seal,
                                                ttl=task.app.ocr_settings.blob_ttl))
    meta = replace(meta, page_tasks=[uuid() for _ in meta.ocr_pages],
                   chunk_tasks=[uuid() for _ in meta.text_chunks], reply_queue=queue)
    job_id = meta.job_id
    priority = (task.request.delivery_info or {}).get("priority")
    # Progress with the meta: a fast page could otherwise finish the job before it.
    progress = page_progress(task.app, job_id, meta.total)
    started = services.join.start(meta, work.text_pages, progress.write)
    if spent:
        control.forget_sealed(spent)
    if work.replaced_blob:
        services.stores.blobs.delete(work.replaced_blob)  # the encrypted upload
    if not started:  # the job ended while it was split (its ending freed the rest)
        services.stores.blobs.delete(meta.request.blob)
        raise Ignore()
    read = [*work.text_pages, *work.escalated]  # those this task read
    telemetry.pages_read(meta.job.engine, read, client=meta.request.client, job=job_id)
    telemetry.pages_escalated(read)
    if progress.write is not None:
        progress.tell(len(work.text_pages), meta.total)
    target = task.app.ocr_settings.redis_target
    if not services.join.keep(job_id, target):  # at once without OCR_REDIS_MIN_REPLICAS
        log.error("job %s: its split reached no Redis replica within %g s; its pages are "
                  "sent without one", job_id, target.replica_timeout)
    send_pages(task.app, meta, priority)
    if work.escalated:
        page_tasks(task).escalate(meta.describe(), work.escalated)
    raise Ignore()  # the job's result is stored when its last page is recorded
