"""Rendering PDF pages to images: for OCR, and small for checks.

Runs in worker children: a page at OCR_PDF_DPI or an engine's page budget
(`render_page`), or a small grey copy for the blank check (`render_small`). Part of
tasks/pipeline/pdf, the only package that imports `pymupdf`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import pymupdf
from PIL import Image, ImageChops

from tasks.pipeline.blank import CHECK_LONGEST_SIDE

if TYPE_CHECKING:
    from collections.abc import Callable

    from tasks.settings import Settings


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
