"""One OCR job from kwargs to result: input, engine, cache, fan-out and merge.

Runs in worker children, called by the tasks in `tasks.queue.document_tasks`. No Celery here:
the tasks decide what to enqueue and where results are stored.
"""

from __future__ import annotations

import functools
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from tasks.errors import DeadlineExceeded, OcrError, OutputTooLarge
from tasks.pipeline.documents import (
    Progress,
    deadline_page,
    document_base,
    ocr_page,
    past_deadline,
    planned_pages,
    recognize_options,
    run_document,
)
from tasks.pipeline.images import sniff_format
from tasks.pipeline.inputs import JobRequest, read_input
from tasks.pipeline.pdf import plan_pdf, render_page, searchable_pdf
from tasks.pipeline.results import assemble, failed_page, merge_previous
from tasks.state.stores import cache_key

if TYPE_CHECKING:
    from tasks.engines.resident import ResidentEngines
    from tasks.state.join import OpenDocumentCache
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
    """A PDF with pages to OCR: the task enqueues one page task per `ocr_pages` entry."""

    meta: dict[str, Any]
    text_pages: list[dict[str, Any]]
    ocr_pages: list[int]
    data: bytes


def process_job(job_id: str, request: JobRequest, kwargs: dict[str, Any],
                settings: Settings, registry: ResidentEngines, stores: Stores,
                previous: dict[str, Any] | None = None,
                progress: Progress | None = None) -> dict[str, Any] | FanOut:
    """Read the input, then answer from the cache, in-process, or fan out.

    `previous` is the result of the job named by `merge_from` (a retry of its failed
    pages): its good pages complete this job's result.
    """
    started = time.time()
    if past_deadline(request.deadline):
        raise DeadlineExceeded("the job's deadline passed before it started")
    data = read_input(kwargs, request, settings, stores.blobs)
    engine_name = request.engine or registry.primary
    loaded = registry.get(engine_name)  # fails fast when this child's load failed
    key = None
    if settings.cache_results and previous is None:
        key = cache_key(data, request.cache_options(engine_name, loaded.engine.model))
        hit = stores.cache.get(key)
        if hit is not None:
            return {**hit, "id": job_id, "filename": request.filename, "cached": True}
    fmt = sniff_format(data)
    plan = None
    if fmt == "pdf":
        plan = plan_pdf(data, request.pages, request.password, request.mode, settings)
        if plan.ocr_pages:
            plan.doc.close()
            meta = {"request": asdict(request), "engine": engine_name,
                    "model": loaded.engine.model, "cache_key": key, "started": started,
                    "total": plan.selected, "ocr_pages": plan.ocr_pages,
                    "previous": previous,
                    "base": document_base(data, request, fmt, plan.page_count)}
            texts = planned_pages(plan)  # text-layer and blank pages
            return FanOut(meta, texts, plan.ocr_pages, data)
    try:
        result = run_document(data, request, loaded.engine, settings, progress, plan=plan)
    finally:
        if plan is not None:
            plan.doc.close()
    result["engine"] = registry.describe(engine_name)
    return finish(job_id, result, data, request, key, settings, stores,
                  kwargs.get("blob"), previous)


def finish(job_id: str, result: dict[str, Any], data: bytes, request: JobRequest,
           key: str | None, settings: Settings, stores: Stores, blob: str | None,
           previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """Complete a retry, attach the searchable PDF, cache a complete result.

    A PARTIAL result keeps its input (`input_blob`) until OCR_BLOB_TTL, so that its
    failed pages can be retried (`merge_from`).
    """
    if previous is not None:
        result = merge_previous(result, previous)
    result = {**result, "id": job_id, "cached": False}
    if result["status"] == "PARTIAL":
        result["input_blob"] = blob or stores.blobs.put(data)
    if request.output == "pdf":
        pdf = searchable_pdf(data, result["format"], request.password, result["pages"],
                             settings)
        if len(pdf) > settings.max_output_bytes:
            raise OutputTooLarge(f"the searchable PDF is {len(pdf) // 2**20} MB, more than "
                                 f"{settings.max_output_mb} MB")
        result["pdf"] = {"key": stores.outputs.put(job_id, pdf), "bytes": len(pdf)}
    if key is not None and result["status"] == "SUCCESS":
        stores.cache.put(key, result)
    return result


def run_pdf_page(meta: dict[str, Any], number: int, registry: ResidentEngines,
                 docs: OpenDocumentCache, settings: Settings,
                 stores: Stores) -> dict[str, Any]:
    """OCR one page of a fanned-out PDF; a failure becomes a failed page, not an error."""
    request = JobRequest(**meta["request"])
    if past_deadline(request.deadline):
        return deadline_page(number)
    try:
        engine = registry.get(meta["engine"]).engine
        doc = docs.get(meta["blob"], request.password, stores.blobs, settings)
        image = render_page(doc, number, settings, engine.page_longest_side)
        full = functools.partial(render_page, doc, number, settings)
        try:
            page = ocr_page(number, image, engine, recognize_options(request), settings,
                            full)
        finally:
            image.close()
    except OcrError as exc:
        if exc.retryable:
            raise
        return failed_page(number, exc)
    return page


def merge_document(doc_id: str, meta: dict[str, Any], pages: list[dict[str, Any]],
                   registry: ResidentEngines, settings: Settings,
                   stores: Stores) -> dict[str, Any]:
    """The final result of a fanned-out PDF; raises OcrError when every page failed."""
    request = JobRequest(**meta["request"])
    result = assemble(pages, meta["base"])
    ocr = [p for p in result["pages"] if p["source"] == "ocr" and "error" not in p]
    first = ocr[0]["worker"] if ocr else {"pid": None, "tasks_in_process": None,
                                          "load_seconds": None}
    # The child that read the first OCR page, and every child that read one.
    result["engine"] = {"name": meta["engine"], "model": meta["model"], **first,
                        "pids": sorted({p["worker"]["pid"] for p in ocr})}
    result["timings"] = {"ocr_seconds": round(sum(p.get("seconds", 0) for p in ocr), 3),
                         "total_seconds": round(time.time() - meta["started"], 3)}
    data = stores.blobs.get(meta["blob"]) if request.output == "pdf" else b""
    return finish(doc_id, result, data, request, meta["cache_key"], settings, stores,
                  meta["blob"], meta.get("previous"))
