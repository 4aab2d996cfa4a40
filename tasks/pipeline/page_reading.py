"""One page's reading: named steps over a page context, run in their order.

Runs in worker children, for the document pipeline (tasks/pipeline/documents.py).
`ocr_page` reads one page image (in a whole-document task, or a PDF's page task).
`read_page` runs `STEPS` over the page's `PageContext`, as OCRmyPDF's page pipeline
runs its steps over a `PageContext`. Each step reads what the steps before it
decided and records its own decision there; each can be run alone. No Celery here.

The steps: a blank page ends the reading (`skip_blank`); `lang=auto` picks the
page's languages and engine (`pick_language`); the page is converted to the engine's
mode (`convert`), turned upright (`orient`, `reorient`), deskewed (`deskew`) and
recognised (`recognise`), read again in more languages where its text shows them
(`widen_language`). A vision-language read that did not finish goes to the fallback
engine (`fall_back`); a finished one gets another engine's word boxes for a
searchable PDF (`box_words`). The page's structure is found for output=markdown/json
(`find_structure`), its record made (`make_record`), its preview drawn (`preview`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
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
from tasks.records.results import (
    Fallback,
    PageError,
    PageRecord,
    ScriptFound,
    TextLayer,
    VlmRead,
)

if TYPE_CHECKING:
    from PIL import Image

    from tasks.engines import OcrEngine
    from tasks.settings import Settings

# Renders the page again at full resolution (OCR_PDF_DPI) for a fallback engine.
Render = Callable[[], "Image.Image"]
log = logging.getLogger(__name__)


@dataclass
class PageContext:
    """One page being read: what it was given, and what each step decided.

    The page's time (`seconds`) is taken by the step that makes its record. Its
    warnings are the decisions steps record: `script` (`pick_language`), `fallback`
    (`fall_back`), a failed analysis in `found` (`find_structure`).
    """

    number: int
    image: Image.Image  # the page as given
    engine: OcrEngine  # the job's; `pick_language` may choose another for an `auto` page
    options: RecognizeOptions  # the page's, with its `page_number`
    settings: Settings
    rerender: Render | None = None
    # Images a step opened (a full-resolution render): closed once the page is read.
    held: ExitStack = field(default_factory=ExitStack)
    started: float = field(default_factory=time.perf_counter)
    # `lang=auto`: what the page's script check found, and the rotation it proved.
    script: ScriptFound | None = None
    checked: int | None = None
    rotation: int = 0  # counter-clockwise degrees that put the page upright
    skew: Skew = field(default_factory=Skew)
    result: PageResult | None = None  # the reading: the engine's, or the fallback's
    vlm: VlmRead | None = None  # the engine's vision-language read, kept past a fallback
    fallback: Fallback | None = None
    text_layer: TextLayer | None = None
    boxed_size: tuple[int, int] | None = None  # the page the placed words' boxes are on
    found: Analysed | LayoutFailed | None = None  # the structure of an OCR'd page
    record: PageRecord | None = None
    ended: bool = False  # a step ended the reading with its `record`
    # The page in the engine's mode; the upright deskewed image the engine read; the
    # engine whose `result` it is and the image that one read; the size of the page
    # as given that `result`'s words are on.
    page_image: Image.Image = field(init=False)
    final: Image.Image = field(init=False)
    reader: OcrEngine = field(init=False)
    read_image: Image.Image = field(init=False)
    read_size: tuple[int, int] = field(init=False)

    def __post_init__(self) -> None:
        self.options = replace(self.options, page_number=self.number)
        self.page_image = self.final = self.read_image = self.image
        self.reader = self.engine
        self.read_size = self.image.size

    @property
    def read(self) -> PageResult:
        """The page's reading, once `recognise` ran."""
        assert self.result is not None, f"page {self.number} is not recognised yet"
        return self.result

    @property
    def page(self) -> PageRecord:
        """The page's record, once `make_record` (or a step that ended the reading) ran."""
        assert self.record is not None, f"page {self.number} has no record yet"
        return self.record

    def elapsed(self) -> float:
        """Seconds since the page's reading started."""
        return time.perf_counter() - self.started

    def end(self, record: PageRecord) -> None:
        """End the reading with `record`: no step after this one runs."""
        self.record, self.ended = record, True

    def full_page(self) -> Image.Image:
        """The page at full resolution: rendered again where it can be, else as given.

        A render is closed once the page is read.
        """
        full = self.rerender() if self.rerender is not None else self.image
        if full is not self.image:
            self.held.callback(full.close)
        return full


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
    """The page read by `STEPS`, in their order, until one ends it; raises OcrError.

    `rerender` gives the page at full resolution when `image` was rendered at the
    engine's page budget (for `fall_back` and `box_words`).
    """
    with ExitStack() as held:
        page = PageContext(number, image, engine, options, settings, rerender, held)
        for step in STEPS:
            step(page)
            if page.ended:
                break
        return page.page


def skip_blank(page: PageContext) -> None:
    """A blank page (`tasks.pipeline.blank`) ends the reading as such, without OCR."""
    if page.settings.skip_blank_pages and is_blank(page.image):
        page.end(blank_page(page.number, seconds=page.elapsed()))


def pick_language(page: PageContext) -> None:
    """An `auto` page's languages and engine, from its script (`_auto_language`).

    The page is read in its script's languages, by their engine (OCR_LANG_ENGINES)
    unless the job named one. The rotation the script check proved (`checked`) then
    stands: no second orientation check follows.
    """
    if page.options.lang == AUTO_LANG:
        page.engine, page.options, page.script, page.checked = _auto_language(
            page.image, page.engine, page.options, page.settings)


def convert(page: PageContext) -> None:
    """The page in its engine's `page_mode`, converted once."""
    mode = page.engine.page_mode or page.image.mode
    if page.image.mode != mode:
        page.page_image = page.image.convert(mode)


def orient(page: PageContext) -> None:
    """The page's rotation before it is read (OCR_AUTO_ROTATE).

    The rotation `pick_language`'s check proved, else, for an engine that does not
    `reads_orientation`, its orientation check's (`_orientation`, with a trial read).
    An engine that reads orientation is read first (`reorient`).
    """
    if not page.settings.auto_rotate:
        return
    if page.checked is not None:
        page.rotation = page.checked
    elif not page.engine.reads_orientation:
        page.rotation = _orientation(page.engine, page.page_image, trial=True,
                                     lang=page.options.lang)


def deskew(page: PageContext) -> None:
    """The page turned by its rotation, then deskewed (OCR_DESKEW): the image read."""
    upright = Correction(rotation=page.rotation).apply(page.page_image)
    page.skew = estimate_skew(upright) if page.settings.deskew else Skew()
    page.final = Correction(skew=page.skew.angle, ink=page.skew.ink).apply(upright)


def recognise(page: PageContext) -> None:
    """The engine's reading of the upright deskewed page, in the page's languages."""
    page.result = page.engine.recognize(page.final, page.options)
    page.vlm = page.result.vlm
    page.reader, page.read_image = page.engine, page.final


def reorient(page: PageContext) -> None:
    """A page an engine that `reads_orientation` did not read upright: turned, read again.

    The orientation check runs only then, and the page is read again only when it
    had to be turned.
    """
    if not page.settings.auto_rotate or page.checked is not None or \
            not page.engine.reads_orientation or page.read.upright:
        return
    page.rotation = _orientation(page.engine, page.page_image)
    if page.rotation:
        deskew(page)
        recognise(page)


def widen_language(page: PageContext) -> None:
    """An `auto` page whose text shows more languages than its probe saw: read with all."""
    if page.script is None or not page.options.lang:
        return
    shown = shown_languages(page.read.text, page.options.lang, page.script,
                            page.engine.name, page.settings)
    if shown is not None:
        page.options, page.script = replace(page.options, lang=shown.lang), shown.found
        recognise(page)


def fall_back(page: PageContext) -> None:
    """A vision-language read that did not finish is never the page's text.

    Another engine (OCR_VLM_FALLBACK) reads the page at full resolution, turned and
    deskewed as the page was; with none, the page fails with `vlm_incomplete`.
    """
    vlm, number = page.vlm, page.number
    if vlm is None or vlm.complete:
        return
    fallback, reason = page.settings.vlm_fallback, vlm.finish_reason
    if fallback == "none":
        page.end(replace(failed_page(number, VlmIncomplete(
            f"page {number}: the model's read ended with `{reason}` after "
            f"{vlm.tries} tries, and OCR_VLM_FALLBACK is none")), vlm=vlm))
        return
    try:
        other = page.engine.peer(fallback)
    except EngineUnavailable as exc:
        raise VlmIncomplete(f"page {number}: the model's read ended with `{reason}`"
                            f" and the fallback engine {fallback} is unavailable: "
                            f"{exc.message}") from exc
    full = page.full_page()
    image = _corrected(full, page.rotation, page.skew)
    page.result = other.recognize(image, page.options)
    page.reader, page.read_image, page.read_size = other, image, full.size
    page.fallback = Fallback(engine=fallback, reason=reason)


def box_words(page: PageContext) -> None:
    """A finished vision-language read's words on another engine's word boxes.

    For a PDF layer, hOCR or ALTO, from an engine that gives no words but names one
    that does (`text_layer_from`): its boxes of the page at full resolution, turned
    and deskewed as the page was, take the read's words (`place_words`).
    """
    vlm, engine = page.vlm, page.engine
    if vlm is None or not vlm.complete or page.options.output not in WORD_BOX_OUTPUTS \
            or engine.gives_words or not engine.text_layer_from:
        return
    other = engine.peer(engine.text_layer_from)
    full = page.full_page()
    corrected = _corrected(full, page.rotation, page.skew)
    boxes = other.recognize(corrected, RecognizeOptions(output="pdf", want_words=True)).words
    words, unplaced = place_words(page.read.text, boxes)
    page.result = dataclasses.replace(page.read, words=words)
    page.read_size, page.boxed_size = full.size, corrected.size
    page.text_layer = TextLayer(boxes=engine.text_layer_from, words=len(words),
                                unplaced=unplaced)


def find_structure(page: PageContext) -> None:
    """An OCR'd page's structure for output=markdown/json (`_ocr_structure`).

    Found on the image its reader read: the engine's, or the fallback engine's. A
    vision-language read that finished has none to find.
    """
    if page.vlm is not None and page.fallback is None:
        return
    page.found = _ocr_structure(page.number, page.read_image, page.read, page.reader,
                                page.options, layout_threads(page.settings))


def make_record(page: PageContext) -> None:
    """The page's record: its text, what the steps decided, its time, words and hOCR."""
    result, options, number = page.read, page.options, page.number
    record = PageRecord(
        number=number, text=result.text.rstrip(), source="ocr",
        confidence=result.confidence, rotation=page.rotation, skew=page.skew.angle,
        seconds=round(page.elapsed(), 3), vlm=page.vlm, fallback=page.fallback,
        text_layer=page.text_layer, lang=_read_lang(page.engine, options, page.settings),
        engine=page.engine.name, script=page.script)
    record = with_structure(record, page.found, options.output)
    if options.output in ("json", "pdf") or result.words:
        record = replace(record, image_size=page.read_size, words=tuple(result.words))
    if options.want_hocr and page.boxed_size is not None:
        # Placed words: boxes of the full-resolution page the box engine read, mapped
        # onto that page as given.
        record = replace(record, image_size=page.read_size,
                         hocr=words_hocr(number, result.words, page.boxed_size))
    elif options.want_hocr:
        # hOCR boxes are mapped onto the page image as given.
        record = replace(record, image_size=page.image.size,
                         hocr=result.hocr or words_hocr(number, result.words,
                                                        page.final.size))
    page.record = record


def preview(page: PageContext) -> None:
    """The page's preview (OCR_PAGE_PREVIEWS): the image the engine read, made small."""
    if page.settings.page_previews:
        page.record = replace(page.page, preview=page_preview(page.final))


Step = Callable[[PageContext], None]
STEPS: tuple[Step, ...] = (skip_blank, pick_language, convert, orient, deskew, recognise,
                           reorient, widen_language, fall_back, box_words, find_structure,
                           make_record, preview)


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
    `orient` then runs no second one. Engines that take no `lang` (vision-language
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
        image, script_probes(settings, checker.languages(settings)))
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


def _corrected(image: Image.Image, rotation: int, skew: Skew) -> Image.Image:
    """`image` (the page at any resolution) turned and deskewed as the page was."""
    return Correction(rotation=rotation, skew=skew.angle, ink=skew.ink).apply(image)


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
