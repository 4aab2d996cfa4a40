"""PDF inputs through PyMuPDF: the only module that imports `pymupdf`.

Runs in worker children: opens a PDF from bytes, checks encryption and page limits,
and yields per page either its text layer or a rendered image for OCR.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pymupdf
from PIL import Image

from tasks.errors import CorruptInput, NoPages, PdfEncrypted, TooManyPages
from tasks.pages import select_pages

if TYPE_CHECKING:
    from worker_config import Settings

PDF_MODES = ("auto", "ocr", "text")
OCR_DPI = 300


@dataclass
class PdfPage:
    """One selected page: its text layer, or an image when it needs OCR."""

    number: int
    count: int
    selected: int
    text: str | None = None
    image: Image.Image | None = None


def open_pdf(data: bytes, password: str | None, settings: Settings) -> Any:
    """An open, authenticated document with a sane page count."""
    try:
        doc = pymupdf.open(stream=data, filetype="pdf")
    except (pymupdf.FileDataError, RuntimeError, ValueError) as exc:
        raise CorruptInput(f"the PDF could not be opened ({type(exc).__name__})") from None
    if doc.needs_pass:
        if not password:
            doc.close()
            raise PdfEncrypted("the PDF is encrypted; pass its password")
        if not doc.authenticate(password):
            doc.close()
            raise PdfEncrypted("the password does not open this PDF")
    count = doc.page_count
    if count == 0:
        doc.close()
        raise NoPages("the PDF has no pages")
    if count > settings.max_pages:
        doc.close()
        raise TooManyPages(f"the PDF has {count} pages, the limit is {settings.max_pages}")
    return doc


def iter_pdf_pages(data: bytes, pages: str | None, password: str | None, mode: str,
                   settings: Settings) -> Iterator[PdfPage]:
    """Yield each selected page, rendered only when it needs OCR under `mode`."""
    doc = open_pdf(data, password, settings)
    try:
        count = doc.page_count
        numbers = select_pages(pages, count, settings.max_pages)
        for number in numbers:
            page = doc[number - 1]
            text = page.get_text("text") if mode != "ocr" else ""
            if mode == "text" or (mode == "auto" and text.strip()):
                yield PdfPage(number, count, len(numbers), text=text)
            else:
                yield PdfPage(number, count, len(numbers), image=render(page, OCR_DPI,
                                                          settings.max_image_pixels))
    finally:
        doc.close()


def render(page: Any, dpi: int, max_pixels: int) -> Image.Image:
    """The page as an RGB image at `dpi`, scaled down to stay under `max_pixels`."""
    rect = page.rect
    zoom = dpi / 72
    pixels = rect.width * zoom * rect.height * zoom
    if pixels > max_pixels:
        zoom *= (max_pixels / pixels) ** 0.5
    pix = page.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), colorspace=pymupdf.csRGB,
                          alpha=False)
    return Image.frombytes("RGB", (pix.width, pix.height), pix.samples)
