"""One OCR job from its request to its `Outcome`: input, cache, fan-out and merge.

Runs in worker children, called by the tasks in `tasks.queue.document_tasks`. No
Celery here: the tasks decide what to enqueue; every ending goes through
`tasks.lifecycle.ending.JobEnder`.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from tasks.errors import DeadlineExceeded, OcrError, OutputTooLarge
from tasks.lifecycle.records import DocumentMeta, JobStatus, Outcome
from tasks.pipeline.documents import (
    Progress,
    deadline_page,
    document_base,
    ocr_page,
    past_deadline,
    recognize_options,
    run_document,
    text_page,
)
from tasks.pipeline.images import sniff_format
from tasks.pipeline.inputs import JobRequest, read_input
from tasks.pipeline.pdf import (
    check_password,
    decrypted_bytes,
    open_pdf,
    plan_pdf,
    render_page,
    searchable_pdf,
)
from tasks.pipeline.results import assemble, failed_page, merge_previous
from tasks.state.keys import CACHE_PREFIX

if TYPE_CHECKING:
    from tasks.engines.resident import ResidentEngines
    from tasks.state.stores import BlobStore, JobControl, OutputStore, ResultCache
    from worker_config import Settings


@dataclass
class Stores:
    """The Redis-backed stores a job uses."""

    blobs: BlobStore
    cache: ResultCache
    outputs: OutputStore
    control: JobControl


@dataclass
class FanOut:
    """A PDF with pages to OCR: one page task per `meta.ocr_pages` entry.

    `meta.request` already names the stored input (decrypted when it was encrypted);
    `replaced_blob` is the client's upload that the stored copy replaces.
    """

    meta: DocumentMeta
    text_pages: list[dict[str, Any]]
    replaced_blob: str | None = None


def result_settings(settings: Settings) -> dict[str, Any]:
    """The settings that change a result, beside the request's options and engine."""
    return {"pdf_dpi": settings.pdf_dpi, "max_render_pixels": settings.max_render_pixels,
            "pdf_min_text_chars": settings.pdf_min_text_chars,
            "auto_rotate": settings.auto_rotate, "deskew": settings.deskew,
            "prompt": settings.prompt, "vlm_max_tokens": settings.vlm_max_tokens}


def cache_key(data: bytes, request: JobRequest, engine: str, model: str | None,
              settings: Settings) -> str:
    """Content hash of the input plus everything that shapes its result."""
    digest = hashlib.sha256(data)
    options = {**request.cache_options(engine, model), **result_settings(settings)}
    digest.update(json.dumps(options, sort_keys=True).encode())
    return CACHE_PREFIX + digest.hexdigest()


def process_job(job_id: str, request: JobRequest, settings: Settings,
                engines: ResidentEngines, stores: Stores,
                previous: dict[str, Any] | None = None,
                progress: Progress | None = None) -> Outcome | FanOut:
    """Read the input, then answer from the cache, in-process, or fan out.

    `previous` is the result of the job named by `merge_from` (a retry of its failed
    pages): its good pages complete this job's result. Raises OcrError.
    """
    started = time.time()
    if past_deadline(request.deadline):
        raise DeadlineExceeded("the job's deadline passed before it started")
    data = read_input(request, settings, stores.blobs)
    engine_name = request.engine or engines.primary
    loaded = engines.get(engine_name)  # fails fast when this child's load failed
    key = None
    if settings.cache_results and previous is None:
        key = cache_key(data, request, engine_name, loaded.engine.model, settings)
        hit = stores.cache.get(key)
        if hit is not None:
            result, encrypted = hit
            if encrypted:
                check_password(data, request.password, settings)
            cached = {**result, "id": job_id, "filename": request.filename, "cached": True}
            return Outcome(job_id, JobStatus(cached["status"]), request, cached,
                           engine=engine_name, started=started)
    fmt = sniff_format(data)
    plan = None
    if fmt == "pdf":
        plan = plan_pdf(data, request.pages, request.password, request.mode, settings)
        if plan.ocr_pages:
            try:
                return _fan_out(job_id, request, data, plan, engine_name,
                                loaded.engine.model, key, started, previous, stores)
            finally:
                plan.doc.close()
    try:
        result = run_document(data, request, loaded.engine, settings, progress, plan=plan)
    finally:
        if plan is not None:
            plan.doc.close()
    result["engine"] = engines.describe(engine_name)
    encrypted = plan is not None and plan.encrypted
    return complete(job_id, result, data, request, key, encrypted, settings, stores,
                    previous, started)


def _fan_out(job_id: str, request: JobRequest, data: bytes, plan: Any, engine: str,
             model: str | None, key: str | None, started: float,
             previous: dict[str, Any] | None, stores: Stores) -> FanOut:
    """Store the input for the page tasks (decrypted, so no password is kept)."""
    replaced = None
    if plan.encrypted or request.blob is None:
        blob = stores.blobs.put(decrypted_bytes(plan.doc) if plan.encrypted else data)
        replaced = request.blob
    else:
        blob = request.blob
    stored = replace(request.stored_as(blob), password=None)
    meta = DocumentMeta(
        job_id=job_id, request=stored, engine=engine, model=model, cache_key=key,
        started=started, total=plan.selected, ocr_pages=list(plan.ocr_pages),
        page_tasks=[], reply_queue="", previous=previous, encrypted=plan.encrypted,
        base=document_base(data, request, "pdf", plan.page_count))
    texts = [text_page(n, text, layer) for n, (text, layer) in plan.text_pages.items()]
    return FanOut(meta, texts, replaced)


def complete(job_id: str, result: dict[str, Any], data: bytes, request: JobRequest,
             key: str | None, encrypted: bool, settings: Settings, stores: Stores,
             previous: dict[str, Any] | None, started: float | None) -> Outcome:
    """Complete a retry, attach the searchable PDF, cache a complete result.

    A PARTIAL result keeps its input (`input_blob`) until OCR_BLOB_TTL, so that its
    failed pages can be retried (`merge_from`).
    """
    if previous is not None:
        result = merge_previous(result, previous)
    result = {**result, "id": job_id, "cached": False}
    if result["status"] == JobStatus.PARTIAL:
        result["input_blob"] = request.blob or stores.blobs.put(data)
    if request.output == "pdf":
        pdf = searchable_pdf(data, result["format"], request.password, result["pages"],
                             settings)
        if len(pdf) > settings.max_output_bytes:
            raise OutputTooLarge(f"the searchable PDF is {len(pdf) // 2**20} MB, more than "
                                 f"{settings.max_output_mb} MB")
        result["pdf"] = {"key": stores.outputs.put(job_id, pdf), "bytes": len(pdf)}
    if key is not None and result["status"] == JobStatus.SUCCESS:
        stores.cache.put(key, result, encrypted=encrypted)
    return Outcome(job_id, JobStatus(result["status"]), request, result,
                   engine=str(result.get("engine", {}).get("name", "")), started=started)


class OpenDocumentCache:
    """The one PDF a pool child is rendering pages of, kept open between page tasks."""

    def __init__(self) -> None:
        self._key: str | None = None
        self._doc: Any = None

    def get(self, blob: str, blobs: BlobStore, settings: Settings) -> Any:
        if blob != self._key:
            self.close()
            self._doc = open_pdf(blobs.get(blob), None, settings)
            self._key = blob
        return self._doc

    def close(self) -> None:
        if self._doc is not None:
            self._doc.close()
        self._key = self._doc = None


def run_pdf_page(meta: DocumentMeta, number: int, engines: ResidentEngines,
                 docs: OpenDocumentCache, settings: Settings,
                 stores: Stores) -> dict[str, Any]:
    """OCR one page of a fanned-out PDF; a failure becomes a failed page.

    Retryable errors are raised (the page task retries them).
    """
    request = meta.request
    if past_deadline(request.deadline):
        return deadline_page(number)
    try:
        engine = engines.get(meta.engine).engine
        doc = docs.get(request.blob or "", stores.blobs, settings)
        image = render_page(doc, number, settings)
        try:
            page = ocr_page(number, image, engine, recognize_options(request), settings)
        finally:
            image.close()
    except OcrError as exc:
        if exc.retryable:
            raise
        return failed_page(number, exc)
    described = engines.describe(meta.engine)
    page["worker"] = {k: described[k] for k in ("pid", "tasks_in_process", "load_seconds")}
    return page


def merge_document(meta: DocumentMeta, pages: list[dict[str, Any]], settings: Settings,
                   stores: Stores) -> Outcome:
    """The outcome of a fanned-out PDF once every page is in."""
    request = meta.request
    try:
        result = assemble(pages, meta.base)
    except OcrError as exc:  # every page failed
        return Outcome.failed(meta.job_id, exc, request, engine=meta.engine,
                              started=meta.started, reply_queue=meta.reply_queue)
    ocr = [p for p in result["pages"] if p["source"] == "ocr" and "error" not in p]
    first = ocr[0]["worker"] if ocr else {"pid": None, "tasks_in_process": None,
                                          "load_seconds": None}
    # The child that read the first OCR page, and every child that read one.
    result["engine"] = {"name": meta.engine, "model": meta.model, **first,
                        "pids": sorted({p["worker"]["pid"] for p in ocr})}
    result["timings"] = {"ocr_seconds": round(sum(p.get("seconds", 0) for p in ocr), 3),
                         "total_seconds": round(time.time() - meta.started, 3)}
    data = stores.blobs.get(request.blob or "") if request.output == "pdf" else b""
    outcome = complete(meta.job_id, result, data, request, meta.cache_key, meta.encrypted,
                       settings, stores, meta.previous, meta.started)
    outcome.reply_queue = meta.reply_queue
    return outcome
