"""PDF inputs and outputs through PyMuPDF: the only module that imports `pymupdf`.

Runs in worker children: opens a PDF from bytes (encryption, damage and page limits
checked), decides per page between its text layer and OCR, renders pages for OCR, and
writes searchable PDFs (the original pages with an invisible text layer), and builds
an OCR'd page's own one-page PDF for PyMuPDF's layout analysis (`ocr_layer_pdf`; the
analysis itself is tasks/pipeline/structure.py's, through pymupdf4llm).
"""

from __future__ import annotations

import itertools
import math
import re
import statistics
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pymupdf
from PIL import Image, ImageChops

from tasks.engines.textfix import is_cjk
from tasks.errors import CorruptInput, NoPages, PdfEncrypted, TooManyPages
from tasks.pipeline._geometry import to_input
from tasks.pipeline._lang_tags import main_tag, page_tag
from tasks.pipeline.blank import CHECK_LONGEST_SIDE, ink_report
from tasks.pipeline.pages import select_pages
from tasks.records.results import PageRecord, WordBox

if TYPE_CHECKING:
    from collections.abc import Callable

    from tasks.settings import Settings

INVISIBLE = 3  # PDF text render mode 3: neither filled nor stroked (OCR layers)
# What MuPDF raises on a damaged page (its own errors, and RuntimeError/ValueError).
_MUPDF_ERRORS = (RuntimeError, ValueError, pymupdf.mupdf.FzErrorBase)
PLAN_CHECK_MAX_IMAGE_BYTES = 256 * 1024
"""Text-free pages whose images hold at most this many compressed bytes are rendered
small and checked for ink while planning (blank scans compress to a few KB, decoding
them is quick); pages with more image data are checked after their full render, in
their page task (`documents.ocr_page`), so planning never decodes big scans."""


@dataclass
class PdfPlan:
    """Which selected pages come from their text layer and which need OCR."""

    doc: Any
    page_count: int
    selected: int
    decrypted: bytes | None = None  # the unencrypted copy `doc` reads, for an encrypted PDF
    text_pages: dict[int, tuple[str, str]] = field(default_factory=dict)
    ocr_pages: list[int] = field(default_factory=list)
    blank_pages: list[int] = field(default_factory=list)

    @property
    def encrypted(self) -> bool:
        return self.decrypted is not None


def empty_store() -> None:
    """Empty MuPDF's resource store (fonts, decoded images), after each task.

    The store keeps them across documents, up to 256 MB a process; no two tasks share
    a document, so what it kept only grew the pool child (~0.1 MB a PDF job in the
    soak of tests/test_soak_pdfs.py).
    """
    pymupdf.TOOLS.store_shrink(100)


def ocr_layer_pdf(image: Image.Image, words: tuple[WordBox, ...]) -> tuple[Any, float]:
    """A one-page PDF of an OCR'd page for the layout analysis, and its points per pixel.

    The page is the image OCR read (upright, deskewed), scaled to a Letter page's long
    side (792 pt) and drawn in grey at 72 dpi (what the analysis renders), with the
    OCR's words as invisible text: each run of a line (`_runs`) written once, stretched
    from its first word's box to its last's, so headings, columns and tables are found
    as on a text page. One text object a run, not a word: the analysis of a 1,250-word
    page then took 2.0 s instead of 3.0 s (a loaded 2-core machine), the same blocks.
    """
    scale = 792 / max(image.width, image.height, 1)
    page_width, page_height = image.width * scale, image.height * scale
    doc = pymupdf.open()
    page = doc.new_page(width=page_width, height=page_height)
    # reducing_gap: shrink by whole factors first (Pillow: at 3, indistinguishable from
    # a fair resampling), a third of the time of a plain resize of a 300-dpi page
    small = image.convert("L").resize((max(1, round(page_width)), max(1, round(page_height))),
                                      reducing_gap=3.0)
    page.insert_image(page.rect, pixmap=pymupdf.Pixmap(
        pymupdf.csGRAY, small.width, small.height, small.tobytes(), False))
    rects = [(w.text, pymupdf.Rect(w.box) * scale) for w in words]
    shape = page.new_shape()  # one content stream for all runs (commit is per call)
    inserted: set[str] = set()
    advances: dict[tuple[str, str], float] = {}  # Font.text_length a character, once
    for _, _, run in sorted(_runs(rects, words)):
        # OCR boxes hug the ink: the tallest word (ascender to descender) is about the
        # type size, the most common bottom the baseline's neighbourhood.
        size = max(1.0, max(rect.height for _, rect in run))
        bottom = statistics.median(rect.y1 for _, rect in run)
        text = run[0][0]
        for (before, _), (word, _) in itertools.pairwise(run):
            # a space between words, none between two CJK words (as tesseract writes them)
            text += word if is_cjk(before[-1]) and is_cjk(word[0]) else " " + word
        name, font = _font_for(text)
        if name not in inserted:
            page.insert_font(fontname=name, fontbuffer=font.buffer)
            inserted.add(name)
        left, right = run[0][1].x0, run[-1][1].x1
        for ch in text:
            if (name, ch) not in advances:
                advances[name, ch] = font.text_length(ch, fontsize=1)
        length = sum(advances[name, ch] for ch in text) * size
        stretch = max(right - left, 1.0) / length if length else 1.0
        origin = pymupdf.Point(left, bottom - size * 0.15)
        shape.insert_text(origin, text, fontsize=size, fontname=name, render_mode=INVISIBLE,
                          morph=(origin, pymupdf.Matrix(stretch, 1)))
    shape.commit()
    return doc, scale


def open_pdf(data: bytes, password: str | None, settings: Settings) -> Any:
    """An open, authenticated document with a sane page count.

    MuPDF repairs recoverable damage (a broken xref table) while opening.
    """
    try:
        doc = pymupdf.open(stream=data, filetype="pdf")
    except (pymupdf.FileDataError, RuntimeError, ValueError) as exc:
        raise CorruptInput(f"the PDF could not be opened ({type(exc).__name__})") from None
    try:
        if doc.needs_pass:
            if not password:
                raise PdfEncrypted("the PDF is encrypted; pass its password")
            if not doc.authenticate(password):
                raise PdfEncrypted("the password does not open this PDF")
        try:
            count = doc.page_count
        except RuntimeError:
            raise CorruptInput("the PDF's page tree is invalid (it claims an impossible "
                               "number of pages)") from None
        if count == 0 and doc.is_repaired:
            raise CorruptInput("the PDF is damaged (truncated?) and no page could be "
                               "recovered")
        if count == 0:
            raise NoPages("the PDF has no pages")
        if count > settings.max_pages:
            raise TooManyPages(f"the PDF has {count} pages, the limit is {settings.max_pages}")
    except BaseException:
        doc.close()
        raise
    return doc


def decrypted_bytes(data: bytes, password: str | None, settings: Settings) -> bytes:
    """The encrypted PDF `data`, opened with `password`, copied into an unencrypted one.

    Page tasks read this copy, so the password never has to be stored. The copy is made
    from a freshly opened document: MuPDF 1.28 writes broken content streams for an
    encrypted document whose pages were already read.
    """
    source = open_pdf(data, password, settings)
    copy = pymupdf.open()
    try:
        copy.insert_pdf(source)
        return bytes(copy.tobytes(garbage=3, deflate=True))
    finally:
        copy.close()
        source.close()


def check_password(data: bytes, password: str | None, settings: Settings) -> None:
    """Raise `pdf_encrypted` unless `password` opens the PDF `data`."""
    open_pdf(data, password, settings).close()


# How MuPDF marks each extracted character: drawn (filled or stroked; neither for text
# render mode 3, the invisible OCR layers), a clip path only (render modes 4-7: not text
# the page shows, and not counted, as `get_texttrace` never reported it), or synthetic
# (a space MuPDF put between words, which the PDF never drew: not counted either).
_INKED = pymupdf.mupdf.FZ_STEXT_FILLED | pymupdf.mupdf.FZ_STEXT_STROKED
_NOT_COUNTED = pymupdf.mupdf.FZ_STEXT_SYNTHETIC | pymupdf.mupdf.FZ_STEXT_CLIPPED


@dataclass(frozen=True)
class TextLayer:
    """A page's text layer, read in one pass of MuPDF's text extraction.

    `visible` and `invisible` count the characters the PDF draws (counting stops once
    `visible` reaches the `enough` it was read with); `text` is exactly what
    `page.get_text("text")` gives.
    """

    textpage: Any
    visible: int
    invisible: int

    @property
    def text(self) -> str:
        return str(self.textpage.extractText())


def read_text_layer(page: Any, enough: int | None = None) -> TextLayer:
    """Build the page's text once (`get_text`'s own flags) and count its characters.

    One pass over the content stream serves both the decision (visible text, an
    invisible OCR layer, none) and the text. A character is invisible when it is
    neither filled nor stroked, or fully transparent. With `enough`, counting stops as
    soon as that many visible characters are found: a born-digital page is decided on
    its first line, not on its every character. The counts are those
    `page.get_texttrace()` gave (planning's former first pass, measured equal on the
    corpus) but for characters outside the page's media box, which are not extracted
    (the texttrace counted them: a "text" page with no text), and text both filled and
    stroked, counted once (the texttrace counted it twice).
    """
    textpage = page.get_textpage(flags=pymupdf.TEXTFLAGS_TEXT)
    visible = invisible = 0
    for block in textpage.this:
        if block.m_internal.type != pymupdf.mupdf.FZ_STEXT_BLOCK_TEXT:
            continue
        for line in block:
            char = line.m_internal.first_char  # MuPDF's own list: no wrapper per char
            while char is not None:
                flags = char.flags
                if not flags & _NOT_COUNTED:
                    if flags & _INKED and char.argb >> 24:
                        visible += 1
                    else:
                        invisible += 1
                char = char.next
            if enough is not None and visible >= enough:
                return TextLayer(textpage, visible, invisible)
    return TextLayer(textpage, visible, invisible)


def text_chars(page: Any) -> tuple[int, int]:
    """(visible, invisible) characters of the page's text layer."""
    layer = read_text_layer(page)
    return layer.visible, layer.invisible


def plan_pdf(data: bytes, pages: str | None, password: str | None, mode: str,
             settings: Settings) -> PdfPlan:
    """Open the PDF and sort its selected pages into text-layer, blank and OCR pages.

    `auto`: a page with visible text, or an existing invisible OCR layer, keeps its
    text; other pages get OCR. `ocr`: every page gets OCR. `text`: no OCR at all.
    Pages that would get OCR but are blank (`page_is_blank`) are listed in
    `blank_pages` instead, when OCR_SKIP_BLANK_PAGES is on. Each page's text is read in
    one pass (`read_text_layer`), which both decides and gives the text.
    """
    doc = open_pdf(data, password, settings)
    decrypted = None
    if doc.needs_pass:
        # Read an unencrypted copy: MuPDF 1.28 misreads some encrypted content streams
        # once a page was inspected (empty pages, zlib errors).
        doc.close()
        decrypted = decrypted_bytes(data, password, settings)
        doc = open_pdf(decrypted, None, settings)
    numbers = select_pages(pages, doc.page_count, settings.max_pages)
    plan = PdfPlan(doc, doc.page_count, len(numbers), decrypted=decrypted)
    for number in numbers:
        page = doc[number - 1]
        if mode == "ocr":
            if settings.skip_blank_pages and page_is_blank(page):
                plan.blank_pages.append(number)
            else:
                plan.ocr_pages.append(number)
            continue
        found = read_text_layer(page, enough=settings.pdf_min_text_chars)
        visible, invisible = found.visible, found.invisible
        layer = "visible" if visible >= settings.pdf_min_text_chars else "invisible"
        if mode == "text" or max(visible, invisible) >= settings.pdf_min_text_chars:
            plan.text_pages[number] = (found.text, layer)
        elif settings.skip_blank_pages and visible + invisible == 0 and page_is_blank(page):
            plan.blank_pages.append(number)
        else:
            plan.ocr_pages.append(number)
    return plan


def text_layer_page(doc: Any, number: int, settings: Settings) -> tuple[str, str]:
    """A text-layer page's text and layer (`visible` or `invisible`), as `plan_pdf` saw it."""
    found = read_text_layer(doc[number - 1], enough=settings.pdf_min_text_chars)
    layer = "visible" if found.visible >= settings.pdf_min_text_chars else "invisible"
    return found.text, layer


def page_is_blank(page: Any) -> bool:
    """Whether a page draws nothing an OCR engine could read.

    Not blank when it has any text (visible or not). Blank without rendering when its
    content paints nothing at all (MuPDF's bbox log of the page is empty: no text,
    path, image, inline image or shading) and it has no annotation; else decided on a
    small render checked for ink when its images are small
    (`PLAN_CHECK_MAX_IMAGE_BYTES`); otherwise False for now: the page task checks the
    full render before OCR.
    """
    try:
        if any(text_chars(page)):
            return False
        if not page.get_bboxlog() and not page.annot_xrefs():
            return True
        doc = page.parent
        image_bytes = sum(len(doc.xref_stream_raw(image[0]) or b"")
                          for image in page.get_images(full=True))
        if image_bytes > PLAN_CHECK_MAX_IMAGE_BYTES:
            return False
        return ink_report(render_small(page)).blank
    except _MUPDF_ERRORS:
        return False  # a damaged page: its page task reports what is wrong with it


def render_small(page: Any, longest_side: int = CHECK_LONGEST_SIDE) -> Image.Image:
    """The page in greyscale, its longest side `longest_side` pixels (for checks)."""
    zoom = longest_side / max(page.rect.width, page.rect.height, 1)
    pix = page.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), colorspace=pymupdf.csGRAY,
                          alpha=False)
    return Image.frombytes("L", (pix.width, pix.height), pix.samples)


def render_page(doc: Any, number: int, settings: Settings,
                longest_side: int | None = None, *, mode: str | None = None,
                fit: Callable[[int, int], tuple[int, int]] | None = None) -> Image.Image:
    """Page `number` as an image at OCR_PDF_DPI, within OCR_MAX_RENDER_PIXELS.

    With `longest_side` (an engine's page budget, e.g. a VLM's 1288 px), rendered
    directly at that size when it is below OCR_PDF_DPI's. `mode` "L" renders grey (the
    tesseract engine's `page_mode`: MuPDF writes a third of the bytes and no conversion
    follows, 0.07-0.15 s less per 300-dpi page); RGB otherwise, except a page that holds
    no colour, which comes back grey ("L": a third of the memory while a vlm-api page
    waits at its server, and less to deskew and encode; the VLMs' image loaders make
    RGB of it as of a grey file). Huge pages are read at a lower resolution, not refused.
    `fit` (an engine's `page_size`) gives the exact size the engine takes a page of that
    size at (a VLM's patch grid): the page is rendered at it, not resized after.
    """
    page = doc[number - 1]
    zoom = render_zoom(page.rect, settings, longest_side)
    matrix = pymupdf.Matrix(zoom, zoom)
    if fit is not None and page.rect.width > 0 and page.rect.height > 0:
        size = round(page.rect.width * zoom), round(page.rect.height * zoom)
        width, height = fit(*size)
        if (width, height) != size:
            matrix = pymupdf.Matrix(width / page.rect.width, height / page.rect.height)
    grey = mode == "L"
    pix = page.get_pixmap(matrix=matrix,
                          colorspace=pymupdf.csGRAY if grey else pymupdf.csRGB, alpha=False)
    image = Image.frombytes("L" if grey else "RGB", (pix.width, pix.height), pix.samples)
    del pix
    return image if grey or not _colourless(image) else image.getchannel(0)


def _colourless(image: Image.Image) -> bool:
    """Whether every pixel of an RGB image is grey (its three bands alike)."""
    red, green, blue = image.split()
    return ImageChops.difference(red, green).getbbox() is None and \
        ImageChops.difference(green, blue).getbbox() is None


def render_zoom(rect: Any, settings: Settings, longest_side: int | None = None) -> float:
    """Pixels per PDF point of a page rendered for OCR (`render_page`)."""
    zoom = settings.pdf_dpi / 72
    if longest_side is not None and max(rect.width, rect.height) > 0:
        zoom = min(zoom, longest_side / max(rect.width, rect.height))
    pixels = rect.width * zoom * rect.height * zoom
    if pixels > settings.max_render_pixels:
        # MuPDF rounds each side up: leave room for that, the cap must hold.
        zoom *= math.sqrt(settings.max_render_pixels / pixels) * 0.998
    return zoom


def text_layer_words(doc: Any, number: int, settings: Settings
                     ) -> tuple[tuple[int, int], tuple[WordBox, ...]]:
    """The size and words of page `number`'s text layer, in OCR'd pages' coordinates.

    Pixels of the page rendered at OCR_PDF_DPI (as `render_page` renders it for OCR;
    issue 26): PyMuPDF's words, in points of the unrotated page, are turned with the
    page and scaled. Confidence 100: the text is the PDF's own.
    """
    page = doc[number - 1]
    zoom = render_zoom(page.rect, settings)
    # the size MuPDF gives a pixmap of this zoom (each side rounded up)
    size = (math.ceil(page.rect.width * zoom - 1e-6), math.ceil(page.rect.height * zoom - 1e-6))
    turn = page.rotation_matrix * pymupdf.Matrix(zoom, zoom)
    words = []
    for x0, y0, x1, y1, text, *_ in page.get_text("words"):
        rect = (pymupdf.Rect(x0, y0, x1, y1) * turn).normalize()
        box = (max(0, math.floor(rect.x0)), max(0, math.floor(rect.y0)),
               min(size[0], math.ceil(rect.x1)), min(size[1], math.ceil(rect.y1)))
        if text.strip() and box[2] > box[0] and box[3] > box[1]:
            words.append(WordBox(text, box, 100.0))
    return size, tuple(words)


def word_rects(page: PageRecord, page_rect: Any) -> list[tuple[str, Any]]:
    """Each word of an OCR page result as (text, rectangle in PDF points)."""
    assert page.image_size is not None
    width, height = page.image_size
    mapped = to_input((width, height), page.rotation or 0, page.skew or 0.0)
    sx, sy = page_rect.width / width, page_rect.height / height
    out = []
    for word in page.words or ():
        x0, y0, x1, y1 = mapped(word.box)
        out.append((word.text, pymupdf.Rect(x0 * sx, y0 * sy, x1 * sx, y1 * sy)))
    return out


# Fonts of the invisible text layer, embedded (subset) so that every character maps back
# to Unicode: Noto Sans (pymupdf-fonts; Latin incl. Vietnamese, Greek, Cyrillic) and
# Droid Sans Fallback (built into PyMuPDF; CJK, and the punctuation CJK text uses).
_TEXT_FONTS = (("ocrsans", "notos"), ("ocrcjk", "cjk"))
_fonts: dict[str, Any] = {}


def _font(code: str) -> Any:
    if code not in _fonts:
        _fonts[code] = pymupdf.Font(code)
    return _fonts[code]


def _font_for(text: str) -> tuple[str, Any]:
    """The first text font that has a glyph for every character of `text`."""
    for name, code in _TEXT_FONTS:
        font = _font(code)
        if all(font.has_glyph(ord(ch)) for ch in text):
            return name, font
    name, code = _TEXT_FONTS[0]
    return name, _font(code)


def _lines(rects: list[tuple[str, Any]], words: tuple[WordBox, ...]
           ) -> list[list[tuple[str, Any]]]:
    """Words (text, PDF rect) grouped into lines by their boxes in the OCR'd image.

    Boxes in the upright, deskewed image OCR read are level: a word whose vertical
    middle lies inside the first word of the current line joins that line. Empty words
    are dropped.
    """
    lines: list[list[tuple[str, Any]]] = []
    top = bottom = 0
    for (text, rect), word in zip(rects, words, strict=True):
        text = text.strip()
        if not text or rect.is_empty:
            continue
        _, y0, _, y1 = word.box
        middle = (y0 + y1) / 2
        if lines and top <= middle <= bottom:
            lines[-1].append((text, rect))
        else:
            lines.append([(text, rect)])
            top, bottom = y0, y1
    return lines


def _runs(rects: list[tuple[str, Any]], words: tuple[WordBox, ...]
          ) -> list[tuple[int, int, list[tuple[str, Any]]]]:
    """Each OCR line cut where a gap wider than its height parts its words.

    Such gaps part columns that OCR read as one line; each run is (its index within its
    line, the line's index, its words).

    Sorted, all lines' first runs come first: the text of two columns read across is
    written column after column, the order the layout analysis reads a text page in.
    """
    runs = []
    for number, line in enumerate(_lines(rects, words)):
        height = sum(rect.height for _, rect in line) / len(line)
        current = [line[0]]
        index = 0
        for previous, word in itertools.pairwise(line):
            if word[1].x0 - previous[1].x1 > height:
                runs.append((index, number, current))
                current, index = [], index + 1
            current.append(word)
        runs.append((index, number, current))
    return runs


def searchable_pdf(data: bytes, fmt: str, password: str | None,
                   pages: list[PageRecord], settings: Settings) -> tuple[bytes, dict[str, int]]:
    """The input as a PDF whose OCR'd pages carry an invisible, selectable text layer.

    Returned with what `strip_active_content` took out of it (the service never returns
    a PDF that runs anything).

    Each word is written on its box in an embedded Unicode font (subset on save), so
    extracting the text gives back the OCR text, `’`, Vietnamese, Greek and CJK
    included; the gaps between word boxes read back as spaces.
    """
    if fmt == "pdf":
        doc = open_pdf(data, password, settings)
    else:
        with pymupdf.open(stream=data) as image_doc:
            doc = pymupdf.open("pdf", image_doc.convert_to_pdf())
    try:
        for result in pages:
            if result.source != "ocr" or result.words is None or result.image_size is None:
                continue
            page = doc[result.number - 1]
            if text_chars(page)[1]:
                # An old OCR layer is replaced, not doubled: remove text, keep images.
                page.add_redact_annot(page.rect)
                page.apply_redactions(
                    images=pymupdf.PDF_REDACT_IMAGE_NONE,  # type: ignore[attr-defined]
                    graphics=pymupdf.PDF_REDACT_LINE_ART_NONE)  # type: ignore[attr-defined]
            inserted: set[str] = set()
            for line in _lines(word_rects(result, page.rect), result.words):
                # One baseline and size per OCR line: extraction reads it as one line.
                bottom = sum(rect.y1 for _, rect in line) / len(line)
                height = sum(rect.height for _, rect in line) / len(line)
                size = max(1.0, height * 0.85)
                for index, (text, rect) in enumerate(line):
                    following = line[index + 1] if index + 1 < len(line) else None
                    # Never past the next word (tesseract's CJK boxes can overlap): text
                    # running backwards would read as a new line.
                    right = min(rect.x1, following[1].x0) if following else rect.x1
                    name, font = _font_for(text)
                    if name not in inserted:
                        page.insert_font(fontname=name, fontbuffer=font.buffer)
                        inserted.add(name)
                    width = font.text_length(text, fontsize=size)
                    scale = max(right - rect.x0, 1.0) / width if width else 1.0
                    if following and not (is_cjk(text[-1]) and is_cjk(following[0][0])):
                        text += " "  # a real space between words, as tesseract writes it
                    origin = pymupdf.Point(rect.x0, bottom - height * 0.15)
                    page.insert_text(origin, text, fontsize=size, fontname=name,
                                     render_mode=INVISIBLE,
                                     morph=(origin, pymupdf.Matrix(scale, 1)))
        # The catalog's /Lang: the language most OCR'd pages were read in (a PDF page
        # has no /Lang of its own, and PyMuPDF writes no marked-content /Lang).
        language = main_tag(page_tag(p.lang) for p in pages if p.source == "ocr")
        if language is not None:
            doc.set_language(language)
        removed = strip_active_content(doc)
        doc.subset_fonts()
        return bytes(doc.tobytes(garbage=3, deflate=True)), removed
    finally:
        doc.close()


# Action types an output PDF keeps: a jump inside the document runs nothing.
_INERT_ACTIONS = ("/GoTo",)
_NULLED_KEY = re.compile(r"/(?:OpenAction|AA|A|JavaScript|EmbeddedFiles|XFA)\s*null\b")


def strip_active_content(doc: Any) -> dict[str, int]:
    """Take out of `doc` whatever could run or carry a payload; what was removed, counted.

    JavaScript (the name tree and every action), the document's OpenAction and every
    additional-actions (`/AA`) dictionary (document, pages, annotations, form fields),
    every annotation, link or outline action other than a jump inside the document
    (Launch, URI, SubmitForm, ImportData, GoToR, ...), embedded files and file
    attachments, and XFA forms. The keys are deleted from their objects, and the
    objects left unreferenced go when the document is saved with garbage collection.
    """
    removed: dict[str, int] = {}
    touched: set[int] = set()

    def drop(xref: int, key: str, kind: str, n: int = 1) -> None:
        doc.xref_set_key(xref, key, "null")
        touched.add(xref)
        removed[kind] = removed.get(kind, 0) + n

    for name in doc.embfile_names():
        doc.embfile_del(name)
        removed["embedded_files"] = removed.get("embedded_files", 0) + 1
    for page in doc:
        for annot in list(page.annots(
                types=[pymupdf.PDF_ANNOT_FILE_ATTACHMENT])):  # type: ignore[attr-defined]
            page.delete_annot(annot)
            removed["file_attachments"] = removed.get("file_attachments", 0) + 1
    catalog = doc.pdf_catalog()
    for path, kind in (("Names/JavaScript", "javascript"),
                       ("Names/EmbeddedFiles", "embedded_files"), ("AcroForm/XFA", "xfa")):
        if doc.xref_get_key(catalog, path)[0] != "null":
            drop(catalog, path, kind, 0 if kind in removed else 1)
    for xref in range(1, doc.xref_length()):
        for key, kind in (("OpenAction", "open_action"), ("AA", "additional_actions")):
            if doc.xref_get_key(xref, key)[0] != "null":
                drop(xref, key, kind)
        if doc.xref_get_key(xref, "A")[0] != "null":
            action = doc.xref_get_key(xref, "A/S")[1]
            if action not in _INERT_ACTIONS:
                drop(xref, "A", action.lstrip("/").lower() or "action")
    for xref in touched:  # MuPDF keeps a key set to null: take it out of the object
        source = doc.xref_object(xref, compressed=True)
        cleaned = _NULLED_KEY.sub("", source)
        if cleaned != source:
            doc.update_object(xref, cleaned)
    return removed
