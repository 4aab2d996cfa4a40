"""The page and chunk tasks of a fanned-out PDF, and the errbacks of lost ones.

Runs in worker pool children (or a thread-pool worker's threads): `ocr.pdf_page` reads
one page, `ocr.pdf_text_chunk` analyses a chunk of text-layer pages (output=markdown or
json); the call that records a document's last page ends the job. A page the job's
engine is unsure of goes to the job's escalation engine's queue: `ocr.escalate_page`
reads it again there and records it; `ocr.escalation_lost` (its errback) and
`ocr.escalation_due` (sent to the job's own queue) record its first reading instead
when the second does not come (docs/escalation.md). Each `*_lost` errback runs wherever
Celery marks its task failed (the worker parent, for a child killed at its hard time
limit): it sends the matching `*_failed` task, which records the pages lost, so the
document still ends. What each task decides is `tasks.lifecycle.fanout.PageTasks`'s;
the tasks decode, call it, and retry (tasks/queue/retry_policy.py). The open PDF is the
thread's (tasks/lifecycle/open_documents.py). A page or chunk task stores no Celery
result and no STARTED mark (its job's join and ending say all there is); its errback
still runs. A page, chunk or escalation task reads with the `PageDescriptor` its
message carries (the `ocr_page` header); a message without one (sent by the previous
release) reads the document's meta instead.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from billiard.exceptions import SoftTimeLimitExceeded
from celery import Celery, Task, shared_task

from tasks import tracing
from tasks.engines import resident
from tasks.error_codes import error_info
from tasks.errors import OcrError, Timeout
from tasks.lifecycle.fanout import (
    Lost,
    PageTasks,
    read_again,
    run_pdf_page,
    run_text_chunk,
    waited,
)
from tasks.lifecycle.open_documents import open_documents
from tasks.pipeline.documents import past_deadline
from tasks.pipeline.escalation import keep_first
from tasks.pipeline.results import failed_page
from tasks.queue import telemetry, thread_limits
from tasks.queue.brokers import sending_together
from tasks.queue.job_services import JobServices, page_progress
from tasks.queue.message_headers import job_headers, page_descriptor, page_headers
from tasks.queue.poison_guard import GuardedTask
from tasks.queue.retry_policy import retry_later
from tasks.queue.routing import engine_taken, job_queue
from tasks.records.jobs import DocumentMeta, PageDescriptor, escalation_task
from tasks.records.results import PageError, PageRecord
from tasks.settings import Settings
from tasks.state.boundary import transient
from tasks.state.usage_counts import JobPages

T = TypeVar("T")


def page_tasks(task: Task, password: str | None = None) -> PageTasks:
    """The lifecycle's `PageTasks` for a delivered task, with the queue layer's ports.

    `password`: its input's, in a previous release's message; escalated pages are sent
    at the priority of `task`'s message.
    """
    app, services = task.app, JobServices.for_app(task.app)
    settings: Settings = app.ocr_settings
    priority = (task.request.delivery_info or {}).get("priority")

    def taken(engine: str) -> bool:
        live = services.presence.live_queues(window=settings.worker_liveness_seconds)
        return engine_taken(engine, live, settings) is not None

    def counted(engine: str, pages: list[PageRecord], client: str, job: str,
                recorded: bool) -> JobPages | None:
        telemetry.pages_escalated(pages)
        return telemetry.pages_read(engine, pages, client=client, job=job,
                                    recorded=recorded)

    return PageTasks(services.join, services.ender, services.stores, services.reservations,
                     settings, functools.partial(page_progress, app), taken, counted,
                     functools.partial(_send_escalations, app, priority), password)


def _retried(task: Task, call: Callable[[], T]) -> T:
    """`call()`; an `OcrError` it raises retries `task`, and is raised past its retries."""
    try:
        return call()
    except OcrError as exc:
        retry_later(task, exc)
        raise


@shared_task(name="ocr.pdf_page", bind=True, base=GuardedTask, ignore_result=True,
             track_started=False, marks_own_cancel=False)
def pdf_page(self: Task, doc_id: str, number: int,
             password: str | None = None) -> dict[str, Any]:
    """OCR one page of a fanned-out PDF and end the document if it was the last.

    `password`: an encrypted URL input's, as the previous release sends it; this
    release's messages name its sealed arguments instead (`PageTasks.opening`).
    """
    settings: Settings = self.app.ocr_settings
    pages = page_tasks(self, password)
    described, skipped = _retried(self, lambda: pages.to_read(
        doc_id, page_descriptor(self.request), lambda _meta: [number]))
    if described is None:
        return {"document": doc_id, "number": number, "skipped": skipped}
    engines = resident.current(settings)

    def read() -> PageRecord:
        return run_pdf_page(described, engines, open_documents(), settings, pages.stores,
                            pages.opening(described.request))

    try:
        page = _bounded(settings.vlm_api_page_time_limit, read, engines.threaded)
    except OcrError as exc:  # retryable: the others are failed pages already
        retry_later(self, exc)
        page = failed_page(number, exc)
    except SoftTimeLimitExceeded:
        page = failed_page(number, Timeout(
            f"page {number} ran past OCR_VLM_API_PAGE_TIME_LIMIT "
            f"({settings.vlm_api_page_time_limit} s)" if engines.threaded else
            f"page {number} ran past its soft time limit of "
            f"{settings.page_soft_time_limit} s"))
    escalated = _or_end(self, described, lambda: pages.settle(described, page))
    if escalated:  # recorded once the escalation engine read it again
        return {"document": doc_id, "number": number, "escalated": True}
    return {"document": doc_id, "number": number, "ok": not page.failed}


def _send_escalations(app: Celery, priority: int | None, pages: list[PageDescriptor],
                      due: float, check_in: float) -> None:
    """Publish escalated pages (`PageTasks.escalate`): the port it sends through.

    Each `ocr.escalate_page` goes to the escalation engine's queue under the id derived
    for it (`escalation_task`), with its page's descriptor, at the job's priority and in
    its client's lane, with the errback that keeps its first reading; and an
    `ocr.escalation_due` to the job's own queue, `check_in` seconds from now.
    """
    with sending_together(app, "an escalated page") as producer:
        for page in pages:
            job_id, number, client = page.job_id, page.number, page.request.client
            queue = job_queue(page.request.escalate)
            # Not `declare=[]`: the queue is another pool's, which this worker may not
            # have declared (RabbitMQ).
            escalate_page.apply_async(
                (job_id, number, due), queue=queue,
                task_id=escalation_task(job_id, number), priority=priority,
                headers=page_headers(client, page), producer=producer,
                link_error=escalation_lost.s(job_id, number, queue))
            escalation_due.apply_async((job_id, number), queue=page.reply_queue,
                                       countdown=check_in, priority=priority,
                                       headers=job_headers(client), declare=[],
                                       producer=producer)


@shared_task(name="ocr.escalate_page", bind=True, base=GuardedTask, ignore_result=True,
             track_started=False, marks_own_cancel=False)
def escalate_page(self: Task, doc_id: str, number: int, due: float,
                  password: str | None = None) -> dict[str, Any]:
    """Read an escalated page again with the job's escalation engine, and record it.

    `due` (epoch seconds): past it, or when the read fails, the page keeps its first
    reading with the error (`escalation.error`). Ends the document if it was the last.
    """
    settings: Settings = self.app.ocr_settings
    pages = page_tasks(self, password)
    described, skipped = _retried(self, lambda: pages.to_read(
        doc_id, page_descriptor(self.request), lambda _meta: [number]))
    if described is None:
        return {"document": doc_id, "number": number, "skipped": skipped}
    first = _retried(self, lambda: pages.first_reading(doc_id, number))
    if first is None:  # recorded by its `ocr.escalation_due`
        return {"document": doc_id, "number": number, "skipped": "page recorded"}
    engines = resident.current(settings)

    def read() -> PageRecord:
        return read_again(described, first, engines, open_documents(), settings,
                          pages.stores, pages.opening(described.request), due)

    try:
        page = _bounded(settings.vlm_api_page_time_limit, read, engines.threaded)
    except OcrError as exc:  # retryable: retried while the page may wait
        if not past_deadline(due):
            retry_later(self, exc)
        page = keep_first(first, exc)
    except SoftTimeLimitExceeded:
        page = keep_first(first, Timeout(f"page {number}'s second reading ran past its "
                                         "time limit"))
    read_ok = page.escalation is not None and page.escalation.error is None
    counted = None
    if read_ok:
        counted = telemetry.pages_read(described.request.escalate or "", [page],
                                       client=described.request.client, job=doc_id,
                                       recorded=True)
    _or_end(self, described, lambda: pages.record(described, page, counted))
    return {"document": doc_id, "number": number, "ok": read_ok}


@shared_task(name="ocr.escalation_due", bind=True)
def escalation_due(self: Task, doc_id: str, number: int, password: str | None = None) -> None:
    """Keep an escalated page's first reading if its second has not come by now."""
    error = PageError.from_json(error_info(waited(number, self.app.ocr_settings)))
    _retried(self, lambda: page_tasks(self, password).record_lost("escalation", doc_id, number,
                                                                  error))


@shared_task(name="ocr.pdf_text_chunk", bind=True, base=GuardedTask, ignore_result=True,
             track_started=False, marks_own_cancel=False)
def pdf_text_chunk(self: Task, doc_id: str, index: int,
                   password: str | None = None) -> dict[str, Any]:
    """Analyse a chunk of a fanned-out PDF's text-layer pages (output=markdown/json).

    Ends the document if its pages were the last.
    """
    settings: Settings = self.app.ocr_settings
    floor = page_tasks(self, password)
    described, skipped = _retried(self, lambda: floor.to_read(
        doc_id, page_descriptor(self.request), lambda meta: meta.text_chunks[index]))
    if described is None:
        return {"document": doc_id, "chunk": index, "skipped": skipped}
    numbers = described.pages

    def read() -> list[PageRecord]:
        return run_text_chunk(described, open_documents(), settings, floor.stores,
                              floor.opening(described.request))

    try:
        pages = _bounded(settings.soft_time_limit, read, resident.current(settings).threaded)
    except OcrError as exc:  # retryable (reading the input): the pages fail after retries
        retry_later(self, exc)
        pages = [failed_page(n, exc) for n in numbers]
    except SoftTimeLimitExceeded:
        pages = [failed_page(n, Timeout(f"page {n}'s layout analysis ran past the soft "
                                        f"time limit of {settings.soft_time_limit} s"))
                 for n in numbers]
    counted = telemetry.pages_read(described.job.engine, pages,
                                   client=described.request.client, job=doc_id,
                                   recorded=True)
    _or_end(self, described, lambda: floor.record(described, pages, counted))
    return {"document": doc_id, "chunk": index, "pages": len(pages)}


def _bounded(seconds: float, read: Callable[[], T], threaded: bool) -> T:
    """`read()`; in a thread pool, which enforces no limit, bounded to `seconds` here."""
    def closing() -> T:  # in a helper thread of its own, whose open document closes after
        try:
            return read()
        finally:
            open_documents().close()

    with transient("Redis"):
        return thread_limits.bounded(seconds, closing) if threaded else read()


def _or_end(task: Task, described: PageDescriptor, call: Callable[[], T]) -> T | None:
    """`call()` (a record or a send); an outage past the task's retries ends the job."""
    try:
        return call()
    except OcrError as exc:
        retry_later(task, exc)
        JobServices.for_app(task.app).ender.end(described.failed(exc))
        return None


def _errback(name: str, failed: Task) -> Task:
    """The errback `name` of a task that failed outright: it sends `failed` its error.

    That is a child killed at its hard limit, or a message refused as a poison job. The
    record goes to the lost task's own queue (`queue`), which its workers consume; the
    lost task's `part` (page number or chunk index), the password a previous release's
    message carried (an encrypted URL input's: the record may end the document, whose
    searchable PDF opens this host's copy) and its trace go with it.
    """
    def lost(request: Any, exc: BaseException, traceback: Any, doc_id: str, part: int,
             queue: str) -> None:
        password = (getattr(request, "kwargs", None) or {}).get("password")
        failed.apply_async((doc_id, part, error_info(exc)),
                           {"password": str(password)} if password else {}, queue=queue,
                           headers=tracing.headers_of(request))

    return shared_task(name=name)(lost)


def _recorder(name: str, lost: Lost) -> Task:
    """The task `name` that records what a lost task held (`PageTasks.record_lost`)."""
    def failed(self: Task, doc_id: str, part: int, error: dict[str, Any],
               password: str | None = None) -> None:
        _retried(self, lambda: page_tasks(self, password).record_lost(
            lost, doc_id, part, PageError.from_json(error)))

    return shared_task(name=name, bind=True)(failed)


# A lost page or chunk is recorded failed (PARTIAL); a lost escalation keeps its first reading.
pdf_page_failed = _recorder("ocr.pdf_page_failed", "page")
pdf_chunk_failed = _recorder("ocr.pdf_chunk_failed", "chunk")
escalation_failed = _recorder("ocr.escalation_failed", "escalation")
pdf_page_lost = _errback("ocr.pdf_page_lost", pdf_page_failed)
pdf_chunk_lost = _errback("ocr.pdf_chunk_lost", pdf_chunk_failed)
escalation_lost = _errback("ocr.escalation_lost", escalation_failed)


def send_pages(app: Celery, meta: DocumentMeta, priority: int | None) -> None:
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
    with sending_together(app, "a page task") as producer:
        for number, page_id in zip(meta.ocr_pages, meta.page_tasks, strict=True):
            pdf_page.apply_async((meta.job_id, number), queue=queue,
                                 task_id=page_id, priority=priority,
                                 headers=page_headers(client, document.of_pages(number)),
                                 declare=[], producer=producer,
                                 link_error=pdf_page_lost.s(meta.job_id, number, queue))
        for index, (chunk, chunk_id) in enumerate(zip(meta.text_chunks, meta.chunk_tasks,
                                                       strict=True)):
            pdf_text_chunk.apply_async((meta.job_id, index), queue=queue,
                                       task_id=chunk_id, priority=priority,
                                       headers=page_headers(client, document.of_pages(*chunk)),
                                       declare=[], producer=producer,
                                       link_error=pdf_chunk_lost.s(meta.job_id, index, queue))
