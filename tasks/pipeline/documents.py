"""The document pipeline: pages in, a JSON-ready result out. No Celery here.

Runs in worker children. `run_document` handles a whole input inside one task (images,
multi-frame TIFFs, PDFs whose pages all have text); fanned-out PDFs use `ocr_page` in
their page tasks and `assemble` when the last page is in.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from tasks.engines import PageResult, RecognizeOptions
from tasks.engines.auto_lang import page_language, script_probes
from tasks.engines.vlm_runtime import align_words
from tasks.errors import (
    DeadlineExceeded,
    EngineUnavailable,
    LayoutFailed,
    OcrError,
    VlmIncomplete,
    error_info,
)
from tasks.pipeline._preprocess import Correction, Skew, estimate_skew
from tasks.pipeline.blank import is_blank
from tasks.pipeline.images import iter_image_pages, sniff_format
from tasks.pipeline.layouts import LAYOUT_OUTPUTS, words_hocr
from tasks.pipeline.pdf import (
    PdfPlan,
    ocr_layer_pdf,
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
    heading_levels,
    relevel,
)
from tasks.records.request import AUTO_LANG, WORD_BOX_OUTPUTS
from tasks.records.results import (
    DocumentResult,
    Fallback,
    PageError,
    PageRecord,
    ScriptFound,
    TextLayer,
)

if TYPE_CHECKING:
    from PIL import Image

    from tasks.engines import OcrEngine, PageResult
    from tasks.records.request import JobRequest
    from tasks.settings import Settings

Progress = Callable[[int, int], None]
# Renders the page again at full resolution (OCR_PDF_DPI) for a fallback engine.
Render = Callable[[], "Image.Image"]
log = logging.getLogger(__name__)


def recognize_options(request: JobRequest) -> RecognizeOptions:
    return RecognizeOptions(output=request.output,
                            want_words=request.output in ("markdown", "json", "pdf",
                                                          "hocr", "alto"),
                            want_hocr=request.output in LAYOUT_OUTPUTS, lang=request.lang,
                            deadline=request.deadline,
                            engine_named=request.engine is not None)


def ocr_page(number: int, image: Image.Image, engine: OcrEngine, options: RecognizeOptions,
             settings: Settings, rerender: Render | None = None) -> PageRecord:
    """Put the page upright, deskew it and recognise it; raises OcrError.

    A blank page (`tasks.pipeline.blank`) is reported as such, without OCR. A
    vision-language read that did not finish (`vlm.finish_reason` other than `stop`)
    is never the page's text: another engine (OCR_VLM_FALLBACK) reads the page, on the
    full-resolution image `rerender` gives when `image` was rendered at the engine's
    page budget, or the page fails with `vlm_incomplete`.

    The page is converted once to the engine's `page_mode`. Engines that
    `reads_orientation` recognise first: the orientation pass runs only when the reading
    was not upright, and the page is read again only when it had to be turned.

    With `lang=auto` the page's script is found first (`_auto_language`: a line probe,
    else an orientation check whose rotation then stands, with no second pass): the
    page is read in that script's languages, by their engine (OCR_LANG_ENGINES) unless
    the job named one.
    """
    started = time.perf_counter()
    if settings.skip_blank_pages and is_blank(image):
        return blank_page(number, seconds=time.perf_counter() - started)
    options = replace(options, page_number=number)
    script: ScriptFound | None = None
    checked: int | None = None  # the rotation `lang=auto`'s orientation check found
    if options.lang == AUTO_LANG:
        engine, options, script, checked = _auto_language(image, engine, options, settings)
    mode = engine.page_mode or image.mode
    page_image = image if image.mode == mode else image.convert(mode)
    rotation = 0 if checked is None or not settings.auto_rotate else checked
    if settings.auto_rotate and checked is None and not engine.reads_orientation:
        rotation = _orientation(engine, page_image, trial=True)
    skew, final, result = _read(page_image, rotation, engine, options, settings)
    if settings.auto_rotate and checked is None and engine.reads_orientation and \
            not result.upright:
        rotation = _orientation(engine, page_image)
        if rotation:
            skew, final, result = _read(page_image, rotation, engine, options, settings)
    read_size = image.size
    vlm = result.vlm
    fell_back: Fallback | None = None
    found = _ocr_structure(number, final, result, engine, options) if vlm is None else None
    text_layer: TextLayer | None = None
    if vlm is not None:
        if not vlm.complete:
            fallback = settings.vlm_fallback
            reason = vlm.finish_reason
            if fallback == "none":
                return replace(failed_page(number, VlmIncomplete(
                    f"page {number}: the model's read ended with `{reason}` after "
                    f"{vlm.tries} tries, and OCR_VLM_FALLBACK is none")), vlm=vlm)
            try:
                other = engine.peer(fallback)
            except EngineUnavailable as exc:
                raise VlmIncomplete(f"page {number}: the model's read ended with `{reason}`"
                                    f" and the fallback engine {fallback} is unavailable: "
                                    f"{exc.message}") from exc
            full = rerender() if rerender is not None else image
            try:
                fallback_image = _corrected(full, rotation, skew)
                result = other.recognize(fallback_image, options)
                read_size = full.size
                found = _ocr_structure(number, fallback_image, result, other, options)
            finally:
                if full is not image:
                    full.close()
            fell_back = Fallback(engine=fallback, reason=reason)
        elif options.output == "pdf" and not engine.gives_words and engine.text_layer_from:
            result, read_size = _placed_words(result, engine, engine.text_layer_from,
                                              image, rerender, rotation, skew)
            text_layer = TextLayer(boxes=engine.text_layer_from, words=len(result.words))
    page = PageRecord(
        number=number, text=result.text.rstrip(), source="ocr",
        confidence=result.confidence, rotation=rotation, skew=skew.angle,
        seconds=round(time.perf_counter() - started, 3), vlm=vlm, fallback=fell_back,
        text_layer=text_layer, lang=_read_lang(engine, options, settings),
        engine=engine.name, script=script)
    page = with_structure(page, found, options.output)
    if options.output in ("json", "pdf"):
        page = replace(page, image_size=read_size, words=tuple(result.words))
    if options.want_hocr:
        # hOCR boxes are mapped onto the page image as given.
        page = replace(page, image_size=(image.width, image.height),
                       hocr=result.hocr or words_hocr(number, result.words,
                                                      (final.width, final.height)))
    return page


def _ocr_structure(number: int, image: Image.Image, result: PageResult, reader: OcrEngine,
                   options: RecognizeOptions) -> Analysed | LayoutFailed | None:
    """An OCR'd page's structure for output=markdown/json, from the reader's words.

    Found on `image` (the image it read) by the layout analysis of text-layer pages;
    None when there is none to find (other outputs, no words, a reader that writes
    Markdown).
    """
    if options.output not in STRUCTURE_OUTPUTS or reader.gives_markdown or not result.words:
        return None
    doc, scale = ocr_layer_pdf(image, result.words)
    try:
        return analyse(doc, [1], scale, "px")[1]
    finally:
        doc.close()


def with_structure(page: PageRecord, found: Analysed | LayoutFailed | None,
                   output: str) -> PageRecord:
    """The page with its structure: Markdown as its text (markdown), its blocks (json).

    A failed analysis leaves the plain text, with `structure_error` (a page warning).
    """
    if isinstance(found, LayoutFailed):
        return replace(page, structure_error=PageError.from_json(error_info(found)))
    if found is None:
        return page
    if output == "markdown":
        return replace(page, text=found.markdown)
    return replace(page, structure=found.structure)


def _auto_language(image: Image.Image, engine: OcrEngine, options: RecognizeOptions,
                   settings: Settings
                   ) -> tuple[OcrEngine, RecognizeOptions, ScriptFound | None, int | None]:
    """An `auto` page's engine, options (its language set), script, and checked rotation.

    The check (the engine's own or its `orientation_engine`'s) reads a few of the
    page's lines with one language of each script (`script_probes`); only a page no
    probe reads well gets an orientation check (OSD) for its script and rotation, and
    the caller then runs no second one. Engines that take no `lang` (vision-language
    models) read the page as they would without one. The rotation is None when the
    probe found the script or the check could not tell (too little text): the page is
    then turned as it would have been without `auto`.
    """
    if engine.languages(settings) is None:
        return engine, replace(options, lang=None), None, None
    checker = engine
    if engine.orientation_engine is not None:
        try:
            checker = engine.peer(engine.orientation_engine)
        except EngineUnavailable as exc:
            log.warning("no script check for %s: %s", engine.name, exc.message)
    guess = checker.detect_script(
        image, script_probes(settings, type(checker).languages(settings)))
    chosen = page_language(guess, engine.name, options.engine_named, settings)
    reader = engine
    if chosen.engine != engine.name:
        try:
            reader = engine.peer(chosen.engine)
        except EngineUnavailable:  # logged where it failed to load; the job's engine reads
            chosen = page_language(guess, engine.name, True, settings)
    return (reader, replace(options, lang=chosen.lang), chosen.found,
            None if guess is None else guess.rotation)


def _read_lang(engine: OcrEngine, options: RecognizeOptions, settings: Settings) -> str | None:
    """The language set a page was read in: the job's, else the engine's default."""
    if options.named_lang:
        return options.named_lang
    if engine.languages(settings) is None:
        return None  # an engine that takes no `lang`
    return engine.default_language(settings)


def _read(image: Image.Image, rotation: int, engine: OcrEngine, options: RecognizeOptions,
          settings: Settings) -> tuple[Skew, Image.Image, PageResult]:
    """Turn the page by `rotation`, deskew it and recognise it: (skew, final image, result)."""
    upright = Correction(rotation=rotation).apply(image)
    skew = estimate_skew(upright) if settings.deskew else Skew()
    final = Correction(skew=skew.angle, ink=skew.ink).apply(upright)
    return skew, final, engine.recognize(final, options)


def _corrected(image: Image.Image, rotation: int, skew: Skew) -> Image.Image:
    """`image` (the page at any resolution) turned and deskewed as the page was."""
    return Correction(rotation=rotation, skew=skew.angle, ink=skew.ink).apply(image)


def _placed_words(result: PageResult, engine: OcrEngine, boxes_from: str,
                  image: Image.Image, rerender: Render | None, rotation: int,
                  skew: Skew) -> tuple[PageResult, tuple[int, int]]:
    """The read's words on another engine's word boxes (full resolution) for a PDF layer."""
    other = engine.peer(boxes_from)
    full = rerender() if rerender is not None else image
    try:
        boxes = other.recognize(_corrected(full, rotation, skew),
                                RecognizeOptions(output="pdf", want_words=True)).words
        size = full.size
    finally:
        if full is not image:
            full.close()
    return dataclasses.replace(result, words=align_words(result.text, boxes)), size


def _orientation(engine: OcrEngine, image: Image.Image, trial: bool = False) -> int:
    """The page's rotation, by the engine's own check or the one it names.

    With `trial` (a page no reading has looked at yet), a checker whose short trial
    read of a few lines shows the page upright (`reads_upright`) answers 0 without its
    orientation check (tesseract: ~0.05 s instead of OSD's ~0.3 s on a VLM-sized page).
    """
    checker = engine
    if engine.orientation_engine is not None:
        try:
            checker = engine.peer(engine.orientation_engine)
        except EngineUnavailable as exc:
            log.warning("no orientation check for %s: %s", engine.name, exc.message)
            return 0
    if trial and checker.reads_upright(image):
        return 0
    return checker.detect_orientation(image)


def past_deadline(deadline: float | None) -> bool:
    return deadline is not None and time.time() > deadline


def deadline_page(number: int) -> PageRecord:
    return failed_page(number, DeadlineExceeded(f"page {number} was not read before the "
                                                "job's deadline"))


def text_page(number: int, text: str, layer: str) -> PageRecord:
    """A page delivered from its PDF text layer (`visible` text or an `invisible` one)."""
    return PageRecord(number, text.rstrip(), source="text-layer", layer=layer)


def blank_page(number: int, seconds: float = 0.0) -> PageRecord:
    """A page found blank (nothing drawn, or no ink): no text, not a failure."""
    return PageRecord(number, "", source="blank", seconds=round(seconds, 3))


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
    found = analyse(doc, numbers)
    pages = []
    for number in numbers:
        analysed = found.get(number)
        page = with_structure(text_page(number, *texts[number]), analysed, output)
        sizes = analysed.heading_sizes if isinstance(analysed, Analysed) else ()
        pages.append(replace(page, heading_sizes=sizes))
    return pages


def relevel_headings(pages: list[PageRecord], chunks: list[list[int]],
                     output: str) -> list[PageRecord]:
    """`pages` with their headings' levels ranked across all `chunks`; no `heading_sizes`.

    Each chunk ranked its own headings' type sizes (pymupdf4llm's rule); here the same
    rule runs on the sizes of every chunk, and each heading (a Markdown line, or a JSON
    block) moves from its chunk's level to the job's.
    """
    sizes = {p.number: p.heading_sizes for p in pages if p.heading_sizes is not None}
    common = heading_levels(s for found in sizes.values() for s in found)
    local = {number: heading_levels(s for n in chunk for s in sizes.get(n, ()))
             for chunk in chunks for number in chunk}
    out = []
    for page in pages:
        found = sizes.get(page.number)
        if found is None:
            out.append(page)
            continue
        page = replace(page, heading_sizes=None)
        if output == "markdown":
            page = replace(page, text=relevel(page.text, found, local[page.number], common))
        elif page.structure is not None:
            levels = iter(found)
            blocks = tuple(replace(b, level=common(next(levels, 0)))
                           if b.kind in ("title", "section_header") else b
                           for b in page.structure.blocks)
            page = replace(page, structure=replace(page.structure, blocks=blocks))
        out.append(page)
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
        found = analyse(plan.doc, sorted(plan.text_pages))
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
