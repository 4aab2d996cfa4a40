"""Public and internal Celery tasks of a job: thin wrappers around `tasks.lifecycle`.

They decode messages into typed records, call the lifecycle, retry what is retryable
(the error classes' `retryable` flag, with backoff) and hand every ending to the job's
one exit (`JobServices.ender`). A job's result is stored by that exit, so Celery stores
nothing for `ocr.document` (`ignore_result`) and logs no result text.

Task bodies run in worker pool children (`ocr.cancel` and `ocr.http_callback` also in
the Procfile's control worker); `pdf_page_lost` runs wherever Celery marks a page task
failed (the worker parent, for a child killed at its hard time limit).
"""

from __future__ import annotations

import functools
import logging
import os
import random
import threading
import time
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, NoReturn

from billiard.exceptions import SoftTimeLimitExceeded
from celery import Celery, Task, shared_task, states
from celery.exceptions import Ignore
from kombu.utils.uuid import uuid

from tasks.engines import resident
from tasks.errors import (
    BadRequest,
    CallbackNotAllowed,
    DeadlineExceeded,
    OcrError,
    Timeout,
    WorkerLost,
    error_info,
)
from tasks.lifecycle.callbacks import post_json, record_delivery, signing_secrets
from tasks.lifecycle.cancel import cancel_job, end_cancelled_document
from tasks.lifecycle.fanout import (
    OpenDocumentCache,
    Progress,
    record_page,
    run_pdf_page,
    run_text_chunk,
    unexpected,
)
from tasks.lifecycle.inputs import decode_request
from tasks.lifecycle.jobs import FanOut, process_job
from tasks.pipeline.documents import past_deadline
from tasks.pipeline.results import failed_page
from tasks.queue.parent_endings import JobServices, end_from_message, report_progress
from tasks.queue.poison_guard import GuardedTask
from tasks.queue.routing import job_queue
from tasks.records.jobs import DocumentMeta, JobStatus, Outcome
from tasks.records.request import JobRequest
from tasks.records.results import DocumentResult, PageError, PageRecord
from tasks.settings import Settings
from tasks.state.boundary import publishing, transient
from tasks.state.stores import BlobStore

log = logging.getLogger(__name__)
# Retries of retryable errors (OcrError.retryable): exponential backoff (2 s doubling, 60 s
# cap) with "equal jitter": half of each step is waited for sure, the other half is random.
# Full jitter could spend all five retries within a few seconds, shorter than a broker
# or an inference server takes to come back; this way they span at least 31 s.
MAX_RETRIES = 5
RETRY_BACKOFF = 2
RETRY_BACKOFF_MAX = 60


def retry_later(task: Task, exc: OcrError) -> None:
    """Retry `task` for a retryable error; returns when its retries are used up."""
    retries = task.request.retries
    most = max_retries(task.app.ocr_settings, task.app.ocr_engine)
    if retries >= most:
        return
    step = min(RETRY_BACKOFF_MAX, RETRY_BACKOFF * 2**retries)
    countdown = step / 2 + random.uniform(0, step / 2)
    raise task.retry(exc=exc, countdown=countdown, max_retries=most)


def max_retries(settings: Settings, engine: str) -> int:
    """MAX_RETRIES; on a vlm-api worker, as many as fit in OCR_VLM_API_RETRY_SECONDS.

    A GPU server takes minutes to load or restart: its pages are retried for a time,
    not a count (each backoff step counted at its mean, 3/4 of the step).
    """
    if engine != "vlm-api":
        return MAX_RETRIES
    spent, retries = 0.0, 0
    while True:
        spent += 0.75 * min(RETRY_BACKOFF_MAX, RETRY_BACKOFF * 2**retries)
        if spent > settings.vlm_api_retry_seconds:
            return retries
        retries += 1


class _SharedBlobs:
    """The PDF bytes of the last few documents, shared by the threads of one process.

    Bytes never change and are safe to share; each thread opens its own PyMuPDF
    document on them (`_ThreadDocs`), so that a thread pool of 128 reads one copy of a
    PDF, not 128, and no document is shared between threads.
    """

    KEEP = 4

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bytes: dict[str, bytes] = {}

    def get(self, blob: str, blobs: BlobStore) -> bytes:
        with self._lock:
            data = self._bytes.get(blob)
        if data is None:
            data = blobs.get(blob)
            with self._lock:
                self._bytes[blob] = data
                while len(self._bytes) > self.KEEP:
                    del self._bytes[next(iter(self._bytes))]
        return data


class _ThreadDocs(OpenDocumentCache):
    """One thread's open PDF, opened on the bytes the process's threads share."""

    def get(self, blob: str, blobs: BlobStore, settings: Settings) -> Any:
        return super().get(blob, _SharedReader(blobs), settings)  # type: ignore[arg-type]


@dataclass(frozen=True)
class _SharedReader:
    blobs: BlobStore

    def get(self, blob: str) -> bytes:
        return _shared_blobs.get(blob, self.blobs)


_shared_blobs = _SharedBlobs()
_thread_docs = threading.local()


def _open_docs() -> OpenDocumentCache:
    """The open PDF of the calling thread (a prefork child has one thread)."""
    docs: OpenDocumentCache | None = getattr(_thread_docs, "docs", None)
    if docs is None:
        docs = _thread_docs.docs = _ThreadDocs()
    return docs


class DocumentTask(GuardedTask):
    """`ocr.document`: every refusal ends the job through its one exit."""

    abstract = True

    def check_start(self, task_id: str, kwargs: dict[str, Any]) -> None:
        if JobServices.for_app(self.app).ender.has_ended(task_id):
            raise Ignore()  # a redelivery of a job that has ended: nothing to do

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
    return DocumentResult.from_json(earlier.result)


@shared_task(name="ocr.document", bind=True, base=DocumentTask, ignore_result=True,
             throws=(OcrError,))
def document(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """OCR one image or PDF; see docs/tasks.md for kwargs and the result schema.

    The result is stored by the job's one exit, so Celery stores nothing
    (`ignore_result`): it sees a small summary, or the job's error raised again.
    """
    started = time.time()  # the job's clock (`timings.total_seconds`) starts here
    settings: Settings = self.app.ocr_settings
    job_id = self.request.id
    # What `task_track_started` would store, were results not ignored.
    self.backend.store_result(job_id, {"pid": os.getpid(),
                                       "hostname": self.request.hostname}, states.STARTED)
    if args:
        end_from_message(self.app, job_id, kwargs, JobStatus.FAILURE, BadRequest(
            "ocr.document takes keyword arguments only"))
        raise Ignore()
    services = JobServices.for_app(self.app)
    try:
        with transient("Redis"):
            # A job may only name its own client's input and jobs (HTTP API isolation).
            services.stores.control.check_references(job_id, kwargs.get("blob"),
                                                     kwargs.get("merge_from"))
    except OcrError as exc:
        _retry_if_transient(self, exc)
        # Ended without its request: the input it named is someone else's, not freed.
        _end(self, services, Outcome.failed(job_id, exc, None))
        raise Ignore() from None
    try:
        request = decode_request(kwargs, settings)
    except OcrError as exc:
        end_from_message(self.app, job_id, kwargs, JobStatus.FAILURE, exc)
        raise Ignore() from None
    # The engine that reads the job (its own, its language's, or this worker's): failures name it.
    engine = resident.current(settings).for_job(request.engine, request.lang)
    try:
        with transient("Redis or the broker"):
            work = process_job(job_id, request, settings, resident.current(settings),
                               services.stores, _previous(self.app, request),
                               progress=functools.partial(report_progress, self.app, job_id),
                               started=started, engine_name=engine)
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
    outcome.reply_queue = (self.request.delivery_info or {}).get("routing_key")
    _end(self, services, outcome)
    return celery_summary(outcome)


def _retry_if_transient(task: Task, exc: OcrError) -> None:
    """Retry `task` for a retryable error (until its retries are used up)."""
    if exc.retryable:
        retry_later(task, exc)


def _end(task: Task, services: JobServices, outcome: Outcome) -> None:
    """End the job; a store unreachable at that moment retries the task instead."""
    try:
        with transient("Redis or the broker"):
            services.ender.end(outcome)
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
    """Enqueue one page task per OCR page; the job ends when its last page is in.

    Page tasks get the job's priority, and their ids are kept (for cancellation).
    Raises `Ignore`, never returns: a returned value would be stored as the job's
    SUCCESS (a message from Flower or another language's client may ask Celery to store
    results) and sent as a `task-succeeded` event, both before the job has ended.
    """
    # The queue of the engine that reads the job (named, routed by its language, or this
    # worker's): this worker consumes it, and so does every worker that can run it.
    queue = job_queue(work.meta.engine)
    meta = replace(work.meta, page_tasks=[uuid() for _ in work.meta.ocr_pages],
                   chunk_tasks=[uuid() for _ in work.meta.text_chunks], reply_queue=queue)
    job_id = meta.job_id
    priority = (task.request.delivery_info or {}).get("priority")
    started = services.join.start(meta, work.text_pages)
    if work.replaced_blob:
        services.stores.blobs.delete(work.replaced_blob)  # the encrypted upload
    if not started:  # the job ended while it was split (its ending freed the rest)
        services.stores.blobs.delete(meta.request.blob)
        raise Ignore()
    # Progress first: a fast page could otherwise finish the job before this write.
    report_progress(task.app, job_id, len(work.text_pages), meta.total)
    with publishing("a page task"):
        for number, page_id in zip(meta.ocr_pages, meta.page_tasks, strict=True):
            pdf_page.apply_async((job_id, number), queue=queue, task_id=page_id,
                                 priority=priority,
                                 link_error=pdf_page_lost.s(job_id, number, queue))
        for index, chunk_id in enumerate(meta.chunk_tasks):
            pdf_text_chunk.apply_async((job_id, index), queue=queue, task_id=chunk_id,
                                       priority=priority,
                                       link_error=pdf_chunk_lost.s(job_id, index, queue))
    raise Ignore()  # the job's result is stored when its last page is recorded


@shared_task(name="ocr.pdf_page", bind=True, base=GuardedTask)
def pdf_page(self: Task, doc_id: str, number: int) -> dict[str, Any]:
    """OCR one page of a fanned-out PDF and end the document if it was the last."""
    settings: Settings = self.app.ocr_settings
    services = JobServices.for_app(self.app)
    meta, skipped = _document_to_read(self, doc_id, services)
    if meta is None:
        return {"document": doc_id, "number": number, "skipped": skipped}
    try:
        with transient("Redis"):
            page = run_pdf_page(meta, number, resident.current(settings), _open_docs(),
                                settings, services.stores)
    except OcrError as exc:  # retryable: the others are failed pages already
        retry_later(self, exc)
        page = failed_page(number, exc)
    except SoftTimeLimitExceeded:
        page = failed_page(number, Timeout(f"page {number} ran past its soft time limit "
                                           f"of {settings.page_soft_time_limit} s"))
    _record_or_end(self, meta, page, services)
    return {"document": doc_id, "number": number, "ok": not page.failed}


@shared_task(name="ocr.pdf_text_chunk", bind=True, base=GuardedTask)
def pdf_text_chunk(self: Task, doc_id: str, index: int) -> dict[str, Any]:
    """Analyse a chunk of a fanned-out PDF's text-layer pages (output=markdown/json).

    Ends the document if its pages were the last.
    """
    settings: Settings = self.app.ocr_settings
    services = JobServices.for_app(self.app)
    meta, skipped = _document_to_read(self, doc_id, services)
    if meta is None:
        return {"document": doc_id, "chunk": index, "skipped": skipped}
    numbers = meta.text_chunks[index]
    try:
        with transient("Redis"):
            pages = run_text_chunk(meta, index, _open_docs(), settings, services.stores)
    except OcrError as exc:  # retryable (reading the input): the pages fail after retries
        retry_later(self, exc)
        pages = [failed_page(n, exc) for n in numbers]
    except SoftTimeLimitExceeded:
        pages = [failed_page(n, Timeout(f"page {n}'s layout analysis ran past the soft "
                                        f"time limit of {settings.soft_time_limit} s"))
                 for n in numbers]
    _record_or_end(self, meta, pages, services)
    return {"document": doc_id, "chunk": index, "pages": len(pages)}


@shared_task(name="ocr.pdf_chunk_lost")
def pdf_chunk_lost(request: Any, exc: BaseException, traceback: Any, doc_id: str,
                   index: int, queue: str) -> None:
    """Errback of a chunk task that failed outright: its pages are recorded as failed."""
    pdf_chunk_failed.apply_async((doc_id, index, error_info(exc)), queue=queue)


@shared_task(name="ocr.pdf_chunk_failed", bind=True)
def pdf_chunk_failed(self: Task, doc_id: str, index: int, error: dict[str, Any]) -> None:
    """Record a lost chunk's pages as failed, so the document still ends (PARTIAL)."""
    _record_lost(self, doc_id, lambda meta: [
        PageRecord(n, source="text-layer", error=PageError.from_json(error))
        for n in meta.text_chunks[index]])


def _record_lost(task: Task, doc_id: str,
                 lost: Callable[[DocumentMeta], PageRecord | list[PageRecord]]) -> None:
    """Record the pages a lost task held as failed (retried while Redis is away)."""
    services = JobServices.for_app(task.app)
    try:
        with transient("Redis or the broker"):
            meta = services.join.find(doc_id)
            if meta is None:
                return  # the document has ended
            _record(task.app, meta, lost(meta), services)
    except OcrError as exc:
        retry_later(task, exc)
        raise


def _document_to_read(task: Task, doc_id: str,
                      services: JobServices) -> tuple[DocumentMeta | None, str]:
    """A fanned-out document's meta, or None and why its pages are not read.

    A cancel that came while the PDF was split ends the document here.
    """
    try:
        with transient("Redis"):
            meta = services.join.find(doc_id)
            cancelled = meta is not None and services.stores.control.is_cancelled(doc_id)
    except OcrError as exc:
        retry_later(task, exc)
        raise
    if meta is None:
        return None, "document finished"
    if cancelled:
        try:
            with transient("Redis or the broker"):
                end_cancelled_document(meta, services.join, services.ender)
        except OcrError as exc:
            retry_later(task, exc)
            raise
        return None, "document cancelled"
    return meta, ""


def _record_or_end(task: Task, meta: DocumentMeta, pages: PageRecord | list[PageRecord],
                   services: JobServices) -> None:
    """Record read pages; a record or merge that met an outage past its retries ends the job."""
    try:
        with transient("Redis or the broker"):
            _record(task.app, meta, pages, services)
    except OcrError as exc:
        retry_later(task, exc)
        services.ender.end(Outcome.failed(meta.job_id, exc, meta.request, engine=meta.engine,
                                          started=meta.started,
                                          reply_queue=meta.reply_queue))


def _record(app: Celery, meta: DocumentMeta, page: PageRecord | list[PageRecord],
            services: JobServices) -> None:
    progress: Progress = functools.partial(report_progress, app, meta.job_id)
    if record_page(meta, page, services.join, services.ender, app.ocr_settings,
                   services.stores, progress):
        _open_docs().close()  # the document ended: its pages are not read here again


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
    _record_lost(self, doc_id, lambda _meta: PageRecord(
        number, source="ocr", error=PageError.from_json(error)))


@shared_task(name="ocr.cancel", bind=True, throws=(OcrError,))
def cancel(self: Task, job_id: str) -> dict[str, str]:
    """Cancel a job (public: any Celery client sends it with kwargs `job_id`).

    Pages done are kept, running ones are killed; see docs/tasks.md.
    """
    if not isinstance(job_id, str) or not job_id:
        raise BadRequest("`job_id` must be the id of a job")
    services = JobServices.for_app(self.app)

    def stop(ids: list[str]) -> None:
        self.app.control.revoke(ids, terminate=True, signal="SIGKILL")

    status = cancel_job(job_id, services.stores.control, services.join, services.ender,
                        stop)
    return {"job_id": job_id, "status": status}


@shared_task(name="ocr.http_callback", bind=True, max_retries=5,
             autoretry_for=(urllib.error.URLError, OSError), retry_backoff=2,
             retry_backoff_max=120, retry_jitter=True)
def http_callback(self: Task, url: str, body: dict[str, Any]) -> int:
    """POST a finished job's summary to the caller's URL; retried with backoff."""
    settings: Settings = self.app.ocr_settings
    job_id = body.get("id")
    secrets = None
    stores = JobServices.for_app(self.app).stores
    if isinstance(job_id, str):  # an API client's job: signed with that client's secret
        secrets = signing_secrets(stores.control.owner(job_id), stores.webhook_secrets)
    # The delivery is recorded on the job (its result's `callback`): sent, refused by
    # the address policy, or failed after the last retry.
    try:
        status = post_json(url, body, settings, secrets)
    except CallbackNotAllowed as exc:
        record_delivery(stores.control, job_id, "refused", exc.code,
                        attempts=self.request.retries + 1)
        raise
    except (urllib.error.URLError, OSError) as exc:
        if self.request.retries >= (self.max_retries or 0):
            record_delivery(stores.control, job_id, "failed", "callback_failed",
                            attempts=self.request.retries + 1, reason=type(exc).__name__)
        raise
    record_delivery(stores.control, job_id, "sent" if status < 300 else "rejected",
                    None if status < 300 else "callback_rejected",
                    attempts=self.request.retries + 1, http_status=status)
    return status
