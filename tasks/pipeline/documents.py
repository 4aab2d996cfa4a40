"""The document pipeline: pages in, a JSON-ready result out. No Celery here.

Runs in worker children. `run_document` handles a whole input inside one task (images,
multi-frame TIFFs, PDFs whose pages all have text); fanned-out PDFs use `ocr_page` in
their page tasks and `assemble` when the last page is in. How one page is read is
tasks/pipeline/page_reading.py's (`ocr_page`); here are the document's pages: planned
from a PDF, the structure of its text-layer pages (at once or in chunks), and the result.
"""

from __future__ import annotations

import functools
import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from tasks.engines import RecognizeOptions
from tasks.errors import DeadlineExceeded, OcrError
from tasks.pipeline.images import iter_image_pages
from tasks.pipeline.layouts import LAYOUT_OUTPUTS
from tasks.pipeline.page_reading import Render, blank_page, ocr_page, with_structure
from tasks.pipeline.pdf import (
    PdfPlan,
    plan_pdf,
    render_page,
    text_layer_page,
    text_layer_words,
)
from tasks.pipeline.results import assemble, failed_page
from tasks.pipeline.structure import (
    STRUCTURE_OUTPUTS,
    Analysed,
    analyse,
    layout_threads,
    relevel,
)
from tasks.records.formats import sniff_format
from tasks.records.request import WORD_BOX_OUTPUTS
from tasks.records.results import DocumentResult, PageRecord, PageStructure

if TYPE_CHECKING:
    from PIL import Image

    from tasks.engines import OcrEngine
    from tasks.records.request import JobRequest
    from tasks.settings import Settings

Progress = Callable[[int, int], None]


def recognize_options(request: JobRequest) -> RecognizeOptions:
    return RecognizeOptions(output=request.output,
                            want_words=True,  # every page's lines (the page API)
                            want_hocr=request.output in LAYOUT_OUTPUTS, lang=request.lang,
                            deadline=request.deadline,
                            engine_named=request.engine is not None)


def past_deadline(deadline: float | None) -> bool:
    return deadline is not None and time.time() > deadline


def deadline_page(number: int) -> PageRecord:
    return failed_page(number, DeadlineExceeded(f"page {number} was not read before the "
                                                "job's deadline"))


def text_page(number: int, text: str, layer: str) -> PageRecord:
    """A page delivered from its PDF text layer (`visible` text or an `invisible` one)."""
    return PageRecord(number, layer_text(text), source="text-layer", layer=layer)


_SPACES_ONLY = re.compile(r"^ +$", re.M)
_BLANK_RUNS = re.compile(r"\n{3,}")


def layer_text(text: str) -> str:
    """A text layer's text without the blank lines word processors draw as spaces.

    A line of spaces alone (an empty paragraph a PDF draws as one space) is an empty
    line; the page starts at its first line with text, and a run of empty lines is one.
    """
    text = _BLANK_RUNS.sub("\n\n", _SPACES_ONLY.sub("", text))
    return text.lstrip("\n").rstrip()


def structure_chunks(plan: PdfPlan, output: str, settings: Settings) -> list[list[int]]:
    """The text-layer pages to analyse in page tasks, in chunks of OCR_STRUCTURE_CHUNK_PAGES.

    None (analysed in the planning task) unless the output carries structure and there
    are more text-layer pages than one chunk.
    """
    size = settings.structure_chunk_pages
    numbers = sorted(plan.text_pages)
    if output not in STRUCTURE_OUTPUTS or len(numbers) <= size:
        return []
    return [numbers[i:i + size] for i in range(0, len(numbers), size)]


def chunk_pages(doc: Any, numbers: list[int], output: str,
                settings: Settings) -> list[PageRecord]:
    """A chunk of text-layer pages with their structure (`structure_chunks`).

    Each page keeps its headings' type sizes (`heading_sizes`), so that the merge ranks
    heading levels across all the job's chunks (`relevel_headings`), as one analysis of
    all its text-layer pages would.
    """
    # The text first, as planning read it: the analysis turns rotated pages upright.
    texts = {number: text_layer_page(doc, number, settings) for number in numbers}
    found = analyse(doc, numbers, threads=layout_threads(settings))
    pages = []
    for number in numbers:
        analysed = found.get(number)
        page = with_structure(text_page(number, *texts[number]), analysed, output)
        sizes = analysed.heading_sizes if isinstance(analysed, Analysed) else ()
        pages.append(replace(page, heading_sizes=sizes))
    return pages


def relevel_headings(pages: list[PageRecord], chunks: list[list[int]],
                     output: str) -> list[PageRecord]:
    """`pages` with their headings levelled across all `chunks`; no `heading_sizes`.

    Each chunk levelled its own headings (`structure.analyse`); here the same rule runs
    on the headings of every chunk (`structure.relevel`), as one analysis of all the
    job's text-layer pages would.
    """
    analysed = [p for p in pages if p.heading_sizes is not None]
    contents: list[tuple[str | PageStructure, tuple[int, ...]]] = []
    for page in analysed:
        content = page.text if output == "markdown" or page.structure is None \
            else page.structure
        contents.append((content, page.heading_sizes or ()))
    relevelled = dict(zip((p.number for p in analysed), relevel(contents), strict=True))
    out = []
    for page in pages:
        if page.number not in relevelled:
            out.append(page)
            continue
        page = replace(page, heading_sizes=None)
        found = relevelled[page.number]
        out.append(replace(page, text=found) if isinstance(found, str)
                   else replace(page, structure=found))
    return out


def planned_pages(plan: PdfPlan, settings: Settings, output: str,
                  chunked: bool = False) -> list[PageRecord]:
    """The pages a PDF plan already answers: text-layer pages and blank pages.

    For an `output` that places words (hOCR, ALTO, a searchable PDF), text-layer pages
    carry their size and words in OCR'd pages' pixels (`text_layer_words`); for
    markdown and json, the structure PyMuPDF's layout analysis finds on them, read
    together (`with_structure`). `chunked`: the text-layer pages are left to chunk
    tasks (`structure_chunks`), only the blank pages are answered here.
    """
    pages = [] if chunked else [text_page(n, text, layer)
                                for n, (text, layer) in plan.text_pages.items()]
    if output in STRUCTURE_OUTPUTS and pages:
        found = analyse(plan.doc, sorted(plan.text_pages), threads=layout_threads(settings))
        pages = [with_structure(page, found.get(page.number), output) for page in pages]
    if output in WORD_BOX_OUTPUTS:
        placed = []
        for page in pages:
            size, words = text_layer_words(plan.doc, page.number, settings)
            placed.append(replace(page, image_size=size, words=words))
        pages = placed
    return sorted(pages + [blank_page(n) for n in plan.blank_pages], key=lambda p: p.number)


def document_base(data: bytes, request: JobRequest, fmt: str, count: int) -> DocumentResult:
    """What a document's result says of its input, before any page is read."""
    return DocumentResult(status=None, filename=request.filename, format=fmt,
                          sha256=hashlib.sha256(data).hexdigest(), output=request.output,
                          mode=request.mode, lang=request.lang, page_count=count)


def run_document(data: bytes, request: JobRequest, engine: OcrEngine, settings: Settings,
                 progress: Progress | None = None,
                 plan: PdfPlan | None = None, fmt: str | None = None,
                 options: RecognizeOptions | None = None) -> DocumentResult:
    """Recognise every selected page inside this process.

    A page the engine fails on is reported in `failed_pages` (PARTIAL). `fmt` and
    `options` are the job's, when its caller has them already (`process_job` has:
    each is decided once per job); else they are found here.
    """
    started = time.perf_counter()
    fmt = fmt or sniff_format(data)
    options = options or recognize_options(request)
    pages: list[PageRecord] = []
    count = 0

    def deliver(page: PageRecord, total: int) -> None:
        pages.append(page)
        if progress is not None:
            progress(len(pages), total)

    if fmt == "pdf":
        own_plan = plan is None
        if plan is None:
            plan = plan_pdf(data, request.pages, request.password, request.mode, settings)
        try:
            count = plan.page_count
            # Pages the plan answered (text layer, blank) are one progress step: a
            # born-digital PDF stays at PyMuPDF's pace, not at one store and event a page.
            pages.extend(planned_pages(plan, settings, request.output))
            if pages and progress is not None:
                progress(len(pages), plan.selected)
            for number in plan.ocr_pages:
                if past_deadline(request.deadline):
                    deliver(deadline_page(number), plan.selected)
                    continue
                image = render_page(plan.doc, number, settings, engine.page_longest_side,
                                    mode=engine.page_mode, fit=engine.page_size)
                full = functools.partial(render_page, plan.doc, number, settings)
                deliver(_guarded_page(number, image, engine, options, settings, full),
                        plan.selected)
        finally:
            if own_plan:
                plan.doc.close()
    else:
        for number, page_total, selected, image in iter_image_pages(data, fmt, request.pages,
                                                                    settings):
            count = page_total
            if past_deadline(request.deadline):
                image.close()
                deliver(deadline_page(number), selected)
                continue
            deliver(_guarded_page(number, image, engine, options, settings), selected)
    ocr_seconds = sum(p.seconds or 0.0 for p in pages)
    result = assemble(pages, document_base(data, request, fmt, count))
    result.timings = {"ocr_seconds": round(ocr_seconds, 3),
                      "total_seconds": round(time.perf_counter() - started, 3)}
    return result


def _guarded_page(number: int, image: Image.Image, engine: OcrEngine,
                  options: RecognizeOptions, settings: Settings,
                  rerender: Render | None = None) -> PageRecord:
    try:
        return ocr_page(number, image, engine, options, settings, rerender)
    except OcrError as exc:
        if exc.retryable:
            raise  # the job task retries it (an inference server briefly down, say)
        return failed_page(number, exc)
    finally:
        image.close()
