"""The document pipeline: input bytes in, a JSON-ready result out. No Celery here.

Runs in worker children, called by the `ocr.document` task with this process's engine
registry; unit tests call it directly with fake engines.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tasks.engines import RecognizeOptions
from tasks.images import iter_image_pages, sniff_format
from tasks.pdf import iter_pdf_pages

if TYPE_CHECKING:
    from PIL import Image

    from tasks.engines import OcrEngine
    from tasks.inputs import JobRequest
    from worker_config import Settings

Progress = Callable[[int, int], None]
PAGE_SEPARATOR = "\f"


@dataclass(frozen=True)
class PageWork:
    """A page to deliver: its text layer, or an image for the engine."""

    number: int
    count: int
    selected: int
    text: str | None
    image: Image.Image | None


def iter_pages(data: bytes, fmt: str, request: JobRequest,
               settings: Settings) -> Iterator[PageWork]:
    if fmt == "pdf":
        for page in iter_pdf_pages(data, request.pages, request.password, request.mode,
                                   settings):
            yield PageWork(page.number, page.count, page.selected, page.text, page.image)
    else:
        for number, count, selected, image in iter_image_pages(data, fmt, request.pages,
                                                               settings):
            yield PageWork(number, count, selected, None, image)


def run_document(data: bytes, request: JobRequest, engine: OcrEngine, settings: Settings,
                 progress: Progress | None = None) -> dict[str, Any]:
    """Recognise every selected page; the result without job id and engine provenance."""
    started = time.perf_counter()
    fmt = sniff_format(data)
    options = RecognizeOptions(output=request.output, want_words=request.output == "json")
    pages: list[dict[str, Any]] = []
    ocr_seconds = 0.0
    count = 0
    for work in iter_pages(data, fmt, request, settings):
        count = work.count
        if work.image is not None:
            t0 = time.perf_counter()
            result = engine.recognize(work.image, options)
            ocr_seconds += time.perf_counter() - t0
            work.image.close()
            page = {"number": work.number, "text": result.text.rstrip(), "source": "ocr",
                    "confidence": result.confidence}
            if options.want_words:
                page["words"] = [{"text": w.text, "box": list(w.box),
                                  "confidence": w.confidence} for w in result.words]
        else:
            page = {"number": work.number, "text": (work.text or "").rstrip(),
                    "source": "text-layer", "confidence": None}
        pages.append(page)
        if progress is not None:
            progress(len(pages), work.selected)
    return {
        "status": "SUCCESS",
        "filename": request.filename,
        "format": fmt,
        "sha256": hashlib.sha256(data).hexdigest(),
        "output": request.output,
        "page_count": count,
        "text": PAGE_SEPARATOR.join(p["text"] for p in pages),
        "pages": pages,
        "timings": {"ocr_seconds": round(ocr_seconds, 3),
                    "total_seconds": round(time.perf_counter() - started, 3)},
    }

