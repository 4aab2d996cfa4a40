"""Page image clean-up before recognition: right-side up and deskewed.

Runs in worker children. Orientation comes from the engine when it can tell
(`OcrEngine.detect_orientation`); skew is measured here from the image alone, by the
angle whose horizontal projection profile is sharpest (text lines give peaks).

The skew search works on a reduced, binarised copy (about `_PROBE_WIDTH` px wide) and
never rotates an image: the ink pixels' coordinates are projected onto each candidate
angle's rows (a histogram per angle), which costs a few milliseconds per page where
rotating the probe once per angle cost 0.1-0.2 s.

The deskew itself resamples only the part of the page where the probe found ink (its
bounding box, padded): those pixels are exactly those of `Image.rotate(expand=True)`
on the whole page, and the margins around them keep the page's own pixels, unturned.
On the corpus pages that is 53-75 % of the page, and the rotation costs that much less.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

_PROBE_WIDTH = 800
_INK_BELOW = 128  # grey level under which a probe pixel is ink
_MIN_INK = 100  # fewer ink pixels than this: nothing to measure, the page is left as it is
_TIE = 0.995  # angles this close to the sharpest profile count as equally good


Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Skew:
    """A page's skew as measured: the turn that levels its lines, and where its ink is.

    `angle`: counter-clockwise degrees. `ink`: the bounding box of the ink, as fractions
    of the page's width and height (None when nothing was measured).
    """

    angle: float = 0.0
    ink: Box | None = None


@dataclass(frozen=True)
class Correction:
    """What was done to a page image: counter-clockwise degrees, 90° steps then skew.

    `ink` (a `Skew.ink` of the upright page): only that part of the page is resampled.
    """

    rotation: int = 0
    skew: float = 0.0
    ink: Box | None = None

    def apply(self, image: Image.Image) -> Image.Image:
        if self.rotation:
            image = image.transpose(_TRANSPOSE[self.rotation % 360])
        if self.skew:
            image = _deskew(image, self.skew, self.ink)
        return image


def _deskew(image: Image.Image, angle: float, ink: Box | None) -> Image.Image:
    """`image.rotate(angle, expand=True)` (bicubic, white corners) where the ink is.

    Outside the padded ink box the result keeps the unturned page's pixels, centred as
    the rotation centres it. Pixels inside are computed with the rotation's own affine
    matrix, so they are the very pixels a whole-page rotation gives.
    """
    fill: int | tuple[int, int, int] = 255 if image.mode == "L" else (255, 255, 255)
    bicubic = Image.Resampling.BICUBIC
    if ink is None:
        return image.rotate(angle, resample=bicubic, expand=True, fillcolor=fill)
    matrix, (width, height) = _rotation(image.size, angle)
    x0, y0, x1, y1 = _output_box(matrix, ink, image.size, (width, height))
    a, b, c, d, e, f = matrix
    part = image.transform((x1 - x0, y1 - y0), Image.Transform.AFFINE,
                           (a, b, a * x0 + b * y0 + c, d, e, d * x0 + e * y0 + f),
                           resample=bicubic, fillcolor=fill)
    out = Image.new(image.mode, (width, height), fill)
    out.paste(image, ((width - image.width) // 2, (height - image.height) // 2))
    out.paste(part, (x0, y0))
    return out


_INK_PAD = 8  # output pixels around the turned ink box (bicubic reads 2 px around)


def _rotation(size: tuple[int, int], angle: float) -> tuple[list[float], tuple[int, int]]:
    """The affine matrix (output pixel -> input pixel) and size of a turned page.

    Those of `Image.rotate(angle, expand=True)`, computed as Pillow computes them.
    """
    w, h = size
    theta = -math.radians(angle)
    m = [round(math.cos(theta), 15), round(math.sin(theta), 15), 0.0,
         round(-math.sin(theta), 15), round(math.cos(theta), 15), 0.0]

    def move(x: float, y: float) -> tuple[float, float]:
        return m[0] * x + m[1] * y + m[2], m[3] * x + m[4] * y + m[5]

    m[2], m[5] = move(-w / 2, -h / 2)
    m[2] += w / 2
    m[5] += h / 2
    xs, ys = zip(*(move(x, y) for x, y in ((0, 0), (w, 0), (w, h), (0, h))), strict=True)
    width = math.ceil(max(xs)) - math.floor(min(xs))
    height = math.ceil(max(ys)) - math.floor(min(ys))
    m[2], m[5] = move(-(width - w) / 2, -(height - h) / 2)
    return m, (width, height)


def _output_box(matrix: list[float], ink: Box, size: tuple[int, int],
                out_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The output pixels that the ink box (fractions of `size`) turns into, padded."""
    a, b, c, d, e, f = matrix
    x0, y0, x1, y1 = ink[0] * size[0], ink[1] * size[1], ink[2] * size[0], ink[3] * size[1]
    # The matrix is a rotation: its transpose maps input points back onto the output.
    points = [(a * (x - c) + d * (y - f), b * (x - c) + e * (y - f))
              for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1))]
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return (max(0, math.floor(min(xs)) - _INK_PAD), max(0, math.floor(min(ys)) - _INK_PAD),
            min(out_size[0], math.ceil(max(xs)) + _INK_PAD),
            min(out_size[1], math.ceil(max(ys)) + _INK_PAD))


# Quarter turns are exact pixel moves: transpose is a copy, rotate() resamples.
_TRANSPOSE = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180,
              270: Image.Transpose.ROTATE_270}


def estimate_skew(image: Image.Image, max_angle: float = 10.0) -> Skew:
    """The turn that makes the text lines horizontal (angle 0.0 if unsure) and the ink box."""
    gray = image if image.mode == "L" else image.convert("L")
    scale = min(1.0, _PROBE_WIDTH / gray.width)
    probe = gray.resize((max(1, int(gray.width * scale)), max(1, int(gray.height * scale))))
    ys, xs = np.nonzero(np.asarray(probe) < _INK_BELOW)
    if len(xs) < _MIN_INK:
        return Skew()
    # One probe pixel around the ink: the reduction blurs a glyph's edge below the threshold.
    ink = (max(0, int(xs.min()) - 1) / probe.width, max(0, int(ys.min()) - 1) / probe.height,
           min(probe.width, int(xs.max()) + 2) / probe.width,
           min(probe.height, int(ys.max()) + 2) / probe.height)
    profile = _Profiles(xs, ys, probe.width, probe.height, max_angle + 0.5)
    coarse = np.arange(-max_angle, max_angle + 0.01, 0.5)
    best = float(coarse[int(np.argmax([profile.sharpness(a) for a in coarse]))])
    fine = np.round(np.arange(best - 0.5, best + 0.51, 0.1), 2)
    scores = np.array([profile.sharpness(a) for a in fine])
    # Near-ties (square CJK glyphs give a flat top): the smallest turn of them.
    best = float(min(fine[scores >= scores.max() * _TIE], key=abs))
    baseline = profile.sharpness(0.0)
    # Keep the page as it is unless a rotation is clearly better.
    clear = abs(best) >= 0.2 and profile.sharpness(best) > baseline * 1.05
    return Skew(round(best, 2) if clear else 0.0, ink)


class _Profiles:
    """Row profiles of a binary probe turned by an angle, as PIL's rotate would show them.

    A pixel at (x, y) (from the centre, y down) turned counter-clockwise by `a` lands on
    row y·cos a − x·sin a and column x·cos a + y·sin a; pixels leaving the frame are
    dropped, as `Image.rotate(expand=False)` drops them. Pixels that no turn up to
    `reach` degrees can move out of the frame are set apart once: only the others are
    tested at each angle (the counts are the same, found with half the arithmetic).
    """

    def __init__(self, xs: np.ndarray, ys: np.ndarray, width: int, height: int,
                 reach: float) -> None:
        self.cx, self.cy = width / 2, height / 2
        x = xs.astype(np.float32) + 0.5 - self.cx
        y = ys.astype(np.float32) + 0.5 - self.cy
        # |x'| <= |x| + |y|·sin(reach), |y'| <= |y| + |x|·sin(reach); 2 px for rounding.
        spread = np.float32(np.sin(np.deg2rad(min(reach, 90.0))))
        stays = (np.abs(x) + np.abs(y) * spread < self.cx - 2) & \
            (np.abs(y) + np.abs(x) * spread < self.cy - 2)
        self.x, self.y = x[stays], y[stays]
        self.edge_x, self.edge_y = x[~stays], y[~stays]
        self.width, self.height = width, height

    def sharpness(self, angle: float) -> float:
        a = np.deg2rad(angle)
        cos, sin = np.float32(np.cos(a)), np.float32(np.sin(a))
        rows = (self.y * cos - self.x * sin + self.cy).astype(np.int64)  # all >= 1
        counts = np.bincount(rows, minlength=self.height)
        if len(self.edge_x):
            edge = np.floor(self.edge_y * cos - self.edge_x * sin + self.cy).astype(np.int64)
            cols = np.floor(self.edge_x * cos + self.edge_y * sin + self.cx)
            inside = (edge >= 0) & (edge < self.height) & (cols >= 0) & (cols < self.width)
            counts = counts + np.bincount(edge[inside], minlength=self.height)
        return float(np.sum(np.diff(counts.astype(np.float64)) ** 2))
