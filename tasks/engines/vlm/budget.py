"""A page's budget for a vision-language model: the size its image goes to the model at.

`PatchGrid` (what the model's image processor does with a size) and `budget_size`. Pure
(no model library): runs in worker pool children (both VLM engines) and in tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class PatchGrid:
    """What the model's image processor does with an image's size.

    Qwen2/2.5/3-VL processors cut images into `factor`-px cells (14 px patches merged
    2x2: 28 px) and scale any image over `max_pixels` down; other processors give
    factor 1 and no pixel limit.
    """

    factor: int = 1
    max_pixels: int | None = None
    min_pixels: int = 1

    @classmethod
    def of(cls, patch: object, merge: object, max_pixels: object,
           min_pixels: object) -> PatchGrid:
        """The grid from an image processor's values (any may be missing or not an int)."""
        factor = patch * merge if isinstance(patch, int) and isinstance(merge, int) else 1
        return cls(factor=factor,
                   max_pixels=max_pixels if isinstance(max_pixels, int) else None,
                   min_pixels=min_pixels if isinstance(min_pixels, int) else 1)


def budget_size(width: int, height: int, longest_side: int, grid: PatchGrid
                ) -> tuple[int, int]:
    """The size a page image goes to the model at.

    Scaled down (never up: upscaling adds tokens, not detail) so that its longest side is
    at most `longest_side` and its area at most the processor's `max_pixels`, then each
    side rounded to the processor's cell size, so that the processor changes nothing
    and the size reported is the size the model saw.
    """
    scale = min(1.0, longest_side / max(width, height))
    if grid.max_pixels is not None and width * height * scale * scale > grid.max_pixels:
        scale = math.sqrt(grid.max_pixels / (width * height))
    f = grid.factor
    w = max(f, round(width * scale / f) * f)
    h = max(f, round(height * scale / f) * f)
    while grid.max_pixels is not None and w * h > grid.max_pixels and max(w, h) > f:
        if w >= h:
            w -= f
        else:
            h -= f
    while w * h < grid.min_pixels:
        w, h = w + f, h + f
    return w, h
