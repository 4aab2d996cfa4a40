"""Pure helpers of the VLM engine: the page budget and the repetition guard.

No MLX here (tasks/engines/mlx_vlm.py is the only module that imports it), so these run
and are tested anywhere. Used in worker pool children by the mlx-vlm engine, and by the
benchmark.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from .base import Word


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


def align_words(text: str, boxes: Sequence[Word]) -> tuple[Word, ...]:
    """The words of `text` (a model's read) placed on another engine's word boxes.

    The two word sequences are aligned with difflib (case and punctuation ignored):
    matched words take their box; a run of replaced words shares the boxes of the run
    it replaces, in order; the model's words with no counterpart join the box of the
    box before them (the first box, at the start), so that every word of `text` is in the
    layer; boxed words the model did not read are dropped.
    """
    words = text.split()
    if not words or not boxes:
        return ()
    keys_a = [_key(w.text) for w in boxes]
    keys_b = [_key(w) for w in words]
    placed: list[list[str]] = [[] for _ in boxes]
    leading: list[str] = []
    matcher = difflib.SequenceMatcher(None, keys_a, keys_b, autojunk=False)
    for op, a0, a1, b0, b1 in matcher.get_opcodes():
        if op == "equal" or (op == "replace" and a1 - a0 == b1 - b0):
            for k in range(b1 - b0):
                placed[a0 + k].append(words[b0 + k])
        elif op == "replace":
            for k in range(b1 - b0):
                placed[a0 + k * (a1 - a0) // (b1 - b0)].append(words[b0 + k])
        elif op == "insert" and a0 == 0:
            leading.extend(words[b0:b1])
        elif op == "insert":
            placed[a0 - 1].extend(words[b0:b1])  # already holds its own words
    placed[0][:0] = leading
    return tuple(Word(" ".join(texts), box.box, box.confidence)
                 for texts, box in zip(placed, boxes, strict=True) if texts)


def _key(word: str) -> str:
    return "".join(ch for ch in word.casefold() if ch.isalnum()) or word


# Text pieces the repetition guard counts when a server streams text, not tokens: a
# word with its leading spaces (long words cut every 8 characters), one other character
# each, or a run of line breaks. A loop repeats its pieces as it repeats its tokens.
_PIECE = re.compile(r"[ \t]*\w{1,8}|\n+|[ \t]+|[^\w\s]|\s")


class TextPieces:
    """Streamed text cut into pieces that do not depend on how the server split it.

    A server may merge several tokens into one delta (vLLM does when the client lags),
    so a delta is no token. The text is cut by `_PIECE` instead; the last piece of what
    has arrived is held back until more text shows where it ends, so that "hel" + "lo"
    gives the same pieces as "hello". `feed` returns the pieces completed so far.
    """

    def __init__(self) -> None:
        self._held = ""
        self._ids: dict[str, int] = {}

    def feed(self, text: str) -> list[int]:
        """Ids of the pieces `text` completes (the same piece, the same id)."""
        pieces = _PIECE.findall(self._held + text)
        self._held = pieces.pop() if pieces else ""
        return [self._ids.setdefault(piece, len(self._ids)) for piece in pieces]

    def end(self) -> list[int]:
        """Ids of what is still held back, at the end of the stream."""
        held, self._held = self._held, ""
        return [self._ids.setdefault(held, len(self._ids))] if held else []
