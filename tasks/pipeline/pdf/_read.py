"""Reading PDFs: open one from bytes, sort its pages between text layer and OCR.

Runs in worker children (and the planning task): opens a PDF from bytes (encryption,
damage and page limits checked), reads each page's text layer in one pass, decides
per page between its text layer, OCR and blank, and gives a text-layer page's words
in OCR'd pages' coordinates. Part of tasks/pipeline/pdf, the only package that imports
`pymupdf`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pymupdf

from tasks.errors import CorruptInput, NoPages, PdfEncrypted, TooManyPages
from tasks.pipeline._symbol_fonts import (
    PRIVATE,
    UNNAMED,
    named_codes,
    page_symbols,
    to_unicode_cmap,
    with_symbols,
)
from tasks.pipeline.blank import ink_report
from tasks.pipeline.pdf._render import render_small, render_zoom
from tasks.records.request import select_pages
from tasks.records.results import WordBox

if TYPE_CHECKING:
    from tasks.settings import Settings

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
    soak of tests/queue/test_soak_pdfs.py).
    """
    pymupdf.TOOLS.store_shrink(100)


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
    `visible` reaches the `enough` it was read with); `text` is what
    `page.get_text("text")` gives, its glyphs without Unicode as they draw.
    """

    page: Any
    textpage: Any
    visible: int
    invisible: int

    @property
    def text(self) -> str:
        """The page's text; glyphs without Unicode as what they draw (`_symbol_fonts`).

        Text that holds a character MuPDF gives a glyph without Unicode (`UNNAMED`) is
        read again once the page's fonts that name such glyphs have a ToUnicode
        (`name_glyphs`); a symbol font's private-use characters are mapped by font.
        """
        textpage = self.textpage
        text = str(textpage.extractText())
        if UNNAMED.search(text) and name_glyphs(self.page):
            textpage = self.page.get_textpage(flags=pymupdf.TEXTFLAGS_TEXT)
            text = str(textpage.extractText())
        if PRIVATE.search(text) is None:
            return text
        fonts = [str(span["font"]) for block in textpage.extractRAWDICT()["blocks"]
                 for line in block.get("lines", ()) for span in line["spans"]
                 for char in span["chars"] if PRIVATE.match(char["c"])]
        return page_symbols(text, fonts)


def name_glyphs(page: Any) -> bool:
    """Give the page's fonts that name glyphs in `GLYPH_NAMES` a ToUnicode of them.

    Only a font without a ToUnicode of its own, whose encoding's /Differences names
    such a glyph (`_symbol_fonts`); True when a font was given one. MuPDF reads it at
    the page's next text extraction. A ToUnicode changes what the text extracts as,
    not how the page draws. Called where a page's text shows a glyph without Unicode
    (`UNNAMED`: listing a page's fonts costs about as much as reading its text), and
    before each layout analysis (which costs a hundred times more).
    """
    doc = page.parent
    named = False
    for xref, *_ in page.get_fonts():
        if doc.xref_get_key(xref, "ToUnicode")[0] != "null":
            continue
        kind, value = doc.xref_get_key(xref, "Encoding")
        if kind == "xref":
            differences = doc.xref_get_key(int(value.split()[0]), "Differences")[1]
        elif kind == "dict":
            differences = doc.xref_get_key(xref, "Encoding/Differences")[1]
        else:
            continue
        codes = named_codes(differences)
        if codes:
            cmap = doc.get_new_xref()
            doc.update_object(cmap, "<<>>")
            doc.update_stream(cmap, to_unicode_cmap(codes))
            doc.xref_set_key(xref, "ToUnicode", f"{cmap} 0 R")
            named = True
    return named


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
                return TextLayer(page, textpage, visible, invisible)
    return TextLayer(page, textpage, visible, invisible)


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


def text_layer_words(doc: Any, number: int, settings: Settings
                     ) -> tuple[tuple[int, int], tuple[WordBox, ...]]:
    """The size and words of page `number`'s text layer, in OCR'd pages' coordinates.

    Pixels of the page rendered at OCR_PDF_DPI (as `render_page` renders it for
    OCR): PyMuPDF's words, in points of the unrotated page, are turned with the
    page and scaled. Confidence 100: the text is the PDF's own.
    """
    page = doc[number - 1]
    zoom = render_zoom(page.rect, settings)
    # the size MuPDF gives a pixmap of this zoom (each side rounded up)
    size = (math.ceil(page.rect.width * zoom - 1e-6), math.ceil(page.rect.height * zoom - 1e-6))
    turn = page.rotation_matrix * pymupdf.Matrix(zoom, zoom)
    found = page.get_text("words")
    if any(UNNAMED.search(word[4]) for word in found) and name_glyphs(page):
        found = page.get_text("words")  # read again, with the fonts' new ToUnicode
    words = []
    for x0, y0, x1, y1, text, *_ in found:
        text = with_symbols(text, "Symbol")  # words carry no font: Symbol's table
        rect = (pymupdf.Rect(x0, y0, x1, y1) * turn).normalize()
        box = (max(0, math.floor(rect.x0)), max(0, math.floor(rect.y0)),
               min(size[0], math.ceil(rect.x1)), min(size[1], math.ceil(rect.y1)))
        if text.strip() and box[2] > box[0] and box[3] > box[1]:
            words.append(WordBox(text, box, 100.0))
    return size, tuple(words)
