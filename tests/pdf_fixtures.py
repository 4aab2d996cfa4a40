"""Generated PDFs for tests: scanned-like image pages, rotated scans, many pages."""

from __future__ import annotations

import io
from collections.abc import Iterable

import pymupdf
from PIL import Image


def image_pdf(images: Iterable[Image.Image], dpi: int = 200) -> bytes:
    """A PDF whose pages are the images, without any text layer (like a scanner's)."""
    doc = pymupdf.open()
    for image in images:
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        width, height = image.width * 72 / dpi, image.height * 72 / dpi
        page = doc.new_page(width=width, height=height)
        page.insert_image(page.rect, stream=buffer.getvalue())
    return bytes(doc.tobytes(garbage=3, deflate=True))


def plain_pages(count: int, dark: Iterable[int] = (), size: tuple[int, int] = (200, 260)
                ) -> list[Image.Image]:
    """Blank light pages, except the 1-based page numbers in `dark` (fault triggers)."""
    dark_pages = set(dark)
    return [Image.new("L", size, 20 if n in dark_pages else 235)
            for n in range(1, count + 1)]


def repeated_image_pdf(image: Image.Image, count: int, dpi: int) -> bytes:
    """`count` pages that all show the same image, stored once (small file, many pages)."""
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    doc = pymupdf.open()
    width, height = image.width * 72 / dpi, image.height * 72 / dpi
    xref = 0
    for _ in range(count):
        page = doc.new_page(width=width, height=height)
        xref = page.insert_image(page.rect, stream=buffer.getvalue() if not xref else None,
                                 xref=xref)
    return bytes(doc.tobytes(garbage=3, deflate=True))
