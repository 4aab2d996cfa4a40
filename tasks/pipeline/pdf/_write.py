"""Writing PDFs: invisible OCR text layers, searchable PDFs, active content taken out.

Runs in worker children: writes searchable PDFs (the original pages with an invisible
text layer, each word on its box in an embedded Unicode font), and builds an OCR'd
page's own one-page PDF for PyMuPDF's layout analysis (`ocr_layer_pdf`; the analysis
itself is tasks/pipeline/structure.py's, through pymupdf4llm). Part of
tasks/pipeline/pdf, the only package that imports `pymupdf`.
"""

from __future__ import annotations

import itertools
import re
import statistics
from typing import TYPE_CHECKING, Any

import pymupdf

from tasks.engines.textfix import is_cjk
from tasks.pipeline._geometry import to_input
from tasks.pipeline.pdf._read import open_pdf, text_chars
from tasks.records.languages import main_tag, page_tag
from tasks.records.results import PageRecord, WordBox

if TYPE_CHECKING:
    from PIL import Image

    from tasks.settings import Settings

INVISIBLE = 3  # PDF text render mode 3: neither filled nor stroked (OCR layers)


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
            _write_layer(doc[result.number - 1], result)
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


def _write_layer(page: Any, result: PageRecord, suffix: str = "") -> None:
    """An OCR'd page's words as its invisible text layer, in place of any text it had.

    `suffix` names the fonts apart from those an earlier layer of the page embedded
    (subset to that layer's characters).
    """
    if text_chars(page)[1]:
        # An old OCR layer is replaced, not doubled: remove text, keep images.
        page.add_redact_annot(page.rect)
        page.apply_redactions(
            images=pymupdf.PDF_REDACT_IMAGE_NONE,  # type: ignore[attr-defined]
            graphics=pymupdf.PDF_REDACT_LINE_ART_NONE)  # type: ignore[attr-defined]
    inserted: set[str] = set()
    for line in _lines(word_rects(result, page.rect), result.words or ()):
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
            name += suffix
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


def relayered_pdf(data: bytes, pages: list[PageRecord]) -> bytes:
    """A searchable PDF this service wrote, the text layer of `pages` written again.

    The pages' words are those of a corrected result (a client's corrected lines,
    tasks/lifecycle/page_views.py); the other pages are left as they are.
    """
    doc = pymupdf.open("pdf", data)
    try:
        for result in pages:
            if result.source != "ocr" or not result.words or result.image_size is None \
                    or not 1 <= result.number <= doc.page_count:
                continue
            _write_layer(doc[result.number - 1], result, suffix="c")
        doc.subset_fonts()
        return bytes(doc.tobytes(garbage=3, deflate=True))
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
