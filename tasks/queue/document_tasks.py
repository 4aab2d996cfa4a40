"""Public Celery tasks: thin wrappers that decode arguments and call `tasks.lifecycle.jobs`.

They also decide retries, where results go and which callbacks fire.

Task bodies run in worker pool children; `pdf_page_lost` runs wherever Celery marks a
page task failed (the worker parent, for a child killed at its hard time limit).
"""

from __future__ import annotations

import functools
import urllib.error
from typing import Any, NoReturn

from billiard.exceptions import SoftTimeLimitExceeded
from celery import Celery, Task, shared_task, states
from celery.exceptions import Ignore
from kombu.utils.uuid import uuid

from tasks.engines import resident
from tasks.errors import (
    BadRequest,
    DeadlineExceeded,
    InputNotFound,
    OcrError,
    Timeout,
    TransientError,
    error_info,
)
from tasks.lifecycle.callbacks import post_json, summary
from tasks.lifecycle.jobs import FanOut, Stores, merge_document, process_job, run_pdf_page
from tasks.pipeline.documents import past_deadline
from tasks.pipeline.inputs import JobRequest
from tasks.pipeline.results import failed_page
from tasks.queue.poison_guard import GuardedTask
from tasks.queue.telemetry import document_finished
from tasks.state.boundary import transient_calls
from tasks.state.join import DocumentJoin, OpenDocumentCache
from tasks.state.stores import BlobStore, JobControl, OutputStore, ResultCache, connect
from worker_config import Settings, queue_for_engine

PROGRESS_STATE = "PROGRESS"
_open_docs = OpenDocumentCache()
_stores_made: dict[int, tuple[Stores, DocumentJoin]] = {}


def _stores(settings: Settings) -> tuple[Stores, DocumentJoin]:
    """The Redis-backed stores of this process for `settings` (one connection pool)."""
    if id(settings) not in _stores_made:
        client = connect(settings.redis_url)
        _stores_made[id(settings)] = (
            Stores(BlobStore(client, settings.blob_ttl),
                   ResultCache(client, settings.result_ttl),
                   OutputStore(client, settings.result_ttl),
                   JobControl(client, settings.result_ttl)),
            DocumentJoin(client, settings.blob_ttl))
    return _stores_made[id(settings)]


def report_progress(app: Celery, job_id: str, done: int, total: int) -> None:
    """Progress in the result backend (for clients) and as an event (for Flower)."""
    meta = {"done": done, "total": total}
    app.backend.store_result(job_id, meta, PROGRESS_STATE)
    # `result` is a field Flower shows on the task page; the final result replaces it.
    send_job_event(app, "task-progress", job_id, result=f"{done}/{total} pages", **meta)


def send_job_event(app: Celery, event: str, job_id: str, **fields: Any) -> None:
    # Sent as the worker node: Flower lists every other sender name as a worker of its own.
    task = app.current_worker_task
    hostname = task.request.hostname if task is not None else None
    with app.events.default_dispatcher(hostname=hostname) as dispatcher:
        dispatcher.send(event, uuid=job_id, **fields)


def notify(app: Celery, request: JobRequest, outcome: dict[str, Any], queue: str | None
           ) -> None:
    """Push a finished job to the caller's callback task and/or URL."""
    if request.callback_task:
        app.send_task(request.callback_task, args=[outcome], queue=request.callback_queue)
    if request.callback_url:
        http_callback.apply_async((request.callback_url, summary(outcome)), queue=queue)


def _failure(job_id: str, exc: OcrError) -> dict[str, Any]:
    return {"id": job_id, "status": "FAILURE", "error": exc.to_dict()}


def _queue_of(task: Task) -> str | None:
    return (task.request.delivery_info or {}).get("routing_key")


def _previous(app: Celery, request: JobRequest) -> dict[str, Any] | None:
    """The result of the job a retry completes (`merge_from`)."""
    if request.merge_from is None:
        return None
    earlier = app.AsyncResult(request.merge_from)
    if earlier.state != states.SUCCESS or not isinstance(earlier.result, dict):
        raise BadRequest("`merge_from` must name a finished job whose result is stored")
    return dict(earlier.result)


@shared_task(name="ocr.document", bind=True, base=GuardedTask, throws=(OcrError,),
             autoretry_for=(TransientError,), retry_backoff=2, retry_backoff_max=60,
             retry_jitter=True, max_retries=5)
@transient_calls("Redis or the broker")
def document(self: Task, **kwargs: Any) -> dict[str, Any]:
    """OCR one image or PDF; see docs/tasks.md for kwargs and the result schema."""
    settings: Settings = self.app.ocr_settings
    stores, join = _stores(settings)
    job_id = self.request.id
    try:
        request = JobRequest.from_kwargs(kwargs, settings)
    except OcrError:
        stores.blobs.delete(kwargs.get("blob"))
        raise
    try:
        outcome = process_job(job_id, request, kwargs, settings, resident.current(settings),
                              stores, _previous(self.app, request),
                              progress=functools.partial(report_progress, self.app, job_id))
    except TransientError:
        raise  # retried by autoretry_for; the blob stays for the retry
    except SoftTimeLimitExceeded:
        stores.blobs.delete(kwargs.get("blob"))
        late: OcrError = (DeadlineExceeded("the job's deadline passed while it ran")
                          if past_deadline(request.deadline) else
                          Timeout(f"the job ran past its soft time limit of "
                                  f"{settings.soft_time_limit} s"))
        notify(self.app, request, _failure(job_id, late), _queue_of(self))
        raise late from None
    except OcrError as exc:
        stores.blobs.delete(kwargs.get("blob"))
        notify(self.app, request, _failure(job_id, exc), _queue_of(self))
        raise
    except BaseException:
        stores.blobs.delete(kwargs.get("blob"))
        raise
    if isinstance(outcome, FanOut):
        fan_out(self, outcome, kwargs, settings, stores, join)
    if outcome["status"] != "PARTIAL":
        stores.blobs.delete(kwargs.get("blob"))
    notify(self.app, request, outcome, _queue_of(self))
    return outcome


def fan_out(task: Task, work: FanOut, kwargs: dict[str, Any], settings: Settings,
            stores: Stores, join: DocumentJoin) -> NoReturn:
    """Enqueue one page task per OCR page; the last one to finish stores the result.

    Page tasks get the job's priority, and their ids are kept (for cancellation).
    """
    job_id = task.request.id
    work.meta["blob"] = kwargs.get("blob") or stores.blobs.put(work.data)
    work.meta["page_tasks"] = page_ids = [uuid() for _ in work.ocr_pages]
    work.meta["reply_queue"] = queue = queue_for_engine(work.meta["engine"])
    priority = (task.request.delivery_info or {}).get("priority")
    join.start(job_id, work.meta, work.text_pages)
    # Progress first: a fast page could otherwise finish the job before this write.
    report_progress(task.app, job_id, len(work.text_pages), work.meta["total"])
    for number, page_id in zip(work.ocr_pages, page_ids, strict=True):
        pdf_page.apply_async((job_id, number), queue=queue, task_id=page_id,
                             priority=priority,
                             link_error=pdf_page_lost.s(job_id, number, queue))
    raise Ignore()  # the job's result is stored by the page task that merges


@shared_task(name="ocr.pdf_page", bind=True, base=GuardedTask,
             autoretry_for=(TransientError,), retry_backoff=2, retry_jitter=True,
             max_retries=5)
@transient_calls("Redis or the broker")
def pdf_page(self: Task, doc_id: str, number: int) -> dict[str, Any]:
    """OCR one page of a fanned-out PDF and merge the document if it was the last."""
    settings: Settings = self.app.ocr_settings
    stores, join = _stores(settings)
    try:
        meta = join.meta(doc_id)
    except InputNotFound:
        return {"document": doc_id, "number": number, "skipped": "document finished"}
    if stores.control.is_cancelled(doc_id):
        return {"document": doc_id, "number": number, "skipped": "document cancelled"}
    try:
        registry = resident.current(settings)
        page = run_pdf_page(meta, number, registry, _open_docs, settings, stores)
        if "error" not in page:
            described = registry.describe(meta["engine"])
            page["worker"] = {k: described[k] for k in ("pid", "tasks_in_process",
                                                        "load_seconds")}
    except SoftTimeLimitExceeded:
        page = failed_page(number, Timeout(f"page {number} ran past its soft time limit "
                                           f"of {settings.page_soft_time_limit} s"))
    record_page(self.app, doc_id, meta, page, settings)
    return {"document": doc_id, "number": number, "ok": "error" not in page}


def record_page(app: Celery, doc_id: str, meta: dict[str, Any], page: dict[str, Any],
                settings: Settings) -> None:
    stores, join = _stores(settings)
    report_progress(app, doc_id, min(join.done(doc_id) + 1, meta["total"]), meta["total"])
    if not join.record(doc_id, page, meta["total"]):
        return
    request = JobRequest(**meta["request"])
    keep_input = False
    try:
        result = merge_document(doc_id, meta, join.pages(doc_id), resident.current(settings),
                                settings, stores)
    except OcrError as exc:
        app.backend.store_result(doc_id, exc, states.FAILURE)
        send_job_event(app, "task-failed", doc_id, exception=str(exc))
        notify(app, request, _failure(doc_id, exc), meta["reply_queue"])
        document_finished(doc_id, meta, exc)
    else:
        keep_input = result["status"] == "PARTIAL"
        app.backend.store_result(doc_id, result, states.SUCCESS)
        send_job_event(app, "task-succeeded", doc_id, result=result["status"],
                       runtime=result["timings"]["total_seconds"])
        notify(app, request, result, meta["reply_queue"])
        document_finished(doc_id, meta, result)
    finally:
        join.cleanup(doc_id)
        if not keep_input:
            stores.blobs.delete(meta["blob"])
        _open_docs.close()


@shared_task(name="ocr.pdf_page_lost")
def pdf_page_lost(request: Any, exc: BaseException, traceback: Any, doc_id: str,
                  number: int, queue: str) -> None:
    """Errback of a page task that failed outright: record the page as failed.

    That is a child killed at its hard limit, or a page refused as a poison job. The
    record goes to the page's own queue, which the page's workers consume.
    """
    pdf_page_failed.apply_async((doc_id, number, error_info(exc)), queue=queue)


@shared_task(name="ocr.pdf_page_failed", bind=True)
def pdf_page_failed(self: Task, doc_id: str, number: int, error: dict[str, Any]) -> None:
    """Record a lost page as failed, so the document still ends (PARTIAL)."""
    settings: Settings = self.app.ocr_settings
    _, join = _stores(settings)
    try:
        meta = join.meta(doc_id)
    except InputNotFound:
        return
    page = {"number": number, "text": "", "source": "ocr", "error": error}
    record_page(self.app, doc_id, meta, page, settings)


@shared_task(name="ocr.http_callback", bind=True, max_retries=5,
             autoretry_for=(urllib.error.URLError, OSError), retry_backoff=2,
             retry_backoff_max=120, retry_jitter=True)
def http_callback(self: Task, url: str, body: dict[str, Any]) -> int:
    """POST a finished job's summary to the caller's URL; retried with backoff."""
    settings: Settings = self.app.ocr_settings
    return post_json(url, body, settings.callback_timeout)
