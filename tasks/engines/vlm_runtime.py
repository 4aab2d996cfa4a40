"""Pure helpers of the VLM engine: the page budget and the repetition guard.

No MLX here (tasks/engines/mlx_vlm.py is the only module that imports it), so these run
and are tested anywhere. Used in worker pool children by the mlx-vlm engine, and by the
benchmark.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


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


@dataclass
class RepetitionGuard:
    """Stops a generation stuck in a loop: the tail of its tokens repeats one block.

    A loop is found when the last `max(min_span, min_repeats * p)` tokens repeat a block
    of `p` tokens (p up to `max_period`): the same token over and over, or the same line
    or table row again and again. Legitimate repetition on a page (a dot leader, a rule
    of dashes, a few identical table rows) is shorter than `min_span` tokens or has fewer
    than `min_repeats` repeats. One O(max_period) update per token.
    """

    max_period: int = 128
    min_repeats: int = 4
    min_span: int = 160
    tokens: list[int] = field(default_factory=list)
    _runs: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._runs = [0] * (self.max_period + 1)

    def feed(self, token: int) -> bool:
        """Add the next generated token; True when the tail is a loop."""
        tokens = self.tokens
        tokens.append(token)
        n = len(tokens)
        found = False
        for p in range(1, min(self.max_period, n - 1) + 1):
            if tokens[n - 1 - p] == token:
                self._runs[p] += 1
                # _runs[p] + p tokens in a row have period p.
                if self._runs[p] + p >= max(self.min_span, self.min_repeats * p):
                    found = True
            else:
                self._runs[p] = 0
        return found

    def period(self) -> int | None:
        """The shortest period of the loop found, if any (for logs and tests)."""
        for p in range(1, self.max_period + 1):
            if self._runs[p] + p >= max(self.min_span, self.min_repeats * p):
                return p
        return None
