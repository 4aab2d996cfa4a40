"""Boxes of the image OCR read mapped back onto the input page image. Pure functions.

OCR reads the page turned upright (`rotation`, a multiple of 90 degrees) and then
deskewed (`skew`), both by `Image.rotate(angle, expand=True)` (tasks/pipeline/
preprocess.py). Used in worker children by the searchable PDF (tasks/pipeline/pdf)
and the hOCR/ALTO documents (tasks/pipeline/layouts.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

Box = tuple[float, float, float, float]


def unrotate(x: float, y: float, angle: float, src: tuple[float, float],
             dst: tuple[float, float]) -> tuple[float, float]:
    """Map a point of `image.rotate(angle, expand=True)` back to the unrotated image.

    `dst` is the size of the rotated image, `src` the size before rotation.
    """
    theta = math.radians(angle)
    dx, dy = x - dst[0] / 2, y - dst[1] / 2
    return (dx * math.cos(theta) - dy * math.sin(theta) + src[0] / 2,
            dx * math.sin(theta) + dy * math.cos(theta) + src[1] / 2)


def rotated_size(size: tuple[float, float], angle: float) -> tuple[float, float]:
    theta = math.radians(angle)
    c, s = abs(math.cos(theta)), abs(math.sin(theta))
    return size[0] * c + size[1] * s, size[0] * s + size[1] * c


def to_input(size: Sequence[float], rotation: float, skew: float) -> Callable[[Box], Box]:
    """A function mapping a box of the OCR'd image to the input image of `size`.

    The result is the axis-aligned box around the mapped corners.
    """
    width, height = float(size[0]), float(size[1])
    upright = rotated_size((width, height), rotation)
    final = rotated_size(upright, skew)

    def mapped(box: Box) -> Box:
        x0, y0, x1, y1 = box
        points = []
        for x, y in ((x0, y0), (x1, y0), (x0, y1), (x1, y1)):
            ux, uy = unrotate(x, y, skew, upright, final)
            points.append(unrotate(ux, uy, rotation, (width, height), upright))
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        return min(xs), min(ys), max(xs), max(ys)

    return mapped
