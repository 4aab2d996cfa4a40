"""The document pipeline: pages in, a JSON-ready result out. No Celery here.

Runs in worker children. `run_document` handles a whole input inside one task (images,
multi-frame TIFFs, PDFs whose pages all have text); fanned-out PDFs use `ocr_page` in
their page tasks and `assemble` when the last page is in.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from tasks.engines import RecognizeOptions
from tasks.errors import ERROR_CLASSES, OcrError, PagesFailed, error_info
from tasks.images import iter_image_pages, sniff_format
from tasks.pdf import PdfPlan, plan_pdf, render_page
from tasks.preprocess import Correction, estimate_skew

if TYPE_CHECKING:
    from PIL import Image

    from tasks.engines import OcrEngine
    from tasks.inputs import JobRequest
    from worker_config import Settings

Progress = Callable[[int, int], None]
PAGE_SEPARATOR = "\f"


def recognize_options(request: JobRequest) -> RecognizeOptions:
    return RecognizeOptions(output=request.output,
                            want_words=request.output in ("json", "pdf"))


def ocr_page(number: int, image: Image.Image, engine: OcrEngine, options: RecognizeOptions,
             settings: Settings) -> dict[str, Any]:
    """Put the page upright, deskew it and recognise it; raises OcrError."""
    started = time.perf_counter()
    rotation = engine.detect_orientation(image) if settings.auto_rotate else 0
    upright = Correction(rotation=rotation).apply(image)
    skew = estimate_skew(upright) if settings.deskew else 0.0
    final = Correction(skew=skew).apply(upright)
    result = engine.recognize(final, options)
    page: dict[str, Any] = {
        "number": number, "text": result.text.rstrip(), "source": "ocr",
        "confidence": result.confidence, "rotation": rotation, "skew": skew,
        "seconds": round(time.perf_counter() - started, 3),
    }
    if options.want_words:
        page["image_size"] = [image.width, image.height]
        page["words"] = [{"text": w.text, "box": list(w.box), "confidence": w.confidence}
                         for w in result.words]
    return page


def text_page(number: int, text: str, layer: str) -> dict[str, Any]:
    """A page delivered from its PDF text layer (`visible` text or an `invisible` one)."""
    return {"number": number, "text": text.rstrip(), "source": "text-layer", "layer": layer,
            "confidence": None}


def failed_page(number: int, exc: BaseException) -> dict[str, Any]:
    return {"number": number, "text": "", "source": "ocr", "error": error_info(exc)}


def assemble(pages: Iterable[dict[str, Any]], base: dict[str, Any]) -> dict[str, Any]:
    """The document result from its pages: SUCCESS, PARTIAL, or raise when all failed."""
    ordered = sorted(pages, key=lambda p: p["number"])
    failed = [p for p in ordered if "error" in p]
    if ordered and len(failed) == len(ordered):
        codes = {p["error"]["code"] for p in failed}
        cls = ERROR_CLASSES.get(codes.pop(), PagesFailed) if len(codes) == 1 else PagesFailed
        raise cls(f"all {len(failed)} pages failed; page {failed[0]['number']}: "
                  f"{failed[0]['error']['message']}")
    return {
        **base,
        "status": "PARTIAL" if failed else "SUCCESS",
        "text": PAGE_SEPARATOR.join(p["text"] for p in ordered),
        "pages": ordered,
        "failed_pages": [{"number": p["number"], **p["error"]} for p in failed],
    }


def document_base(data: bytes, request: JobRequest, fmt: str, count: int) -> dict[str, Any]:
    return {"filename": request.filename, "format": fmt,
            "sha256": hashlib.sha256(data).hexdigest(), "output": request.output,
            "page_count": count}


def run_document(data: bytes, request: JobRequest, engine: OcrEngine, settings: Settings,
                 progress: Progress | None = None,
                 plan: PdfPlan | None = None) -> dict[str, Any]:
    """Recognise every selected page inside this process.

    A page the engine fails on is reported in `failed_pages` (PARTIAL).
    """
    started = time.perf_counter()
    fmt = sniff_format(data)
    options = recognize_options(request)
    pages: list[dict[str, Any]] = []
    count = 0

    def deliver(page: dict[str, Any], total: int) -> None:
        pages.append(page)
        if progress is not None:
            progress(len(pages), total)

    if fmt == "pdf":
        own_plan = plan is None
        if plan is None:
            plan = plan_pdf(data, request.pages, request.password, request.mode, settings)
        try:
            count = plan.page_count
            for number, (text, layer) in sorted(plan.text_pages.items()):
                deliver(text_page(number, text, layer), plan.selected)
            for number in plan.ocr_pages:
                image = render_page(plan.doc, number, settings)
                deliver(_guarded_page(number, image, engine, options, settings),
                        plan.selected)
        finally:
            if own_plan:
                plan.doc.close()
    else:
        for number, page_total, selected, image in iter_image_pages(data, fmt, request.pages,
                                                                    settings):
            count = page_total
            deliver(_guarded_page(number, image, engine, options, settings), selected)
    ocr_seconds = sum(p.get("seconds", 0.0) for p in pages)
    result = assemble(pages, document_base(data, request, fmt, count))
    result["timings"] = {"ocr_seconds": round(ocr_seconds, 3),
                         "total_seconds": round(time.perf_counter() - started, 3)}
    return result


def _guarded_page(number: int, image: Image.Image, engine: OcrEngine,
                  options: RecognizeOptions, settings: Settings) -> dict[str, Any]:
    try:
        return ocr_page(number, image, engine, options, settings)
    except OcrError as exc:
        return failed_page(number, exc)
    finally:
        image.close()
