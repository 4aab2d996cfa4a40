"""A model's words placed on another engine's word boxes of the same page.

For the word-box outputs of the VLM engines (searchable PDF, hOCR, ALTO): the model
reads the text, tesseract gives the boxes (tasks/pipeline/page_reading.py). Pure: runs
in worker pool children and in tests.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from tasks.engines.base import Word


def align_words(text: str, boxes: Sequence[Word]) -> tuple[Word, ...]:
    """The words of `text` placed on `boxes` (`place_words`), without the count."""
    return place_words(text, boxes)[0]


def place_words(text: str, boxes: Sequence[Word]) -> tuple[tuple[Word, ...], int]:
    """The words of `text` (a model's read) placed on another engine's word boxes.

    The two word sequences are aligned with difflib (case and punctuation ignored):
    matched words take their box; a run of replaced words shares the boxes of the run
    it replaces, in order; the model's words with no counterpart join the box of the
    box before them (the first box, at the start), so that every word of `text` is in the
    layer; boxed words the model did not read are dropped. Returns the placed words and
    how many of the model's words the alignment could not place (those with no
    counterpart, which rode on a neighbour's box; every word when there are no boxes).
    """
    words = text.split()
    if not words or not boxes:
        return (), len(words)
    keys_a = [_key(w.text) for w in boxes]
    keys_b = [_key(w) for w in words]
    placed: list[list[str]] = [[] for _ in boxes]
    leading: list[str] = []
    unplaced = 0
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
            unplaced += b1 - b0
        elif op == "insert":
            placed[a0 - 1].extend(words[b0:b1])  # already holds its own words
            unplaced += b1 - b0
    placed[0][:0] = leading
    return tuple(Word(" ".join(texts), box.box, box.confidence)
                 for texts, box in zip(placed, boxes, strict=True) if texts), unplaced


def _key(word: str) -> str:
    return "".join(ch for ch in word.casefold() if ch.isalnum()) or word
