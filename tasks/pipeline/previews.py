"""Page previews: the image an engine read, made small once, while the page is read.

`page_preview` runs in worker children (tasks/pipeline/page_reading.py), on the image
the engine recognised (turned upright and deskewed): WebP at PREVIEW_LONG_SIDE pixels
on its long side, at most, and PREVIEW_BUDGET bytes at most, kept beside the job's
result (tasks/state/previews.py). `smaller_preview` runs in the `api` process for
`?width=`: a copy of the stored preview scaled down, never up, nothing rendered again.
Pillow is imported when called.

A preview costs a few percent of a page's CPU at most: one bilinear resize and one
encode at libwebp's cheapest effort for most pages. A page over the budget (dense type
on textured paper, noise) is encoded again at a lower quality and a smaller size, the
size chosen from the bytes the last try took; PREVIEW_TRIES encodes at most.
"""

from __future__ import annotations

import io
import logging
import math
from typing import TYPE_CHECKING

from tasks.records.formats import MIN_PREVIEW_WIDTH, PREVIEW_LONG_SIDE, PREVIEW_MEDIA_TYPE
from tasks.records.results import PagePreview

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

PREVIEW_BUDGET = 150 * 1024  # bytes a page's preview holds to, whatever the page
# WebP quality of the first try, and of every try after it: most scans fit at the
# first; a page over the budget is encoded again at the second, smaller too.
FIRST_QUALITY = 50
OVER_BUDGET_QUALITY = 30
# Bytes at OVER_BUDGET_QUALITY against FIRST_QUALITY, about (the corpus's scans, noise).
QUALITY_BYTES = 0.8
# A try after the first aims at this share of the budget: bytes follow the area only
# roughly, and a second miss costs an encode.
AIM = 0.85
# Encodes a preview takes at most. The last is held to BUDGET_PIXELS, where even noise
# fits: lossy WebP takes well under a byte a pixel.
PREVIEW_TRIES = 4
BUDGET_PIXELS = PREVIEW_BUDGET
# libwebp's effort (0-6): 0, its cheapest. On the corpus's pages at 1,600 pixels an
# encode takes 20-33 ms against 33-53 at 2, its file 10-30 % larger (bench/README.md).
WEBP_METHOD = 0
MIN_WIDTH = MIN_PREVIEW_WIDTH
MEDIA_TYPE = PREVIEW_MEDIA_TYPE


def page_preview(image: Image.Image) -> PagePreview | None:
    """`image` (the page as the engine read it) as WebP within PREVIEW_BUDGET, or None.

    None only where no try fits (no page seen does): the page then has no preview.
    """
    from PIL import Image

    small = _scaled(image, min(1.0, PREVIEW_LONG_SIDE / max(image.width, image.height, 1)),
                    Image.Resampling.BILINEAR)
    try:
        data = _within_budget(small)
    finally:
        if small is not image:
            small.close()
    if data is None:
        log.warning("a page's preview is over %d bytes at every size tried: none kept",
                    PREVIEW_BUDGET)
        return None
    return PagePreview(data)


def _within_budget(image: Image.Image) -> bytes | None:
    """`image` as WebP within PREVIEW_BUDGET: lower quality, then smaller, until it fits."""
    from PIL import Image

    quality, tried = FIRST_QUALITY, image
    try:
        for attempt in range(1, PREVIEW_TRIES + 1):
            data = _webp(tried, quality)
            if len(data) <= PREVIEW_BUDGET:
                return data
            if attempt < PREVIEW_TRIES:
                expected = len(data) * (QUALITY_BYTES if quality == FIRST_QUALITY else 1.0)
                factor = min(0.95, math.sqrt(AIM * PREVIEW_BUDGET / expected))
                if attempt + 1 == PREVIEW_TRIES:  # the last: small enough for any page
                    factor = min(factor, math.sqrt(BUDGET_PIXELS / (tried.width * tried.height)))
                smaller = _scaled(tried, factor, Image.Resampling.BILINEAR)
                if tried is not image:
                    tried.close()
                quality, tried = OVER_BUDGET_QUALITY, smaller
        return None
    finally:
        if tried is not image:
            tried.close()


def _scaled(image: Image.Image, factor: float, resample: Image.Resampling) -> Image.Image:
    """`image` scaled by `factor` (<= 1; the image itself at 1), a pixel at least a side."""
    if factor >= 1.0:
        return image
    size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
    # reducing_gap: a box reduction by a whole factor first, then the filter on what is left
    return image.resize(size, resample, reducing_gap=1.0)


def _webp(image: Image.Image, quality: int = FIRST_QUALITY) -> bytes:
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
