"""The repetition guard: a generation stuck in a loop is stopped, token by token.

`RepetitionGuard` on token ids (mlx-vlm), `TextPieces` for a server that streams text,
not tokens (vlm-api). Pure: runs in worker pool children and in tests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


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
