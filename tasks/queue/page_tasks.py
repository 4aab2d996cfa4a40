"""The page and chunk tasks of a fanned-out PDF, and the errbacks of lost ones.

Runs in worker pool children (or a thread-pool worker's threads): `ocr.pdf_page` reads
one page, `ocr.pdf_text_chunk` analyses a chunk of text-layer pages (output=markdown or
json); the call that records a document's last page ends the job. A page the job's
engine is unsure of (a PDF's, or an image's) goes to the job's escalation engine's
queue (`send_escalations`): `ocr.escalate_page` reads it again there and records it;
`ocr.escalation_lost` (its errback) and `ocr.escalation_due` (sent to the job's own
queue, due OCR_ESCALATE_WAIT_SECONDS later) record its first reading instead when the
second does not come (docs/escalation.md). `pdf_page_lost` and
`pdf_chunk_lost` run wherever Celery marks such a task failed (the worker parent, for a
child killed at its hard time limit): they send `ocr.pdf_page_failed` /
`ocr.pdf_chunk_failed`, which record the pages as failed so the document still ends.
Retries follow tasks/queue/retry_policy.py; the open PDF is the thread's
(tasks/lifecycle/open_documents.py). A page or chunk task stores no Celery result and
no STARTED mark (its job's join and ending say all there is); its errback still runs.
A page, chunk or escalation task reads with the `PageDescriptor` its message carries
(the `ocr_page` header); from Redis it reads only whether its document runs and was
cancelled (a cancel marks the job, not the page's own id). A message without one (sent
by the previous release) reads the document's meta instead. The record writes the
job's progress and counts its pages in the client's usage in the same script.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from billiard.exceptions import SoftTimeLimitExceeded
from celery import Celery, Task, shared_task

from tasks import tracing
from tasks.broker.publishing import pushes_together
from tasks.engines import resident
from tasks.error_codes import error_info
from tasks.errors import OcrError, Timeout
from tasks.lifecycle.cancel import end_cancelled_document
from tasks.lifecycle.fanout import read_again, record_page, run_pdf_page, run_text_chunk
from tasks.lifecycle.open_documents import open_documents
from tasks.pipeline.documents import past_deadline
from tasks.pipeline.escalation import awaits_second_reading, keep_first, mark
from tasks.pipeline.results import failed_page
from tasks.queue import telemetry, thread_limits
from tasks.queue.job_services import JobServices, page_progress
from tasks.queue.message_headers import job_headers, page_descriptor, page_headers
from tasks.queue.poison_guard import GuardedTask
from tasks.queue.retry_policy import retry_later
from tasks.queue.routing import job_queue
from tasks.records.jobs import DocumentMeta, PageDescriptor, escalation_task
from tasks.records.results import PageError, PageRecord
from tasks.settings import Settings
from tasks.state.boundary import publishing, transient
from tasks.state.usage_counts import JobPages

T = TypeVar("T")


@shared_task(name="ocr.pdf_page", bind=True, base=GuardedTask, ignore_result=True,
             track_started=False, marks_own_cancel=False)
def pdf_page(self: Task, doc_id: str, number: int,
             password: str | None = None) -> dict[str, Any]:
    """OCR one page of a fanned-out PDF and end the document if it was the last.

    `password`: an encrypted URL input's, which this host's copy is opened with.
    """
    settings: Settings = self.app.ocr_settings
    services = JobServices.for_app(self.app)
    described, skipped = _page_to_read(self, doc_id, services, lambda _meta: [number])
    if described is None:
        return {"document": doc_id, "number": number, "skipped": skipped}
    engines = resident.current(settings)

    def read() -> PageRecord:
        return run_pdf_page(described, engines, open_documents(), settings,
                            services.stores, password)

    try:
        with transient("Redis"):
            # A thread pool enforces no limit: the page's whole read is bounded here.
            page = (thread_limits.bounded(settings.vlm_api_page_time_limit,
                                          functools.partial(_closing, read))
                    if engines.threaded else read())
    except OcrError as exc:  # retryable: the others are failed pages already
        retry_later(self, exc)
        page = failed_page(number, exc)
    except SoftTimeLimitExceeded:
        page = failed_page(number, Timeout(
            f"page {number} ran past OCR_VLM_API_PAGE_TIME_LIMIT "
            f"({settings.vlm_api_page_time_limit} s)" if engines.threaded else
            f"page {number} ran past its soft time limit of "
            f"{settings.page_soft_time_limit} s"))
    try:
        page = mark(page, described.request, functools.partial(serves, self.app))
    except OcrError as exc:  # the workers' presence unread (Redis)
        retry_later(self, exc)
        raise
    telemetry.pages_escalated([page])
    client = described.request.client
    if awaits_second_reading(page):  # recorded once the escalation engine read it again
        telemetry.pages_read(described.engine, [page], client=client, job=doc_id)
        _send_escalations(self, described, [page], services, password)
        return {"document": doc_id, "number": number, "escalated": True}
    counted = telemetry.pages_read(described.engine, [page], client=client, job=doc_id,
                                   recorded=True)
    _record_or_end(self, described, page, services, password, counted)
    return {"document": doc_id, "number": number, "ok": not page.failed}


def serves(app: Celery, engine: str) -> bool:
    """Whether a live worker consumes `engine`'s queue (OCR_WORKER_LIVENESS_SECONDS)."""
    window = app.ocr_settings.worker_liveness_seconds
    queue = job_queue(engine)
    with transient("Redis"):
        live = JobServices.for_app(app).presence.live_queues(window=window)
    return any(queue in queues for queues in live.values())


def _send_escalations(task: Task, described: PageDescriptor, pages: list[PageRecord],
                      services: JobServices, password: str | None) -> None:
    """Send a page task's escalated page on (`send_escalations`); an outage ends the job."""
    opened = {"password": password} if password else {}
    priority = (task.request.delivery_info or {}).get("priority")
    try:
        send_escalations(task.app, described, pages, priority, opened, services)
    except OcrError as exc:
        retry_later(task, exc)
        services.ender.end(described.failed(exc))


def send_escalations(app: Celery, document: PageDescriptor, pages: list[PageRecord],
                     priority: int | None, opened: dict[str, str],
                     services: JobServices) -> None:
    """Hold escalated pages' first readings and send each to the escalation engine.

    `document` describes a task of the document (`DocumentMeta.describe`); `pages` are
    first readings marked by `mark`. Each `ocr.escalate_page` goes to the escalation
    engine's queue under the id derived for it (`escalation_task`), with its page's
    descriptor, at the job's priority and in its client's lane, with the errback that
    keeps its first reading; and an `ocr.escalation_due` to the job's own queue, due
    once the page may wait no more (OCR_ESCALATE_WAIT_SECONDS, and a little): it keeps
    the first reading of a page whose second reading never came (no worker took it).
    Nothing is sent for a job that has ended.
    """
    job_id, client = document.job_id, document.request.client
    with transient("Redis"):
        if not services.join.hold_first(job_id, pages):
            return
    wait = app.ocr_settings.escalate_wait_seconds
    due = time.time() + wait
    queue = job_queue(document.request.escalate)
    with publishing("an escalated page"), app.producer_or_acquire() as producer:
        for page in pages:
            # Not `declare=[]`: the queue is another pool's, which this worker may not
            # have declared (RabbitMQ).
            escalate_page.apply_async(
                (job_id, page.number, due), opened, queue=queue,
                task_id=escalation_task(job_id, page.number), priority=priority,
                headers=page_headers(client, document.of_pages(page.number)),
                producer=producer, link_error=escalation_lost.s(job_id, page.number, queue))
            escalation_due.apply_async((job_id, page.number), opened,
                                       queue=document.reply_queue,
                                       countdown=wait + DUE_GRACE, priority=priority,
                                       headers=job_headers(client), declare=[],
                                       producer=producer)


# Seconds past an escalated page's due time its `ocr.escalation_due` runs: the second
# reading's own clock stops at the due time, so it is recorded first.
DUE_GRACE = 30.0


@shared_task(name="ocr.escalate_page", bind=True, base=GuardedTask, ignore_result=True,
             track_started=False, marks_own_cancel=False)
def escalate_page(self: Task, doc_id: str, number: int, due: float,
                  password: str | None = None) -> dict[str, Any]:
    """Read an escalated page again with the job's escalation engine, and record it.

    `due` (epoch seconds): past it, or when the read fails, the page keeps its first
    reading with the error (`escalation.error`). Ends the document if it was the last.
    """
    settings: Settings = self.app.ocr_settings
    services = JobServices.for_app(self.app)
    described, skipped = _page_to_read(self, doc_id, services, lambda _meta: [number])
    if described is None:
        return {"document": doc_id, "number": number, "skipped": skipped}
    try:
        with transient("Redis"):
            first = services.join.first(doc_id, number)
            if first is not None and services.join.recorded(doc_id, number):
                first = None  # recorded by its `ocr.escalation_due`
    except OcrError as exc:
        retry_later(self, exc)
        raise
    if first is None:
        return {"document": doc_id, "number": number, "skipped": "page recorded"}
    engines = resident.current(settings)

    def read() -> PageRecord:
        return read_again(described, first, engines, open_documents(), settings,
                          services.stores, password, due)

    try:
        with transient("Redis"):
            page = (thread_limits.bounded(settings.vlm_api_page_time_limit,
                                          functools.partial(_closing, read))
                    if engines.threaded else read())
    except OcrError as exc:  # retryable: retried while the page may wait
        if not past_deadline(due):
            retry_later(self, exc)
        page = keep_first(first, exc)
    except SoftTimeLimitExceeded:
        page = keep_first(first, Timeout(f"page {number}'s second reading ran past its "
                                         "time limit"))
    counted = None
    if page.escalation is not None and page.escalation.error is None:  # read again
        counted = telemetry.pages_read(described.request.escalate or "", [page],
                                       client=described.request.client, job=doc_id,
                                       recorded=True)
    _record_or_end(self, described, page, services, password, counted)
    return {"document": doc_id, "number": number, "ok": page.escalation is not None
            and page.escalation.error is None}


@shared_task(name="ocr.escalation_lost")
def escalation_lost(request: Any, exc: BaseException, traceback: Any, doc_id: str,
                    number: int, queue: str) -> None:
    """Errback of an escalation task that failed outright: the first reading is kept."""
    _send_failed(escalation_failed, request, exc, doc_id, number, queue)


@shared_task(name="ocr.escalation_failed", bind=True)
def escalation_failed(self: Task, doc_id: str, number: int, error: dict[str, Any],
                      password: str | None = None) -> None:
    """Record a lost escalation's page with its first reading (and the error)."""
    _keep_first_reading(self, doc_id, number, PageError.from_json(error), password)


@shared_task(name="ocr.escalation_due", bind=True)
def escalation_due(self: Task, doc_id: str, number: int, password: str | None = None) -> None:
    """Keep an escalated page's first reading if its second has not come by now."""
    _keep_first_reading(self, doc_id, number, PageError.from_json(error_info(Timeout(
        f"page {number}'s second reading did not come within OCR_ESCALATE_WAIT_SECONDS "
        f"({self.app.ocr_settings.escalate_wait_seconds:.0f} s)"))), password)


def _keep_first_reading(task: Task, doc_id: str, number: int, error: PageError,
                        password: str | None) -> None:
    """Record page `number`'s first reading with `error`, unless the page is recorded."""
    services = JobServices.for_app(task.app)
    try:
        with transient("Redis or the broker"):
            meta = services.join.find(doc_id)
            if meta is None or services.join.recorded(doc_id, number):
                return  # the document has ended, or the page is in
            first = services.join.first(doc_id, number)
            if first is None:
                return
            _record(task.app, meta.describe([number]), keep_first(first, error), services,
                    password)
    except OcrError as exc:
        retry_later(task, exc)
        raise


@shared_task(name="ocr.pdf_text_chunk", bind=True, base=GuardedTask, ignore_result=True,
             track_started=False, marks_own_cancel=False)
def pdf_text_chunk(self: Task, doc_id: str, index: int,
                   password: str | None = None) -> dict[str, Any]:
    """Analyse a chunk of a fanned-out PDF's text-layer pages (output=markdown/json).

    Ends the document if its pages were the last.
    """
    settings: Settings = self.app.ocr_settings
    services = JobServices.for_app(self.app)
    described, skipped = _page_to_read(self, doc_id, services,
                                       lambda meta: meta.text_chunks[index])
    if described is None:
        return {"document": doc_id, "chunk": index, "skipped": skipped}
    numbers = described.pages

    def read() -> list[PageRecord]:
        return run_text_chunk(described, open_documents(), settings, services.stores,
                              password)

    try:
        with transient("Redis"):
            pages = (thread_limits.bounded(settings.soft_time_limit,
                                           functools.partial(_closing, read))
                     if resident.current(settings).threaded else read())
    except OcrError as exc:  # retryable (reading the input): the pages fail after retries
        retry_later(self, exc)
        pages = [failed_page(n, exc) for n in numbers]
    except SoftTimeLimitExceeded:
        pages = [failed_page(n, Timeout(f"page {n}'s layout analysis ran past the soft "
                                        f"time limit of {settings.soft_time_limit} s"))
                 for n in numbers]
    counted = telemetry.pages_read(described.engine, pages,
                                   client=described.request.client, job=doc_id,
                                   recorded=True)
    _record_or_end(self, described, pages, services, password, counted)
    return {"document": doc_id, "chunk": index, "pages": len(pages)}


def _closing(read: Callable[[], T]) -> T:
    """`read()` in a helper thread of its own, whose open document is closed after it."""
    try:
        return read()
    finally:
        open_documents().close()


@shared_task(name="ocr.pdf_chunk_lost")
def pdf_chunk_lost(request: Any, exc: BaseException, traceback: Any, doc_id: str,
                   index: int, queue: str) -> None:
    """Errback of a chunk task that failed outright: its pages are recorded as failed."""
    _send_failed(pdf_chunk_failed, request, exc, doc_id, index, queue)


@shared_task(name="ocr.pdf_chunk_failed", bind=True)
def pdf_chunk_failed(self: Task, doc_id: str, index: int, error: dict[str, Any],
                     password: str | None = None) -> None:
    """Record a lost chunk's pages as failed, so the document still ends (PARTIAL)."""
    _record_lost(self, doc_id, lambda meta: [
        PageRecord(n, source="text-layer", error=PageError.from_json(error))
        for n in meta.text_chunks[index]], password)


def _send_failed(failed: Task, request: Any, exc: BaseException, doc_id: str, part: int,
                 queue: str) -> None:
    """An errback's record of a lost task: `failed` sent to `queue` with the error.

    `part` is the lost task's page number or chunk index; an encrypted input's password
    and the trace go with it, as they went with the lost task.
    """
    failed.apply_async((doc_id, part, error_info(exc)), _opened(request), queue=queue,
                       headers=tracing.headers_of(request))


def _opened(request: Any) -> dict[str, str]:
    """The lost task's `password` (an encrypted URL input's), for whoever records it.

    The record may end the document, whose searchable PDF opens this host's copy.
    """
    password = (getattr(request, "kwargs", None) or {}).get("password")
    return {"password": str(password)} if password else {}


def _record_lost(task: Task, doc_id: str,
                 lost: Callable[[DocumentMeta], PageRecord | list[PageRecord]],
                 password: str | None = None) -> None:
    """Record the pages a lost task held as failed (retried while Redis is away)."""
    services = JobServices.for_app(task.app)
    try:
        with transient("Redis or the broker"):
            meta = services.join.find(doc_id)
            if meta is None:
                return  # the document has ended
            pages = lost(meta)
            listed = pages if isinstance(pages, list) else [pages]
            counted = telemetry.pages_read(meta.engine, listed, client=meta.request.client,
                                           job=doc_id, recorded=True)
            _record(task.app, meta.describe(p.number for p in listed), pages, services,
                    password, counted)
    except OcrError as exc:
        retry_later(task, exc)
        raise


def _page_to_read(task: Task, doc_id: str, services: JobServices,
                  pages_of: Callable[[DocumentMeta], Iterable[int]]
                  ) -> tuple[PageDescriptor | None, str]:
    """What a page or chunk task reads with, or None and why its pages are not read.

    The descriptor its message carries, once one read (`DocumentJoin.runs`) found the
    document running and not cancelled. A message without one (a previous release's
    sender) reads the meta instead, and the task's pages in it (`pages_of`). A cancel
    that came while the PDF was split ends the document here (its meta read).
    """
    described = page_descriptor(task.request)
    if described is not None and described.job_id != doc_id:
        described = None  # another job's: this message's own is read from the meta
    meta = None
    try:
        with transient("Redis"):
            if described is not None:
                runs, cancelled = services.join.runs(doc_id)  # one read, not the meta
            else:
                meta, cancelled = services.join.running(doc_id)  # one read
                runs = meta is not None
                if meta is not None:
                    described = meta.describe(pages_of(meta))
    except OcrError as exc:
        retry_later(task, exc)
        raise
    if not runs or described is None:
        return None, "document finished"
    if cancelled:
        try:
            with transient("Redis or the broker"):
                meta = meta or services.join.find(doc_id)
                if meta is not None:
                    end_cancelled_document(meta, services.join, services.ender)
        except OcrError as exc:
            retry_later(task, exc)
            raise
        return None, "document cancelled"
    return described, ""


def _record_or_end(task: Task, described: PageDescriptor,
                   pages: PageRecord | list[PageRecord], services: JobServices,
                   password: str | None = None, counted: JobPages | None = None) -> None:
    """Record read pages; a record or merge that met an outage past its retries ends the job."""
    try:
        with transient("Redis or the broker"):
            _record(task.app, described, pages, services, password, counted)
    except OcrError as exc:
        retry_later(task, exc)
        services.ender.end(described.failed(exc))


def _record(app: Celery, described: PageDescriptor, page: PageRecord | list[PageRecord],
            services: JobServices, password: str | None = None,
            counted: JobPages | None = None) -> None:
    """Record the pages, with the job's progress and the usage `counted`: one script."""
    progress = page_progress(app, described.job_id, described.total)
    if record_page(described, page, services.join, services.ender, app.ocr_settings,
                   services.stores, progress, password, counted):
        open_documents().close()  # the document ended: its pages are not read here again


@shared_task(name="ocr.pdf_page_lost")
def pdf_page_lost(request: Any, exc: BaseException, traceback: Any, doc_id: str,
                  number: int, queue: str) -> None:
    """Errback of a page task that failed outright: record the page as failed.

    That is a child killed at its hard limit, or a page refused as a poison job. The
    record goes to the page's own queue, which the page's workers consume.
    """
    _send_failed(pdf_page_failed, request, exc, doc_id, number, queue)


@shared_task(name="ocr.pdf_page_failed", bind=True)
def pdf_page_failed(self: Task, doc_id: str, number: int, error: dict[str, Any],
                    password: str | None = None) -> None:
    """Record a lost page as failed, so the document still ends (PARTIAL)."""
    _record_lost(self, doc_id, lambda _meta: PageRecord(
        number, source="ocr", error=PageError.from_json(error)), password)


def send_pages(app: Celery, meta: DocumentMeta, priority: int | None,
               opened: dict[str, str]) -> None:
    """Publish a fanned-out job's page and chunk tasks: the port `ocr.document` splits through.

    Each goes to `meta.reply_queue` under the id `meta` names for it, with its
    descriptor (`DocumentMeta.describe`), at the job's priority and in its client's
    lane, with the errback that records it lost. Its args and kwargs are those the
    previous release sends and takes (docs/tasks.md). The queue is not declared again
    on each send: this worker declared it as it started to consume it, and on RabbitMQ
    a child's publish is on a connection of its own (brokers.fresh_connections), where
    a declare would go each time. All of them go on one connection and, on Redis, in
    one push to their lane.
    """
    queue, client = meta.reply_queue, meta.request.client
    document = meta.describe()
    with publishing("a page task"), app.producer_or_acquire() as producer, \
            pushes_together(producer.channel):
        for number, page_id in zip(meta.ocr_pages, meta.page_tasks, strict=True):
            pdf_page.apply_async((meta.job_id, number), opened, queue=queue,
                                 task_id=page_id, priority=priority,
                                 headers=page_headers(client, document.of_pages(number)),
                                 declare=[], producer=producer,
                                 link_error=pdf_page_lost.s(meta.job_id, number, queue))
        for index, (chunk, chunk_id) in enumerate(zip(meta.text_chunks, meta.chunk_tasks,
                                                       strict=True)):
            pdf_text_chunk.apply_async((meta.job_id, index), opened, queue=queue,
                                       task_id=chunk_id, priority=priority,
                                       headers=page_headers(client, document.of_pages(*chunk)),
                                       declare=[], producer=producer,
                                       link_error=pdf_chunk_lost.s(meta.job_id, index, queue))
