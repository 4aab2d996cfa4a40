"""One OCR job from its request to its `Outcome`: input, cache, fan-out and merge.

Runs in worker children, called by the tasks in `tasks.queue.document_tasks`. No
Celery here: the tasks decide what to enqueue; every ending goes through
`tasks.lifecycle.ending.JobEnder`. The page side of a fan-out is in
`tasks.lifecycle.fanout`.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from tasks.errors import DeadlineExceeded, OutputTooLarge
from tasks.lifecycle.records import DocumentMeta, JobStatus, Outcome
from tasks.pipeline import layouts
from tasks.pipeline.documents import (
    Progress,
    document_base,
    past_deadline,
    planned_pages,
    recognize_options,
    run_document,
)
from tasks.pipeline.images import sniff_format
from tasks.pipeline.inputs import JobRequest, read_input
from tasks.pipeline.layouts import LAYOUT_OUTPUTS
from tasks.pipeline.pdf import check_password, plan_pdf, searchable_pdf
from tasks.pipeline.results import merge_previous
from tasks.state.keys import CACHE_PREFIX

if TYPE_CHECKING:
    from tasks.engines.resident import ResidentEngines
    from tasks.state.stores import Stores
    from worker_config import Settings


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
    loaded.engine.check(recognize_options(request))  # refusals: lang, output
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
                                loaded.engine.model, key, started, previous, settings,
                                stores)
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
             previous: dict[str, Any] | None, settings: Settings,
             stores: Stores) -> FanOut:
    """Store the input for the page tasks (decrypted, so no password is kept)."""
    replaced = None
    if plan.encrypted or request.blob is None:
        blob = stores.blobs.put(plan.decrypted or data)
        replaced = request.blob
    else:
        blob = request.blob
    stored = replace(request.stored_as(blob), password=None)
    meta = DocumentMeta(
        job_id=job_id, request=stored, engine=engine, model=model, cache_key=key,
        started=started, total=plan.selected, ocr_pages=list(plan.ocr_pages),
        page_tasks=[], reply_queue="", previous=previous, encrypted=plan.encrypted,
        base=document_base(data, request, "pdf", plan.page_count))
    texts = planned_pages(plan)  # text-layer and blank pages
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
    if request.output in LAYOUT_OUTPUTS:  # hOCR/ALTO, stored like the PDF
        stored = (previous or {}).get(request.output)  # a retry keeps its earlier pages
        earlier = stores.outputs.get(stored["key"]) if isinstance(stored, dict) else None
        layout = layouts.render(request.output, result["pages"], earlier)
        result["pages"] = layouts.without_layout(result["pages"])
        if len(layout) > settings.max_output_bytes:
            raise OutputTooLarge(f"the {request.output} document is more than "
                                 f"{settings.max_output_mb} MB")
        result[request.output] = {"key": stores.outputs.put(job_id, layout),
                                  "bytes": len(layout)}
    if key is not None and result["status"] == JobStatus.SUCCESS:
        stores.cache.put(key, result, encrypted=encrypted)
    return Outcome(job_id, JobStatus(result["status"]), request, result,
                   engine=str(result.get("engine", {}).get("name", "")), started=started)
