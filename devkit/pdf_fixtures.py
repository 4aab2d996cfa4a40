"""Generated PDFs for tests: scanned-like image pages, rotated scans, many pages."""

from __future__ import annotations

import io
import re
from collections.abc import Iterable

import pymupdf
from PIL import Image, ImageDraw


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


def inked_pages(count: int, size: tuple[int, int] = (200, 260)) -> list[Image.Image]:
    """Light pages with a few lines of dark marks: not blank, so an engine reads each."""
    pages = []
    for _ in range(count):
        image = Image.new("L", size, 235)
        draw = ImageDraw.Draw(image)
        for y in range(30, size[1] - 30, 20):
            draw.text((20, y), "some words here", fill=10)
        pages.append(image)
    return pages


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


def truncated_pdf(source: bytes, fraction: float = 0.4) -> bytes:
    """The first part of a real PDF, as an interrupted upload leaves it."""
    return source[: int(len(source) * fraction)]


def broken_xref_pdf(source: bytes) -> bytes:
    """A real PDF whose startxref points nowhere (MuPDF repairs it)."""
    return re.sub(rb"startxref\s+\d+", b"startxref\n999999", source)


def millions_of_pages_pdf() -> bytes:
    """A one-page PDF whose page tree claims five million pages."""
    doc = pymupdf.open()
    doc.new_page()
    return bytes(doc.tobytes()).replace(b"/Count 1", b"/Count 5000000")


def huge_page_pdf(inches: float = 200) -> bytes:
    """One page `inches` wide and high, with some text drawn as an image-less page."""
    doc = pymupdf.open()
    page = doc.new_page(width=inches * 72, height=inches * 72)
    page.draw_rect(pymupdf.Rect(100, 100, 2000, 2000), fill=(0, 0, 0))
    return bytes(doc.tobytes())


def encrypted_pdf(source: bytes, password: str) -> bytes:
    """`source` encrypted (AES-256): it opens only with `password`."""
    doc = pymupdf.open(stream=source, filetype="pdf")
    return bytes(doc.tobytes(encryption=pymupdf.mupdf.PDF_ENCRYPT_AES_256, user_pw=password,
                             owner_pw=password))
