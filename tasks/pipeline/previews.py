"""Page previews: the image an engine read, made small once, while the page is read.

`page_preview` runs in worker children (tasks/pipeline/page_reading.py), on the image
the engine recognised (turned upright and deskewed): WebP at PREVIEW_LONG_SIDE pixels
on its long side, at most, kept beside the job's result (tasks/state/previews.py).
`smaller_preview` runs in the `api` process for `?width=`: a copy of the stored
preview scaled down, never up, nothing rendered again. Pillow is imported when called.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from tasks.records.formats import MIN_PREVIEW_WIDTH, PREVIEW_LONG_SIDE, PREVIEW_MEDIA_TYPE
from tasks.records.results import PagePreview

if TYPE_CHECKING:
    from PIL import Image

PREVIEW_BUDGET = 150 * 1024  # bytes a page's preview aims at
# (WebP quality, a 3-pixel median filter first): tried in turn until one fits the
# budget. Most scans fit at the first; the corpus's densest page (scan_linn, 8-point
# type on textured paper) at the third.
PREVIEW_STEPS = ((60, False), (40, False), (40, True), (25, True))
# libwebp's effort (0-6). On the corpus's pages at 1,600 pixels, 2 against Pillow's 4:
# a page's WebP encoded in 37-67 ms against 100-160, files 2-5 % larger (bench/README.md).
WEBP_METHOD = 2
MIN_WIDTH = MIN_PREVIEW_WIDTH
MEDIA_TYPE = PREVIEW_MEDIA_TYPE


def page_preview(image: Image.Image) -> PagePreview:
    """`image` (the page as the engine read it) as WebP, PREVIEW_LONG_SIDE at most."""
    from PIL import Image

    scale = min(1.0, PREVIEW_LONG_SIDE / max(image.width, image.height, 1))
    small = image
    if scale < 1.0:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        small = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=2.0)
    try:
        return PagePreview(_within_budget(small))
    finally:
        if small is not image:
            small.close()


def _within_budget(image: Image.Image) -> bytes:
    """The image as WebP at the first of PREVIEW_STEPS that fits PREVIEW_BUDGET (else the last)."""
    from PIL import ImageFilter

    data = b""
    for quality, smooth in PREVIEW_STEPS:
        if smooth:
            with image.filter(ImageFilter.MedianFilter(3)) as smoothed:
                data = _webp(smoothed, quality)
        else:
            data = _webp(image, quality)
        if len(data) <= PREVIEW_BUDGET:
            break
    return data


def _webp(image: Image.Image, quality: int = PREVIEW_STEPS[0][0]) -> bytes:
    converted = image if image.mode in ("RGB", "RGBA") else image.convert(
        "RGBA" if "A" in image.getbands() else "RGB")
    out = io.BytesIO()
    try:
        converted.save(out, "WEBP", quality=quality, method=WEBP_METHOD)
    finally:
        if converted is not image:
            converted.close()
    return out.getvalue()


def smaller_preview(data: bytes, width: int) -> bytes:
    """The stored preview `data` scaled to `width` pixels wide (never wider than it is)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        if width >= image.width:
            return data
        height = max(1, round(image.height * width / image.width))
        with image.resize((max(MIN_WIDTH, width), height), Image.Resampling.LANCZOS) as small:
            return _webp(small)
