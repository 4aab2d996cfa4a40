"""Page image clean-up before recognition: right-side up and deskewed.

Runs in worker children. Orientation comes from the engine when it can tell
(`OcrEngine.detect_orientation`); skew is measured here from the image alone, by the
angle whose horizontal projection profile is sharpest (text lines give peaks).

The skew search works on a reduced, binarised copy (about `_PROBE_WIDTH` px wide) and
never rotates an image: the ink pixels' coordinates are projected onto each candidate
angle's rows (a histogram per angle), which costs a few milliseconds per page where
rotating the probe once per angle cost 0.1-0.2 s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

_PROBE_WIDTH = 800
_INK_BELOW = 128  # grey level under which a probe pixel is ink
_MIN_INK = 100  # fewer ink pixels than this: nothing to measure, the page is left as it is
_TIE = 0.995  # angles this close to the sharpest profile count as equally good


@dataclass(frozen=True)
class Correction:
    """What was done to a page image: counter-clockwise degrees, 90° steps then skew."""

    rotation: int = 0
    skew: float = 0.0

    def apply(self, image: Image.Image) -> Image.Image:
        if self.rotation:
            image = image.transpose(_TRANSPOSE[self.rotation % 360])
        if self.skew:
            fill = 255 if image.mode == "L" else (255, 255, 255)
            image = image.rotate(self.skew, resample=Image.Resampling.BICUBIC,
                                 expand=True, fillcolor=fill)
        return image


# Quarter turns are exact pixel moves: transpose is a copy, rotate() resamples.
_TRANSPOSE = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180,
              270: Image.Transpose.ROTATE_270}


def estimate_skew(image: Image.Image, max_angle: float = 10.0) -> float:
    """Counter-clockwise degrees that make the text lines horizontal (0.0 if unsure)."""
    gray = image if image.mode == "L" else image.convert("L")
    scale = min(1.0, _PROBE_WIDTH / gray.width)
    probe = gray.resize((max(1, int(gray.width * scale)), max(1, int(gray.height * scale))))
    ys, xs = np.nonzero(np.asarray(probe) < _INK_BELOW)
    if len(xs) < _MIN_INK:
        return 0.0
    profile = _Profiles(xs, ys, probe.width, probe.height)
    coarse = np.arange(-max_angle, max_angle + 0.01, 0.5)
    best = float(coarse[int(np.argmax([profile.sharpness(a) for a in coarse]))])
    fine = np.round(np.arange(best - 0.5, best + 0.51, 0.1), 2)
    scores = np.array([profile.sharpness(a) for a in fine])
    # Near-ties (square CJK glyphs give a flat top): the smallest turn of them.
    best = float(min(fine[scores >= scores.max() * _TIE], key=abs))
    baseline = profile.sharpness(0.0)
    # Keep the page as it is unless a rotation is clearly better.
    return round(best, 2) if abs(best) >= 0.2 and profile.sharpness(best) > baseline * 1.05 \
        else 0.0


class _Profiles:
    """Row profiles of a binary probe turned by an angle, as PIL's rotate would show them.

    A pixel at (x, y) (from the centre, y down) turned counter-clockwise by `a` lands on
    row y·cos a − x·sin a and column x·cos a + y·sin a; pixels leaving the frame are
    dropped, as `Image.rotate(expand=False)` drops them.
    """

    def __init__(self, xs: np.ndarray, ys: np.ndarray, width: int, height: int) -> None:
        self.cx, self.cy = width / 2, height / 2
        self.x = xs.astype(np.float32) + 0.5 - self.cx
        self.y = ys.astype(np.float32) + 0.5 - self.cy
        self.width, self.height = width, height

    def sharpness(self, angle: float) -> float:
        a = np.deg2rad(angle)
        cos, sin = np.float32(np.cos(a)), np.float32(np.sin(a))
        rows = np.floor(self.y * cos - self.x * sin + self.cy).astype(np.int64)
        cols = np.floor(self.x * cos + self.y * sin + self.cx)
        inside = (rows >= 0) & (rows < self.height) & (cols >= 0) & (cols < self.width)
        counts = np.bincount(rows[inside], minlength=self.height).astype(np.float64)
        return float(np.sum(np.diff(counts) ** 2))
