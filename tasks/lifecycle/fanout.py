"""A document fanned out into page tasks: reading one page, recording it, and the merge.

Runs in worker children, called by `ocr.pdf_page` and `ocr.pdf_text_chunk` (a chunk of
text-layer pages whose structure is wanted; tasks/queue/page_tasks.py), and by
`ocr.escalate_page` (a page read again by the job's escalation engine: `read_again`;
an image's pages fan out only for that). `PageTasks` decides what those tasks do:
which page a message reads, whether and where a page escalates, and what a lost task's
pages record. No Celery here: the queue layer passes its ports in (progress, whether
an engine's queue is taken, the sends), and the document ends through its `JobEnder`.
The splitting side (`FanOut`) is built by `tasks.lifecycle.jobs`; the open document a
page is read from, by `tasks.lifecycle.open_documents`. A page is read and recorded with
its task's `PageDescriptor`; the merge and a cancel's ending read the document's meta.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

from tasks.errors import (
    DeadlineExceeded,
    EngineUnavailable,
    InternalError,
    OcrError,
    PageQuotaExceeded,
    Timeout,
)
from tasks.lifecycle import url_inputs
from tasks.lifecycle.cancel import end_cancelled_document, finish_cancelled
from tasks.lifecycle.jobs import complete
from tasks.lifecycle.open_documents import OpenDocumentCache, object_info, open_documents
from tasks.pipeline.documents import (
    chunk_pages,
    deadline_page,
    ocr_page,
    past_deadline,
    recognize_options,
    relevel_headings,
)
from tasks.pipeline.escalation import awaits_second_reading, escalated_page, keep_first, mark
from tasks.pipeline.images import iter_image_pages
from tasks.pipeline.pdf import render_page
from tasks.pipeline.results import assemble, failed_page, named_engines
from tasks.records.jobs import DocumentMeta, Outcome, PageDescriptor
from tasks.records.request import WORD_BOX_OUTPUTS
from tasks.records.results import PageError, PageRecord, PageWorker
from tasks.state.boundary import transient

if TYPE_CHECKING:
    from PIL import Image

    from tasks.engines import OcrEngine
    from tasks.engines.resident import ResidentEngines
    from tasks.lifecycle.job_exit import JobEnder
    from tasks.pipeline.page_reading import Render
    from tasks.records.request import JobRequest
    from tasks.settings import Settings
    from tasks.state.join import DocumentJoin, PageProgress
    from tasks.state.reservations import Reservations
    from tasks.state.stores import Stores
    from tasks.state.usage_counts import JobPages

log = logging.getLogger(__name__)


def unexpected(job_id: str, exc: BaseException) -> InternalError:
    """An unexpected exception, logged with its traceback, as the job's public error."""
    log.error("job %s: unexpected %s", job_id, type(exc).__name__, exc_info=exc)
    return InternalError(f"unexpected {type(exc).__name__}")


def run_pdf_page(page: PageDescriptor, engines: ResidentEngines, docs: OpenDocumentCache,
                 settings: Settings, stores: Stores,
                 password: str | None = None) -> PageRecord:
    """OCR one page of a fanned-out PDF; a failure becomes a failed page.

    Retryable errors are raised (the page task retries them).
    """
    request, number = page.request, page.number
    if past_deadline(request.deadline):
        return deadline_page(number)
    settings = url_inputs.for_client(settings, page.job.url_prefixes)
    try:
        engine = engines.get(page.job.engine).engine
        image, full = page_image(page, engine, docs, settings, stores, password)
        try:
            read = ocr_page(number, image, engine, recognize_options(request), settings,
                            full)
        finally:
            image.close()
    except OcrError as exc:
        if exc.retryable:
            raise
        return failed_page(number, exc)
    if read.preview is not None:
        stores.previews.put(page.job_id, number, read.preview.data)
    described = engines.describe(page.job.engine)
    return replace(read, preview=None, worker=PageWorker(
        described["pid"], described["tasks_in_process"], described["load_seconds"]))


def read_again(page: PageDescriptor, first: PageRecord, engines: ResidentEngines,
               docs: OpenDocumentCache, settings: Settings, stores: Stores,
               password: str | None = None, due: float | None = None) -> PageRecord:
    """Read an escalated page again with the job's escalation engine: the page to record.

    `first` is the page's first reading, marked with its `escalation`
    (`tasks.pipeline.escalation.mark`). The model's read has no fallback engine: a read
    that does not finish, a non-retryable error, the job's deadline or `due` (epoch
    seconds: OCR_ESCALATE_WAIT_SECONDS from when the page was escalated) passing keep
    the first reading, with the error. Retryable errors are raised (the task retries
    them until `due`).
    """
    request = page.request
    number, to = first.number, request.escalate or ""
    if past_deadline(request.deadline):
        return keep_first(first, DeadlineExceeded(
            f"the job's deadline passed before page {number} was read again"))
    if past_deadline(due):
        return keep_first(first, waited(number, settings))
    settings = replace(url_inputs.for_client(settings, page.job.url_prefixes), vlm_fallback="none")
    options = recognize_options(request)
    # The model's text only: its words go on the first reading's boxes, not a new read's.
    options = replace(options, want_hocr=False, deadline=min(
        (d for d in (request.deadline, due) if d is not None), default=None),
        output="text" if options.output in WORD_BOX_OUTPUTS else options.output)
    try:
        engine = engines.get(to).engine
        image, rerender = page_image(page.of_pages(number), engine, docs, settings, stores,
                                     password)
        try:
            second = ocr_page(number, image, engine, options, settings, rerender)
        finally:
            image.close()
    except OcrError as exc:
        if exc.retryable:
            raise
        if isinstance(exc, DeadlineExceeded) and not past_deadline(request.deadline):
            exc = waited(number, settings)  # the page's clock stopped at `due`
        return keep_first(first, exc)
    if second.error is not None:
        return keep_first(first, second.error)
    described = engines.describe(to)
    return replace(escalated_page(first, second, request.output), worker=PageWorker(
        described["pid"], described["tasks_in_process"], described["load_seconds"]))


def waited(number: int, settings: Settings) -> Timeout:
    """Why page `number` keeps its first reading: its second did not come in time."""
    return Timeout(f"page {number}'s second reading did not come within "
                   f"OCR_ESCALATE_WAIT_SECONDS ({settings.escalate_wait_seconds:.0f} s)")


def page_image(page: PageDescriptor, engine: OcrEngine, docs: OpenDocumentCache,
               settings: Settings, stores: Stores, password: str | None = None
               ) -> tuple[Image.Image, Render | None]:
    """A fanned-out document's page as `engine` reads it, and its full render.

    A PDF's page is rendered at the engine's size (the render at OCR_PDF_DPI given for a
    fallback engine); an image's frame is decoded as the document's task decoded it.
    """
    number = page.number
    if page.format == "pdf":
        doc = docs.document(page, stores.blobs, settings, password)
        image = render_page(doc, number, settings, engine.page_longest_side,
                            mode=engine.page_mode, fit=engine.page_size)
        return image, functools.partial(render_page, doc, number, settings)
    data = docs.data(page, stores.blobs, settings)
    with contextlib.closing(iter_image_pages(data, page.format, str(number),
                                             settings)) as frames:
        return next(frames)[3], None


def run_text_chunk(chunk: PageDescriptor, docs: OpenDocumentCache, settings: Settings,
                   stores: Stores, password: str | None = None) -> list[PageRecord]:
    """Analyse a chunk of a fanned-out PDF's text-layer pages (one of `meta.text_chunks`).

    Past the job's deadline its pages fail as deadline pages; an analysis that fails
    leaves each page its plain text with a `layout_failed` warning (`analyse`).
    """
    numbers = list(chunk.pages)
    if past_deadline(chunk.request.deadline):
        return [deadline_page(n) for n in numbers]
    settings = url_inputs.for_client(settings, chunk.job.url_prefixes)
    doc = docs.document(chunk, stores.blobs, settings, password)
    return chunk_pages(doc, numbers, chunk.request.output, settings)


def merge_document(meta: DocumentMeta, pages: list[PageRecord], settings: Settings,
                   stores: Stores, password: str | None = None) -> Outcome:
    """The outcome of a fanned-out PDF once every page is in.

    `password` opens an encrypted URL input's copy for its searchable PDF (the task
    that ends the document carries it; it is never in the meta).
    """
    job = meta.job
    request = job.request
    settings = url_inputs.for_client(settings, job.url_prefixes)
    if meta.text_chunks:  # heading levels ranked across the chunks
        pages = relevel_headings(pages, meta.text_chunks, request.output)
    try:
        result = assemble(pages, meta.base)
    except OcrError as exc:  # every page failed
        return job.failed(exc)
    ocr = [p for p in result.pages if p.source == "ocr" and not p.failed]
    workers = [p.worker for p in ocr if p.worker is not None]
    first = workers[0] if workers else PageWorker(None, None, None)
    # The child that read the first OCR page, and every child that read one.
    result.engine = named_engines(
        {"name": job.engine, "model": job.model, "pid": first.pid,
         "tasks_in_process": first.tasks_in_process, "load_seconds": first.load_seconds,
         "pids": sorted({w.pid for w in workers if w.pid is not None})},
        result.pages, {job.engine: job.model})
    # total_seconds, from the document task's start (`job.started`), is stamped by
    # `complete` once the result is whole.
    result.timings = {"ocr_seconds": round(sum(p.seconds or 0.0 for p in ocr), 3)}
    by_url = request.url is not None and meta.input_object is not None
    data = b""
    if request.output == "pdf":
        data = (url_inputs.spooled(settings, request.url or "", object_info(meta)) if by_url
                else stores.blobs.get(request.blob or ""))
    outcome = complete(job, result, data, meta.encrypted, settings, stores,
                       password=password if by_url else None)
    if by_url:
        url_inputs.drop_spool(settings, request.url or "", object_info(meta))
    return outcome


def record_page(task: PageDescriptor, page: PageRecord | list[PageRecord],
                join: DocumentJoin, ender: JobEnder, settings: Settings, stores: Stores,
                progress: PageProgress | None = None, password: str | None = None,
                counted: JobPages | None = None) -> bool:
    """Record the page (or a chunk's pages) `task` read; the document's last one ends it.

    `counted`: the pages read, counted in the client's usage by the same script.
    Returns True when this call ended the document. Raises only retryable errors, with
    the end claim given back (the caller retries the page). A claim held by an ender
    that died with its whole worker (a page redelivered after its host was killed
    while merging) is taken over: the cancel it held is finished, any other ending is
    given back and the pages recorded again, so the call that completes the document
    merges it. The meta is read only to end the document.
    """
    doc_id, total = task.job_id, task.total
    pages = page if isinstance(page, list) else [page]
    done = join.record(doc_id, pages, progress.write if progress is not None else None,
                       counted)
    if done >= 0 and progress is not None and total > 1:
        progress.tell(min(done, total), total)
    if 0 <= done < total:
        return False
    if done >= total and ender.claim(doc_id):
        merge_and_finish(task, join, ender, settings, stores, password)
        return True
    # The job has ended (nothing was written), or another ender holds its claim.
    holder = ender.take_over_abandoned(doc_id)
    if holder is None:
        return False
    log.warning("job %s: its ender %s died with its worker; its claim taken over here",
                doc_id, holder)
    meta, cancelled = join.running(doc_id)
    if cancelled and meta is not None:  # the dead ender may have been the cancel's
        finish_cancelled(meta, join, ender)
        return True
    # Given back and recorded again: the call that completes the document merges it
    # (this one, or a page still to come).
    ender.release(doc_id)
    return record_page(task, page, join, ender, settings, stores, progress, password,
                       counted)


def merge_and_finish(task: PageDescriptor, join: DocumentJoin, ender: JobEnder,
                     settings: Settings, stores: Stores, password: str | None = None) -> None:
    """Read the meta, merge the recorded pages and end the document.

    The caller (`task`, the one that completed the document) holds its end claim. A
    retryable failure gives the claim back and is raised; any other ends the job failed.
    """
    doc_id = task.job_id
    try:
        outcome = merge_document(join.meta(doc_id), join.pages(doc_id), settings, stores,
                                 password)
    except OcrError as exc:
        if exc.retryable:
            ender.release(doc_id)
            raise
        outcome = task.failed(exc)
    except Exception as exc:  # noqa: BLE001 - any other failure ends the job, logged
        outcome = task.failed(unexpected(doc_id, exc))
    ender.finish(outcome)


# What a lost task held: a page, a chunk of text-layer pages, or an escalated page.
Lost = Literal["page", "chunk", "escalation"]
# Seconds past an escalated page's due time its `ocr.escalation_due` runs: the second
# reading's own clock stops at the due time, so it is recorded first.
DUE_GRACE = 30.0


@dataclass
class PageTasks:
    """What a fanned-out document's page tasks decide; which pages escalate, and where.

    The tasks (tasks/queue/page_tasks.py) decode, call these and retry the `OcrError`s
    they raise (Redis away: `TransientError`). The queue layer's ports: `progress` (how
    a record writes the job's progress), `taken` (whether a page sent to an engine's
    queue is taken now: `tasks/queue/routing.py:engine_taken`), `counted` (pages read,
    counted for the worker, and with its last flag in the client's usage, returned for
    the record's script) and `send` (escalated pages' descriptors, their due time, and
    the seconds after which their check runs).
    """

    join: DocumentJoin
    ender: JobEnder
    stores: Stores
    reservations: Reservations
    settings: Settings
    progress: Callable[[str, int], PageProgress]
    taken: Callable[[str], bool]
    counted: Callable[[str, list[PageRecord], str, str, bool], JobPages | None]
    send: Callable[[list[PageDescriptor], float, float], None]
    # An encrypted URL input's, in a previous release's page message: its sealed
    # arguments hold it otherwise (`opening`).
    password: str | None = None

    def opening(self, request: JobRequest) -> str | None:
        """The password an encrypted URL input's host copy opens with, else None.

        The job's sealed arguments hold it (`request.sealed`) until it ends; gone, the
        read fails `input_not_found`.
        """
        if self.password or not request.sealed:
            return self.password
        with transient("Redis"):
            return self.stores.control.sealed_password(request.sealed)

    def to_read(self, doc_id: str, described: PageDescriptor | None,
                pages_of: Callable[[DocumentMeta], Iterable[int]]
                ) -> tuple[PageDescriptor | None, str]:
        """What a page or chunk task reads with, or None and why its pages are not read.

        `described`: the descriptor its message carries, used once one read
        (`DocumentJoin.runs`) found the document running and not cancelled. A message
        without one (a previous release's sender) reads the meta instead, and the
        task's pages in it (`pages_of`). A cancel that came while the PDF was split
        ends the document here (its meta read).
        """
        if described is not None and described.job_id != doc_id:
            described = None  # another job's: this message's own is read from the meta
        meta = None
        with transient("Redis or the broker"):
            if described is not None:
                runs, cancelled = self.join.runs(doc_id)  # one read, not the meta
            else:
                meta, cancelled = self.join.running(doc_id)  # one read
                runs = meta is not None
                described = None if meta is None else meta.describe(pages_of(meta))
            if not runs or described is None:
                return None, "document finished"
            if not cancelled:
                return described, ""
            meta = meta or self.join.find(doc_id)
            if meta is not None:
                end_cancelled_document(meta, self.join, self.ender)
        return None, "document cancelled"

    def settle(self, described: PageDescriptor, page: PageRecord) -> bool:
        """A page read by `ocr.pdf_page`: recorded, or sent to be read again (True).

        It is marked with its escalation (`marked`); one that awaits a second reading
        is held and sent to the escalation engine (`escalate`), counted for its worker
        alone: its client's usage counts it once recorded. Any other is recorded, its
        usage with it.
        """
        page = self.marked(page, described.request)
        client, job = described.request.client, described.job_id
        if awaits_second_reading(page):
            self.counted(described.job.engine, [page], client, job, False)
            self.escalate(described, [page])
            return True
        self.record(described, page,
                    self.counted(described.job.engine, [page], client, job, True))
        return False

    def marked(self, page: PageRecord, request: JobRequest) -> PageRecord:
        """`page` marked with its escalation (`mark`), refused now where `refusal` says."""
        return mark(page, request, functools.partial(self.refusal, request.client))

    def refusal(self, client: str, engine: str) -> OcrError | None:
        """Why a page of `client` may not escalate to `engine` now (`mark`), or None.

        Past the client's cap a day on that engine, `page_quota_exceeded` (its caps as
        this process read them at most CAPS_SECONDS ago); with no worker to take it,
        `engine_unavailable` (`taken`: a live worker, or a pool that scales from zero).
        """
        try:
            with transient("Redis"):
                self.reservations.engine_room(client, engine, 1,
                                              self.reservations.usage.known_caps(client))
        except PageQuotaExceeded as exc:
            return exc
        with transient("Redis"):
            taken = self.taken(engine)
        return None if taken else EngineUnavailable(
            f"no live worker runs engine {engine!r}: the page keeps its first reading")

    def escalate(self, document: PageDescriptor, pages: list[PageRecord]) -> None:
        """Hold escalated pages' first readings and send each to the escalation engine.

        `document` describes a task of the document (`DocumentMeta.describe`); `pages`
        are first readings marked by `mark`. Each is sent due once it may wait no more
        (OCR_ESCALATE_WAIT_SECONDS), with a check `DUE_GRACE` after that keeps the
        first reading of a page whose second never came (no worker took it). Nothing
        is sent for a job that has ended.
        """
        with transient("Redis"):
            if not self.join.hold_first(document.job_id, pages):
                return
        wait = self.settings.escalate_wait_seconds
        self.send([document.of_pages(page.number) for page in pages], time.time() + wait,
                  wait + DUE_GRACE)

    def first_reading(self, doc_id: str, number: int) -> PageRecord | None:
        """An escalated page's first reading, held; None once the page is recorded."""
        with transient("Redis"):
            first = self.join.first(doc_id, number)
            return None if first is None or self.join.recorded(doc_id, number) else first

    def record(self, described: PageDescriptor, pages: PageRecord | list[PageRecord],
               counted: JobPages | None = None) -> None:
        """Record the pages, with the job's progress and the usage `counted`: one script."""
        with transient("Redis or the broker"):
            if record_page(described, pages, self.join, self.ender, self.settings,
                           self.stores, self.progress(described.job_id, described.total),
                           # the merge opens it for a searchable PDF alone
                           self.opening(described.request)
                           if described.request.output == "pdf" else None, counted):
                open_documents().close()  # ended: its pages are not read here again

    def record_lost(self, lost: Lost, doc_id: str, part: int, error: PageError) -> None:
        """Record what a lost task held (`part`: its page's number, or its chunk's index).

        A page or a chunk's pages are recorded failed with `error`, so the document
        still ends (PARTIAL). An escalated page keeps its first reading with `error`,
        unless its second is in. Nothing is recorded once the document has ended.
        """
        with transient("Redis or the broker"):
            meta = self.join.find(doc_id)
            if meta is None:
                return
            if lost == "escalation":
                first = self.first_reading(doc_id, part)
                if first is not None:
                    self.record(meta.describe([part]), keep_first(first, error))
                return
            numbers = meta.text_chunks[part] if lost == "chunk" else [part]
            pages = [PageRecord(n, source="text-layer" if lost == "chunk" else "ocr",
                                error=error) for n in numbers]
            self.record(meta.describe(numbers), pages,
                        self.counted(meta.job.engine, pages, meta.request.client, doc_id,
                                     True))
