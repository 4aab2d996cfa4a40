"""Page previews: the image an engine read, made small once, while the page is read.

`page_preview` runs in worker children (tasks/pipeline/page_reading.py), on the image
the engine recognised (turned upright and deskewed): WebP at PREVIEW_LONG_SIDE pixels
on its long side, at most, and PREVIEW_BUDGET bytes at most, kept beside the job's
result (tasks/state/previews.py). `smaller_preview` runs in the `api` process for
`?width=`: a copy of the stored preview scaled down, never up, nothing rendered again.
Pillow is imported when called.

A preview costs a few percent of a page's CPU at most: one bilinear resize and one
encode at libwebp's cheapest effort. A probe (a 16th of the pixels) predicts the
bytes: a page that would be over the budget (dense type on textured paper, noise) is
encoded at a lower quality and a smaller size from the start, and a try that is still
over is followed by a smaller one, its size chosen from the bytes it took;
PREVIEW_TRIES encodes at most.
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
# WebP quality of a page that fits at the preview's size (most scans), and of a page
# that does not (encoded smaller too).
FIRST_QUALITY = 50
OVER_BUDGET_QUALITY = 30
# Bytes at OVER_BUDGET_QUALITY against FIRST_QUALITY, about (the corpus's scans, noise).
QUALITY_BYTES = 0.8
# A try after the first aims at this share of the budget: bytes follow the area only
# roughly, and a second miss costs an encode.
AIM = 0.85
# The probe that predicts a preview's bytes: the preview reduced 4 times each way (a
# 16th of its pixels, 2-3 ms), its bytes times PROBE_BYTES (the corpus's scans: 7.3-10.7;
# the high end, so that a page near the budget starts smaller rather than encodes twice).
PROBE_REDUCTION = 4
PROBE_BYTES = 10.0
# Encodes a preview takes at most. The last is held to BUDGET_PIXELS, where even noise
# fits: lossy WebP takes well under a byte a pixel.
PREVIEW_TRIES = 4
BUDGET_PIXELS = PREVIEW_BUDGET
# libwebp's effort (0-6): 0, its cheapest. On the corpus's pages at 1,600 pixels an
# encode takes 20-33 ms against 33-53 at 2, its file 10-30 % larger.
WEBP_METHOD = 0
MIN_WIDTH = MIN_PREVIEW_WIDTH
MEDIA_TYPE = PREVIEW_MEDIA_TYPE


def page_preview(image: Image.Image) -> PagePreview | None:
    """`image` (the page as the engine read it) as WebP within PREVIEW_BUDGET, or None.

    None only where no try fits (no page seen does): the page then has no preview.
    """
    small = _scaled(image, min(1.0, PREVIEW_LONG_SIDE / max(image.width, image.height, 1)))
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
    """`image` as WebP within PREVIEW_BUDGET: lower quality and smaller until it fits.

    A probe (the image reduced PROBE_REDUCTION times each way) predicts the bytes, so
    that a page that would not fit starts smaller instead of with an encode thrown away.
    """
    quality, factor = FIRST_QUALITY, 1.0
    if min(image.size) >= 4 * PROBE_REDUCTION:
        with image.reduce(PROBE_REDUCTION) as probe:
            predicted = len(_webp(probe, FIRST_QUALITY)) * PROBE_BYTES
        if predicted > PREVIEW_BUDGET:
            quality, factor = OVER_BUDGET_QUALITY, _shrink(predicted * QUALITY_BYTES)
    tried = image
    try:
        for attempt in range(1, PREVIEW_TRIES + 1):
            if attempt == PREVIEW_TRIES:  # the last: small enough for any page
                factor = min(factor, math.sqrt(BUDGET_PIXELS / (tried.width * tried.height)))
            smaller = _scaled(tried, factor)
            if smaller is not tried and tried is not image:
                tried.close()
            tried = smaller
            data = _webp(tried, quality)
            if len(data) <= PREVIEW_BUDGET:
                return data
            expected = len(data) * (QUALITY_BYTES if quality == FIRST_QUALITY else 1.0)
            quality, factor = OVER_BUDGET_QUALITY, _shrink(expected)
        return None
    finally:
        if tried is not image:
            tried.close()


def _shrink(expected: float) -> float:
    """The scale at which an image of `expected` bytes takes AIM of the budget, about."""
    return min(0.95, math.sqrt(AIM * PREVIEW_BUDGET / expected))


def _scaled(image: Image.Image, factor: float) -> Image.Image:
    """`image` scaled by `factor` (<= 1; the image itself at 1), a pixel at least a side.

    Bilinear, after a box reduction by a whole factor (`reducing_gap`): about a quarter
    of Lanczos' CPU, and smaller files of scans (their paper's grain smoothed).
    """
    from PIL import Image

    if factor >= 1.0:
        return image
    size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
    return image.resize(size, Image.Resampling.BILINEAR, reducing_gap=1.0)


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
