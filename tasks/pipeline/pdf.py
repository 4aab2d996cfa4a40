"""PDF inputs and outputs through PyMuPDF: the only module that imports `pymupdf`.

Runs in worker children: opens a PDF from bytes (encryption, damage and page limits
checked), decides per page between its text layer and OCR, renders pages for OCR, and
writes searchable PDFs (the original pages with an invisible text layer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pymupdf
from PIL import Image

from tasks.errors import CorruptInput, NoPages, PdfEncrypted, TooManyPages
from tasks.pipeline.pages import select_pages

if TYPE_CHECKING:
    from worker_config import Settings

PDF_MODES = ("auto", "ocr", "text")
INVISIBLE = 3  # PDF text render mode 3: neither filled nor stroked (OCR layers)


@dataclass
class PdfPlan:
    """Which selected pages come from their text layer and which need OCR."""

    doc: Any
    page_count: int
    selected: int
    encrypted: bool = False
    text_pages: dict[int, tuple[str, str]] = field(default_factory=dict)
    ocr_pages: list[int] = field(default_factory=list)


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


def decrypted_bytes(doc: Any) -> bytes:
    """An authenticated document written without its encryption.

    Page tasks read this copy, so the password never has to be stored.
    """
    return bytes(doc.tobytes(encryption=pymupdf.PDF_ENCRYPT_NONE,  # type: ignore[attr-defined]
                             garbage=0))


def check_password(data: bytes, password: str | None, settings: Settings) -> None:
    """Raise `pdf_encrypted` unless `password` opens the PDF `data`."""
    open_pdf(data, password, settings).close()


def text_chars(page: Any) -> tuple[int, int]:
    """(visible, invisible) characters of the page's text layer."""
    visible = invisible = 0
    for span in page.get_texttrace():
        n = len(span["chars"])
        if span["type"] == INVISIBLE or span.get("opacity", 1) == 0:
            invisible += n
        else:
            visible += n
    return visible, invisible


def plan_pdf(data: bytes, pages: str | None, password: str | None, mode: str,
             settings: Settings) -> PdfPlan:
    """Open the PDF and sort its selected pages into text-layer and OCR pages.

    `auto`: a page with visible text, or an existing invisible OCR layer, keeps its
    text; other pages get OCR. `ocr`: every page gets OCR. `text`: no OCR at all.
    """
    doc = open_pdf(data, password, settings)
    numbers = select_pages(pages, doc.page_count, settings.max_pages)
    plan = PdfPlan(doc, doc.page_count, len(numbers), encrypted=bool(doc.needs_pass))
    for number in numbers:
        page = doc[number - 1]
        if mode == "ocr":
            plan.ocr_pages.append(number)
            continue
        visible, invisible = text_chars(page)
        layer = "visible" if visible >= settings.pdf_min_text_chars else "invisible"
        if mode == "text" or max(visible, invisible) >= settings.pdf_min_text_chars:
            plan.text_pages[number] = (page.get_text("text"), layer)
        else:
            plan.ocr_pages.append(number)
    return plan


def render_page(doc: Any, number: int, settings: Settings) -> Image.Image:
    """Page `number` as an RGB image at OCR_PDF_DPI, within OCR_MAX_RENDER_PIXELS.

    Huge pages are read at a lower resolution, not refused.
    """
    page = doc[number - 1]
    rect = page.rect
    zoom = settings.pdf_dpi / 72
    pixels = rect.width * zoom * rect.height * zoom
    if pixels > settings.max_render_pixels:
        # MuPDF rounds each side up: leave room for that, the cap must hold.
        zoom *= math.sqrt(settings.max_render_pixels / pixels) * 0.998
    pix = page.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), colorspace=pymupdf.csRGB,
                          alpha=False)
    return Image.frombytes("RGB", (pix.width, pix.height), pix.samples)


def _unrotate(x: float, y: float, angle: float, src: tuple[float, float],
              dst: tuple[float, float]) -> tuple[float, float]:
    """Map a point of `image.rotate(angle, expand=True)` back to the unrotated image.

    `dst` is the size of the rotated image, `src` the size before rotation.
    """
    theta = math.radians(angle)
    dx, dy = x - dst[0] / 2, y - dst[1] / 2
    return (dx * math.cos(theta) - dy * math.sin(theta) + src[0] / 2,
            dx * math.sin(theta) + dy * math.cos(theta) + src[1] / 2)


def _rotated_size(size: tuple[float, float], angle: float) -> tuple[float, float]:
    theta = math.radians(angle)
    c, s = abs(math.cos(theta)), abs(math.sin(theta))
    return size[0] * c + size[1] * s, size[0] * s + size[1] * c


def word_rects(page: dict[str, Any], page_rect: Any) -> list[tuple[str, Any]]:
    """Each word of an OCR page result as (text, rectangle in PDF points)."""
    width, height = page["image_size"]
    upright = _rotated_size((width, height), page["rotation"])
    final = _rotated_size(upright, page["skew"])
    sx, sy = page_rect.width / width, page_rect.height / height
    out = []
    for word in page["words"]:
        x0, y0, x1, y1 = word["box"]
        points = []
        for x, y in ((x0, y0), (x1, y0), (x0, y1), (x1, y1)):
            ux, uy = _unrotate(x, y, page["skew"], upright, final)
            points.append(_unrotate(ux, uy, page["rotation"], (width, height), upright))
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        out.append((word["text"], pymupdf.Rect(min(xs) * sx, min(ys) * sy,
                                               max(xs) * sx, max(ys) * sy)))
    return out


def searchable_pdf(data: bytes, fmt: str, password: str | None,
                   pages: list[dict[str, Any]], settings: Settings) -> bytes:
    """The input as a PDF whose OCR'd pages carry an invisible, selectable text layer."""
    if fmt == "pdf":
        doc = open_pdf(data, password, settings)
    else:
        with pymupdf.open(stream=data) as image_doc:
            doc = pymupdf.open("pdf", image_doc.convert_to_pdf())
    try:
        for result in pages:
            if result.get("source") != "ocr" or "words" not in result:
                continue
            page = doc[result["number"] - 1]
            if text_chars(page)[1]:
                # An old OCR layer is replaced, not doubled: remove text, keep images.
                page.add_redact_annot(page.rect)
                page.apply_redactions(
                    images=pymupdf.PDF_REDACT_IMAGE_NONE,  # type: ignore[attr-defined]
                    graphics=pymupdf.PDF_REDACT_LINE_ART_NONE)  # type: ignore[attr-defined]
            for text, rect in word_rects(result, page.rect):
                size = max(1.0, rect.height * 0.85)
                width = pymupdf.get_text_length(text, fontname="helv", fontsize=size)
                scale = rect.width / width if width else 1.0
                page.insert_text(rect.bl + (0, -rect.height * 0.15), text, fontsize=size,
                                 fontname="helv", render_mode=INVISIBLE,
                                 morph=(rect.bl, pymupdf.Matrix(scale, 1)))
        return bytes(doc.tobytes(garbage=3, deflate=True))
    finally:
        doc.close()
