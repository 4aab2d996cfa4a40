"""One OCR job from its request to its `Outcome`: input, cache, fan-out and merge.

Runs in worker children, called by `ocr.document` (`tasks.queue.job_task`). No
Celery here: the tasks decide what to enqueue; every ending goes through
`tasks.lifecycle.job_exit.JobEnder`. The page side of a fan-out is in
`tasks.lifecycle.fanout`. A PDF with pages to OCR fans out; an image read here fans
out only when some of its pages escalate (docs/escalation.md).
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from tasks import tracing
from tasks.errors import DeadlineExceeded, OcrError, OutputTooLarge
from tasks.lifecycle import open_documents, url_inputs
from tasks.lifecycle.fetcher import Fetcher
from tasks.lifecycle.inputs import read_input
from tasks.lifecycle.result_reader import Reading
from tasks.lifecycle.url_inputs import LocatedObject
from tasks.pipeline import layouts
from tasks.pipeline.documents import (
    Progress,
    document_base,
    past_deadline,
    planned_pages,
    recognize_options,
    run_document,
    structure_chunks,
)
from tasks.pipeline.escalation import awaits_second_reading, mark
from tasks.pipeline.images import image_pages
from tasks.pipeline.layouts import LAYOUT_OUTPUTS
from tasks.pipeline.pdf import check_password, plan_pdf, searchable_pdf
from tasks.pipeline.results import OUTPUT_VERSION, merge_previous, named_engines, with_scores
from tasks.records.formats import sniff_format
from tasks.records.jobs import DocumentMeta, Job, JobStatus, Outcome
from tasks.records.request import JobRequest
from tasks.records.results import DocumentResult, PageRecord, StoredOutput
from tasks.state.keys import cache_key as cache_key_of

if TYPE_CHECKING:
    from collections.abc import Callable

    from tasks.engines.resident import ResidentEngines
    from tasks.settings import Settings
    from tasks.state.job_control import CarriedWrites
    from tasks.state.stores import Stores

    # Told the pages a job read in this process, and whether they came from the cache.
    PagesRead = Callable[[list[PageRecord], bool], object]  # what it returns is not used


@dataclass
class FanOut:
    """A PDF split into page tasks: one per `meta.ocr_pages` entry, one per chunk.

    The chunks (`meta.text_chunks`) are text-layer pages whose structure is wanted
    (output=markdown/json), analysed a chunk a task.

    `meta.request` already names the stored input (decrypted when it was encrypted);
    `replaced_blob` is the client's upload that the stored copy replaces. `password`:
    an encrypted `url` input's, which each host decrypts its own copy with: the split
    keeps it sealed until the job ends, and the meta names it (`request.sealed`).
    `escalated`: an image's pages read here that go to the escalation engine (their
    first readings, marked); its other pages are `text_pages`.
    """

    meta: DocumentMeta
    text_pages: list[PageRecord]
    replaced_blob: str | None = None
    password: str | None = None
    escalated: list[PageRecord] = field(default_factory=list)

    def sealed(self, seal: Callable[[dict[str, str]], str]) -> tuple[DocumentMeta, str | None]:
        """The meta to store, and the sealed arguments the split has spent (to forget).

        An encrypted URL input's pages open their host's copy with its password, kept
        sealed until the job ends (its sender's sealed arguments, or sealed here by
        `seal`): the meta names them. Any other job's sealed arguments are spent once
        the split is stored: its input is open, and the meta has its truth.
        """
        token = self.meta.request.sealed
        if self.password is None:
            kept, spent = None, token
        else:
            kept, spent = token or seal({"password": self.password}), None
        job = self.meta.job
        meta = replace(self.meta, job=replace(job, request=replace(job.request, sealed=kept)))
        return meta, spent


def result_settings(settings: Settings) -> dict[str, Any]:
    """The settings that change a result, beside the request's options and engine."""
    return {"pdf_dpi": settings.pdf_dpi, "max_render_pixels": settings.max_render_pixels,
            "pdf_min_text_chars": settings.pdf_min_text_chars,
            "auto_rotate": settings.auto_rotate, "deskew": settings.deskew,
            "prompt": settings.prompt, "vlm_max_tokens": settings.vlm_max_tokens,
            # an `auto` page's languages: its script's, else the default set
            "auto_langs": settings.auto_langs, "tesseract_lang": settings.tesseract_lang}


def cache_key(data: bytes, job: Job, settings: Settings, identity: str | None = None,
              scope: str = "") -> str:
    """Content hash of the input plus everything that shapes its result.

    An object named by URL is keyed by its identity instead (`identity`: URL plus
    ETag or version id), so a hit is found before the object is read; a changed
    object has a new ETag, hence a new key and a new read. `scope` (the job's owner,
    `api:<client>`, unless OCR_CACHE_ACROSS_CLIENTS) keeps each client's entries its
    own: a `cached` answer never tells one client what another sent. The pipeline's
    OUTPUT_VERSION is part of the key: a result cached before an output format changed
    is not served after it.
    """
    digest = hashlib.sha256(b"url\0" + identity.encode() if identity is not None else data)
    digest.update(b"\0scope\0" + scope.encode())
    options = {**job.request.cache_options(job.engine, job.model), **result_settings(settings),
               "output_version": OUTPUT_VERSION}
    digest.update(json.dumps(options, sort_keys=True).encode())
    return cache_key_of(digest.hexdigest())


def cache_scope(job_id: str, settings: Settings, stores: Stores) -> str:
    """Whose cache entries a job may use: its owner's ("" for every non-API client)."""
    if not settings.cache_results or settings.cache_across_clients:
        return ""
    return stores.control.owner(job_id)


@dataclass(frozen=True)
class JobPorts:
    """What `process_job` tells its caller, and asks of it (the task's ports).

    `progress`: the pages read so far. `pages_read`: the pages read here (or answered
    from the cache: its flag), before the job ends and without those a retry takes from
    the job's `previous` (the caller's metrics). `check_pages`: how many pages the job
    will read, once they are counted and before any is read (not for a cached answer);
    it raises to refuse them (a client's page cap). `carried`: the writes the job's
    ending sends with its claim, where the pages' previews are queued
    (tasks/state/job_control.py's `CarriedWrites`; else written at once).
    `refused(engine)`: why a page may not escalate to that engine (`mark`); an image's
    pages escalate with it (a PDF's escalate in its page tasks), none without it.
    """

    progress: Progress | None = None
    pages_read: PagesRead | None = None
    check_pages: Callable[[int], None] | None = None
    carried: CarriedWrites | None = None
    refused: Callable[[str], OcrError | None] | None = None


def process_job(job: Job, settings: Settings, engines: ResidentEngines, stores: Stores,
                ports: JobPorts = JobPorts()) -> Outcome | FanOut:
    """Read the input, then answer from the cache, in-process, or fan out.

    `job.previous` is the result of the job named by `merge_from` (a retry of its
    failed pages): its good pages complete this job's result. `job.started` is when the
    task began: the result's `timings.total_seconds` counts from there, reading the
    input and planning a PDF included. `job.engine` is the engine that reads it, as
    the caller routed the job (`engines.for_job`: the task does, to name it in
    failures). Raises OcrError.
    """
    request = job.request
    if past_deadline(request.deadline):
        raise DeadlineExceeded("the job's deadline passed before it started")
    request = request.with_default_lang(settings.default_lang)  # OCR_LANG: auto or a set
    # OCR_ESCALATE_ENGINE and OCR_ESCALATE_BELOW, where the job names none
    request = request.with_escalation(settings.escalate_engine, settings.escalate_below)
    prefixes = None
    if request.url or request.result_url:  # the sending client's own prefixes hold too
        prefixes = stores.control.url_prefixes(job.id)
    fetcher = Fetcher.for_client(settings, prefixes)  # every read: the client's rules
    settings = url_inputs.for_client(settings, prefixes)
    # A URL input: allowed? how large? which version? (HEAD; nothing read yet)
    located = (fetcher.locate(request.url, request.url_version, request.url_etag)
               if request.url else None)
    identity = located.identity if located is not None else None
    data = b"" if located is not None else read_input(request, settings, stores.blobs)
    loaded = engines.get(job.engine)  # fails fast when this child's load failed
    job = replace(job, request=request, url_prefixes=prefixes, model=loaded.engine.model)
    options = recognize_options(request)  # the job's options, decided once
    loaded.engine.check(options)  # refusals: lang, output
    scope = cache_scope(job.id, settings, stores)
    keyed = settings.cache_results and job.previous is None
    if keyed and (located is None or identity):
        job = replace(job, cache_key=cache_key(data, job, settings, identity, scope))
        hit = _cached(job, data, located, fetcher, scope, settings, stores, ports)
        if hit is not None:
            return hit
    if located is not None:
        data = fetcher.read(located)
        located = located.sized(data)
        if keyed and job.cache_key is None:
            job = replace(job, cache_key=cache_key(data, job, settings, scope=scope))
    fmt = sniff_format(data)
    plan = None
    if fmt == "pdf":
        plan = plan_pdf(data, request.pages, request.password, request.mode, settings)
        if ports.check_pages is not None:
            try:
                ports.check_pages(plan.selected)
            except BaseException:
                plan.doc.close()
                raise
        if plan.ocr_pages or structure_chunks(plan, request.output, settings):
            try:
                return _fan_out(job, data, plan, settings, stores, located)
            finally:
                plan.doc.close()
    elif ports.check_pages is not None:
        ports.check_pages(image_pages(data, fmt, request.pages, settings))
    try:
        result = run_document(data, request, loaded.engine, settings, ports.progress,
                              plan=plan, fmt=fmt, options=options)
    finally:
        if plan is not None:
            plan.doc.close()
    if ports.refused is not None and plan is None and request.escalate is not None:
        result = replace(result, pages=[mark(p, request, ports.refused)
                                        for p in result.pages])
        if any(awaits_second_reading(p) for p in result.pages):
            keep_previews(job.id, result, stores)  # now: the job ends in another task
            return _escalate_image(job, data, fmt, result, settings, stores, located)
    result.engine = named_engines(engines.describe(job.engine), result.pages, {
        name: held.engine.model for name, held in engines.loaded()})
    # A `result_url`'s delivery reads the previews from Redis: written at once for it.
    keep_previews(job.id, result, stores, None if request.result_url else ports.carried)
    if ports.pages_read is not None:
        ports.pages_read(result.pages, False)
    if located is not None:
        result.input_url = located.to_json()
    return complete(job, result, data, plan is not None and plan.encrypted, settings,
                    stores)


def _cached(job: Job, data: bytes, located: LocatedObject | None, fetcher: Fetcher,
            scope: str, settings: Settings, stores: Stores, ports: JobPorts
            ) -> Outcome | None:
    """The job answered from the cache (`job.cache_key`), or None on a miss.

    `no_cache`: read afresh; the result is stored under the key as any other.
    """
    request = job.request
    hit = None if request.no_cache or job.cache_key is None \
        else stores.cache.get(job.cache_key)
    if hit is None:
        return None
    stored, encrypted = hit
    if encrypted:
        if located is not None:
            data = fetcher.read(located)
        check_password(data, request.password, settings)
    elif located is not None:
        fetcher.confirm(located)  # pinned with no HEAD: it must still be that one
    # This job's own time (input, key, lookup), not the first run's: no OCR ran.
    cached = replace(DocumentResult.from_json(stored), id=job.id,
                     filename=request.filename, cached=True, result_object=None,
                     timings={"ocr_seconds": 0.0, "total_seconds": _since(job.started)})
    cached = with_scores(cached, request.ground_truth)
    # The pages, their previews and the stored files are those of the job that read
    # them, by reference: kept at least as long as this job's result. Another client's
    # previews (a cache shared by all) are never kept longer.
    source = str(stored.get("id") or "")
    mine = bool(scope) or stores.control.client(source) == stores.control.client(job.id)
    stores.previews.refer(source, job.id, [p.number for p in cached.pages], mine)
    stores.cache.keep_source(source)
    deliver(cached, request, settings, stores)
    if ports.pages_read is not None:
        ports.pages_read(cached.pages, True)
    return Outcome(job.id, JobStatus.of(cached.status), request, cached,
                   engine=job.engine, started=job.started, source=source)


def _fan_out(job: Job, data: bytes, plan: Any, settings: Settings, stores: Stores,
             located: LocatedObject | None) -> FanOut:
    """A PDF split into page tasks: one per page to OCR, one per chunk (`_split`)."""
    request = job.request
    chunks = structure_chunks(plan, request.output, settings)
    meta, replaced = _split(job, data, "pdf", plan.page_count, plan.selected, settings,
                            stores, located, plan.encrypted, plan.decrypted)
    meta = replace(meta, ocr_pages=list(plan.ocr_pages), text_chunks=chunks)
    # text-layer (unless chunked) and blank pages
    texts = planned_pages(plan, settings, request.output, bool(chunks))
    password = request.password if plan.encrypted and located is not None else None
    return FanOut(meta, texts, replaced, password)


def _escalate_image(job: Job, data: bytes, fmt: str, result: DocumentResult,
                    settings: Settings, stores: Stores,
                    located: LocatedObject | None) -> FanOut:
    """An image whose pages escalate, split: they are read again in page tasks.

    Its other pages, read here, are recorded as the split starts; the job ends with
    the last escalated page, as a PDF's with its last page.
    """
    meta, replaced = _split(job, data, fmt, result.page_count or 0, len(result.pages),
                            settings, stores, located)
    sent = [p for p in result.pages if awaits_second_reading(p)]
    meta = replace(meta, escalated=[p.number for p in sent])
    kept = [p for p in result.pages if not awaits_second_reading(p)]
    return FanOut(meta, kept, replaced, escalated=sent)


def _split(job: Job, data: bytes, fmt: str, count: int, total: int, settings: Settings,
           stores: Stores, located: LocatedObject | None, encrypted: bool = False,
           decrypted: bytes | None = None) -> tuple[DocumentMeta, str | None]:
    """A split document's meta, its input stored for its page tasks; the upload replaced.

    The input is stored decrypted (`decrypted`), so no password is kept. A URL input is
    not stored in Redis: this host keeps one local copy (OCR_URL_SPOOL_DIR) and the page
    tasks read it, or fetch their own host's copy of the same version (`input_object`).
    An encrypted one is decrypted by each host from its own copy with the password
    its sealed arguments hold (`FanOut.password`, never in the meta or a message), and
    so is the merge of its searchable PDF (output=pdf), in the task that records the
    last page. The job's client's own URL prefixes go with it: page tasks and the merge
    check the job's URLs against them too.
    """
    request = job.request
    if located is not None:
        located = located.pinned(data)  # no version from its store: its bytes' hash
        url_inputs.spool(settings, located.identity or located.url.url, data)
        return DocumentMeta(
            replace(job, request=replace(request, password=None)), total, [], [], "",
            replace(document_base(data, request, fmt, count), input_url=located.to_json()),
            encrypted, input_object=located.to_json()), None
    replaced = None
    if encrypted or request.blob is None:
        blob = stores.blobs.put(decrypted or data)
        replaced = request.blob
    else:
        blob = request.blob
    # this process's page tasks of it open these bytes, not a read of them again
    open_documents.share(blob, decrypted or data)
    stored = replace(request.stored_as(blob), password=None)
    return DocumentMeta(replace(job, request=stored), total, [], [], "",
                        document_base(data, request, fmt, count), encrypted), replaced


def keep_previews(job_id: str, result: DocumentResult, stores: Stores,
                  carried: CarriedWrites | None = None) -> None:
    """The previews of the pages read in this process, kept beside the job's result.

    Queued on `carried` (sent with the job's end claim) where given, else written now.
    """
    for index, page in enumerate(result.pages):
        if page.preview is not None:
            if carried is None:
                stores.previews.put(job_id, page.number, page.preview.data)
            else:
                carried.add(f"page {page.number}'s preview", functools.partial(
                    stores.previews.queue_put, job_id=job_id, page=page.number,
                    data=page.preview.data))
            result.pages[index] = replace(page, preview=None)


def complete(job: Job, result: DocumentResult, data: bytes, encrypted: bool,
             settings: Settings, stores: Stores, password: str | None = None) -> Outcome:
    """Complete a retry, attach the searchable PDF, cache a complete result.

    `password` opens `data` for the searchable PDF when the request no longer holds it
    (a fanned-out encrypted URL input: the merge's task carries it).

    A PARTIAL result keeps its input (`input_blob`) until OCR_BLOB_TTL, so that its
    failed pages can be retried (`merge_from`). `timings.total_seconds` is stamped
    last: from `job.started` (the task's start, in the process that planned the job)
    to the result as it is handed to the job's exit to be stored.
    """
    job_id, request, key, previous = job.id, job.request, job.cache_key, job.previous
    if previous is not None:
        result = merge_previous(result, previous)
    result = replace(result, id=job_id, cached=False)
    if result.status == JobStatus.PARTIAL and request.url is None:
        # A URL input is read again from its URL by a retry (`input_url`).
        result.input_blob = request.blob or stores.blobs.put(data)
    if request.output == "pdf":
        pdf, removed = searchable_pdf(data, result.format or "", password or request.password,
                                      result.pages, settings)
        if len(pdf) > settings.max_output_bytes:
            raise OutputTooLarge(f"the searchable PDF is {len(pdf) // 2**20} MB, more than "
                                 f"{settings.max_output_mb} MB")
        result.outputs["pdf"] = StoredOutput(stores.outputs.put(job_id, pdf), len(pdf),
                                             removed)
    if request.output in LAYOUT_OUTPUTS:  # hOCR/ALTO, stored like the PDF
        # A retry keeps the pages of its earlier job's document.
        stored = previous.outputs.get(request.output) if previous is not None else None
        earlier = stores.outputs.get(stored.key) if stored is not None else None
        layout = layouts.render(request.output, result.pages, earlier)
        result.pages = layouts.without_layout(result.pages)
        if len(layout) > settings.max_output_bytes:
            raise OutputTooLarge(f"the {request.output} document is more than "
                                 f"{settings.max_output_mb} MB")
        result.outputs[request.output] = StoredOutput(stores.outputs.put(job_id, layout),
                                                      len(layout))
    if key is not None and result.status == JobStatus.SUCCESS and not any(
            p.escalation is not None and p.escalation.error is not None for p in result.pages):
        # A hit has its own timings (and writes its own result object). A page whose
        # second reading did not come is not answered from the cache: it is tried again.
        stores.cache.put(key, result.to_json(), encrypted=encrypted)
    result = with_scores(result, request.ground_truth)  # the job's own, never cached
    deliver(result, request, settings, stores)
    result.timings = {**(result.timings or {}), "total_seconds": _since(job.started)}
    return Outcome(job_id, JobStatus.of(result.status), request, result,
                   engine=str((result.engine or {}).get("name", "")), started=job.started)


def deliver(result: DocumentResult, request: JobRequest, settings: Settings,
            stores: Stores) -> None:
    """Write the result to `result_url` when the job names one (SUCCESS and PARTIAL).

    What is written is read as every reader reads it (`Reading`: the client's
    corrections in it). The record names the object (`result_object`: url, bytes,
    etag); a failed write is recorded there as its error (`result_write_failed`), the
    job keeps its status and its result stays in the result store, to be fetched as
    usual. The pages' previews are written beside the object (`previews`: the folder; a failure is
    `previews_error`). Both are held to where the job's client writes results (its
    control hash's `result_prefixes`): elsewhere, or under a read-only prefix, nothing
    is written and the record's error is `url_not_allowed`.
    """
    if not request.result_url or result.status not in (JobStatus.SUCCESS, JobStatus.PARTIAL):
        return
    output = request.output
    stored = result.outputs.get(output)
    document = stores.outputs.get(stored.key) if stored is not None else None
    reading = Reading.of({**result.to_json(), "client": request.client}, stores.redis)
    content = reading.content(output, document)
    results = stores.control.result_prefixes(str(result.id))  # where its client writes
    try:
        with tracing.span("ocr.result.deliver", {"ocr.bytes": len(content)}):
            result.result_object = url_inputs.write_result(
                request.result_url, str(result.id), output, content, settings, results)
    except OcrError as exc:
        result.result_object = {"url": request.result_url, "error": exc.to_dict()}
        return
    previews = {p.number: data for p in result.pages
                if (data := stores.previews.get(str(result.id), p.number)) is not None}
    if previews:  # the page images beside the result object (`previews`)
        try:
            result.result_object["previews"] = url_inputs.write_previews(
                str(result.result_object["url"]), previews, settings, results)
        except OcrError as exc:
            result.result_object["previews_error"] = exc.to_dict()


def _since(started: float) -> float:
    """Seconds from `started` (epoch seconds: a fan-out ends in another process)."""
    return round(max(time.time() - started, 0.0), 3)
