"""One page's reading strategy: upright, deskewed, in its language, by the right engine.

Runs in worker children, for the document pipeline (tasks/pipeline/documents.py):
`ocr_page` reads one page image (in a whole-document task, or a PDF's page task):
blank check, the script of a `lang=auto` page and the engine for it, orientation,
deskew, recognition, a vision-language read that did not finish handed to the
fallback engine, word boxes for a searchable PDF from another engine, and the page's
structure (`with_structure`) for output=markdown/json. No Celery here.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from tasks import tracing
from tasks.engines import PageResult, RecognizeOptions
from tasks.engines.auto_lang import page_language, script_probes, shown_languages
from tasks.engines.vlm.word_placement import place_words
from tasks.error_codes import error_info
from tasks.errors import EngineUnavailable, LayoutFailed, VlmIncomplete
from tasks.pipeline._preprocess import Correction, Skew, estimate_skew
from tasks.pipeline.blank import is_blank
from tasks.pipeline.layouts import words_hocr
from tasks.pipeline.pdf import ocr_layer_pdf
from tasks.pipeline.previews import page_preview
from tasks.pipeline.results import failed_page
from tasks.pipeline.structure import STRUCTURE_OUTPUTS, Analysed, analyse, layout_threads
from tasks.records.request import AUTO_LANG, WORD_BOX_OUTPUTS
from tasks.records.results import Fallback, PageError, PageRecord, ScriptFound, TextLayer

if TYPE_CHECKING:
    from PIL import Image

    from tasks.engines import OcrEngine
    from tasks.settings import Settings

# Renders the page again at full resolution (OCR_PDF_DPI) for a fallback engine.
Render = Callable[[], "Image.Image"]
log = logging.getLogger(__name__)


def ocr_page(number: int, image: Image.Image, engine: OcrEngine, options: RecognizeOptions,
             settings: Settings, rerender: Render | None = None) -> PageRecord:
    """`read_page` in the span `ocr.read` of the job's trace (where it is traced)."""
    with tracing.span("ocr.read", {"ocr.page": number, "ocr.engine": engine.name}) as span:
        page = read_page(number, image, engine, options, settings, rerender)
        span.set(read_attributes(page))
        return page


def read_attributes(page: PageRecord) -> dict[str, Any]:
    """What the `ocr.read` span says of a read page: its engine, language, VLM read."""
    vlm, fallback = page.vlm, page.fallback
    return {"ocr.engine": page.engine, "ocr.language": page.lang, "ocr.source": page.source,
            "ocr.error": page.error.code if page.error is not None else None,
            "ocr.finish_reason": vlm.finish_reason if vlm is not None else None,
            "ocr.prompt_tokens": vlm.prompt_tokens if vlm is not None else None,
            "ocr.generation_tokens": vlm.generation_tokens if vlm is not None else None,
            "ocr.fallback": fallback.engine if fallback is not None else None,
            "ocr.fallback_reason": fallback.reason if fallback is not None else None}


def read_page(number: int, image: Image.Image, engine: OcrEngine, options: RecognizeOptions,
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
        rotation = _orientation(engine, page_image, trial=True, lang=options.lang)
    skew, final, result = _read(page_image, rotation, engine, options, settings)
    if settings.auto_rotate and checked is None and engine.reads_orientation and \
            not result.upright:
        rotation = _orientation(engine, page_image)
        if rotation:
            skew, final, result = _read(page_image, rotation, engine, options, settings)
    if script is not None and options.lang:
        shown = shown_languages(result.text, options.lang, script, engine.name, settings)
        if shown is not None:  # more languages than its probe saw: read with them all
            options, script = replace(options, lang=shown.lang), shown.found
            result = engine.recognize(final, options)
    read_size = image.size
    vlm = result.vlm
    fell_back: Fallback | None = None
    threads = layout_threads(settings)
    found = _ocr_structure(number, final, result, engine, options, threads) \
        if vlm is None else None
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
                found = _ocr_structure(number, fallback_image, result, other, options,
                                       threads)
            finally:
                if full is not image:
                    full.close()
            fell_back = Fallback(engine=fallback, reason=reason)
        elif options.output in WORD_BOX_OUTPUTS and not engine.gives_words and \
                engine.text_layer_from:
            result, read_size, boxed_size, unplaced = _placed_words(
                result, engine, engine.text_layer_from, image, rerender, rotation, skew)
            text_layer = TextLayer(boxes=engine.text_layer_from, words=len(result.words),
                                   unplaced=unplaced)
    page = PageRecord(
        number=number, text=result.text.rstrip(), source="ocr",
        confidence=result.confidence, rotation=rotation, skew=skew.angle,
        seconds=round(time.perf_counter() - started, 3), vlm=vlm, fallback=fell_back,
        text_layer=text_layer, lang=_read_lang(engine, options, settings),
        engine=engine.name, script=script)
    page = with_structure(page, found, options.output)
    if options.output in ("json", "pdf") or result.words:
        page = replace(page, image_size=read_size, words=tuple(result.words))
    if settings.page_previews:
        page = replace(page, preview=page_preview(final))
    if options.want_hocr and text_layer is not None:
        # Placed words: boxes of the full-resolution page the box engine read, mapped
        # onto that page as given.
        page = replace(page, image_size=read_size,
                       hocr=words_hocr(number, result.words, boxed_size))
    elif options.want_hocr:
        # hOCR boxes are mapped onto the page image as given.
        page = replace(page, image_size=(image.width, image.height),
                       hocr=result.hocr or words_hocr(number, result.words,
                                                      (final.width, final.height)))
    return page


def _ocr_structure(number: int, image: Image.Image, result: PageResult, reader: OcrEngine,
                   options: RecognizeOptions, threads: int | None = None
                   ) -> Analysed | LayoutFailed | None:
    """An OCR'd page's structure for output=markdown/json, from the reader's words.

    Found on `image` (the image it read) by the layout analysis of text-layer pages;
    None when there is none to find (other outputs, no words, a reader that writes
    Markdown).
    """
    if options.output not in STRUCTURE_OUTPUTS or reader.gives_markdown or not result.words:
        return None
    doc, scale = ocr_layer_pdf(image, result.words)
    try:
        return analyse(doc, [1], scale, "px", threads)[1]
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
    models) read the page as they would without one. The rotation is 0 when a probe
    read proved the page upright (no orientation check follows: a Han page that
    rapidocr reads saves its trial read and OSD, ~0.4 s); None when the probe found
    the script less surely or the check could not tell (too little text): the page is
    then turned as it would have been without `auto`.
    """
    if engine.languages(settings) is None:
        return engine, replace(options, lang=None), None, None
    checker = _checker(engine, "script") or engine
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
                  image: Image.Image, rerender: Render | None, rotation: int, skew: Skew
                  ) -> tuple[PageResult, tuple[int, int], tuple[int, int], int]:
    """The read's words on another engine's word boxes (full resolution).

    For a PDF layer, hOCR or ALTO: (the result with the placed words, the size of the
    page as given, the size of the upright deskewed page the boxes are on, the count of
    words the alignment could not place).
    """
    other = engine.peer(boxes_from)
    full = rerender() if rerender is not None else image
    try:
        corrected = _corrected(full, rotation, skew)
        boxes = other.recognize(corrected,
                                RecognizeOptions(output="pdf", want_words=True)).words
        size, boxed_size = full.size, corrected.size
    finally:
        if full is not image:
            full.close()
    words, unplaced = place_words(result.text, boxes)
    return dataclasses.replace(result, words=words), size, boxed_size, unplaced


def _orientation(engine: OcrEngine, image: Image.Image, trial: bool = False,
                 lang: str | None = None) -> int:
    """The page's rotation, by the engine's own check or the one it names.

    With `trial` (a page no reading has looked at yet), a checker whose short trial
    read of a few lines, in `lang` (the set the page is read in), shows the page
    upright (`reads_upright`) answers 0 without its orientation check (tesseract:
    ~0.05 s instead of OSD's ~0.3 s on a VLM-sized page).
    """
    checker = _checker(engine, "orientation")
    if checker is None:
        return 0
    if trial and checker.reads_upright(image, lang):
        return 0
    return checker.detect_orientation(image)


def _checker(engine: OcrEngine, check: str) -> OcrEngine | None:
    """The engine that checks `engine`'s pages: the one it names, else itself.

    None (logged, naming the `check`) when the named engine cannot load.
    """
    if engine.orientation_engine is None:
        return engine
    try:
        return engine.peer(engine.orientation_engine)
    except EngineUnavailable as exc:
        log.warning("no %s check for %s: %s", check, engine.name, exc.message)
        return None


def blank_page(number: int, seconds: float = 0.0) -> PageRecord:
    """A page found blank (nothing drawn, or no ink): no text, not a failure."""
    return PageRecord(number, "", source="blank", seconds=round(seconds, 3))
