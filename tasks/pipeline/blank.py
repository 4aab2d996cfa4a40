"""Blank-page detection: is there anything on this page worth reading? In milliseconds.

A page image is blank when, on a reduced greyscale copy, almost no pixel differs from
the page's background (its median grey) by more than `INK_CONTRAST`, once isolated
specks (scanner noise, dust) and a thin border (scanner edges, shadows) are left out.
PDF pages are first checked without rendering (no text, no image, no drawing: blank);
pages that draw something are rendered at `CHECK_LONGEST_SIDE` pixels and checked as
images (`tasks.pipeline.pdf.plan_pdf`).

The rule errs towards "not blank": a doubtful page is read by the engine as before.
Pure code (PIL and numpy): runs in worker children, before any engine sees the page.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

CHECK_LONGEST_SIDE = 1024
"""Longest side (px) of the reduced copy the check looks at.

About 90 dpi for a Letter or A4 page: a stroke of 10-point text (3 px at 300 dpi) still
covers most of a pixel, while a one-pixel speck at 300-400 dpi is averaged into the
paper (box reduction by an integer factor of 3-5)."""

INK_CONTRAST = 40
"""Grey levels (of 255) a pixel must differ from the background (the median) to count
as ink. Paper grain (sigma 20), JPEG noise and light show-through from the back of the
sheet stay below it after reduction; faint print (grey 175 on white) is above it. Light
or dark pages alike: the difference is absolute."""

MIN_NEIGHBOURS = 2
"""An ink pixel counts only when at least this many of its 8 neighbours are ink too:
isolated specks of one or two pixels (dust, noise) do not make a page non-blank."""

MARGIN_FRACTION = 0.03
"""Fraction of each side left out of the check: scanner edges, shadows of the lid and
punched holes live there. Page numbers sit further in (about 5 % of the page)."""

MAX_INK_PIXELS = 12
"""A page with at most this many counted ink pixels (of about 0.5-0.75 Mpx on the
reduced copy) is blank. Measured on A4 at 300 dpi (tests/engines/test_blank_pages.py): blank
scans with grain, 2,000 specks, a dozen dust spots or show-through give 0-6; a lone
page number "1" in 10 pt gives 18, "17" 34, one word 100+; a single 8 pt digit (10) is
the smallest mark that counts as blank."""


@dataclass(frozen=True)
class InkReport:
    """What the check saw: counted ink pixels, the background grey and the size checked."""

    ink_pixels: int
    background: int
    size: tuple[int, int]

    @property
    def blank(self) -> bool:
        return self.ink_pixels <= MAX_INK_PIXELS


def reduced_grey(image: Image.Image, longest_side: int = CHECK_LONGEST_SIDE) -> Image.Image:
    """A greyscale copy no larger than `longest_side`, reduced by box averaging.

    RGB pages are reduced before the grey conversion (a third of the pixels to convert).
    """
    factor = -(-max(image.size) // longest_side)  # ceiling division
    if image.mode in ("L", "RGB") and factor > 1:
        image = image.reduce(factor)
        factor = 1
    grey = image if image.mode == "L" else image.convert("L")
    return grey.reduce(factor) if factor > 1 else grey


def ink_report(image: Image.Image, longest_side: int = CHECK_LONGEST_SIDE,
               contrast: int = INK_CONTRAST) -> InkReport:
    """Measure the ink on a page image (any mode, any size)."""
    small = reduced_grey(image, longest_side)
    grey = np.asarray(small, dtype=np.uint8)
    height, width = grey.shape
    if grey.size == 0:
        return InkReport(0, 255, (width, height))
    counts = np.bincount(grey.ravel(), minlength=256)
    background = int(np.searchsorted(np.cumsum(counts), grey.size / 2))
    my, mx = int(height * MARGIN_FRACTION), int(width * MARGIN_FRACTION)
    inner = grey[my:height - my or None, mx:width - mx or None].astype(np.int16)
    ink = np.abs(inner - background) > contrast
    if not ink.any():
        return InkReport(0, background, (width, height))
    padded = np.pad(ink, 1).astype(np.uint8)
    neighbours = sum(padded[1 + dy:padded.shape[0] - 1 + dy, 1 + dx:padded.shape[1] - 1 + dx]
                     for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx)
    counted = int(np.count_nonzero(ink & (neighbours >= MIN_NEIGHBOURS)))
    return InkReport(counted, background, (width, height))


def is_blank(image: Image.Image) -> bool:
    """True when the page holds nothing an OCR engine could read."""
    return ink_report(image).blank
