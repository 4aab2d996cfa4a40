"""A page's lines from its stored words, and corrected lines put back into its text.

Pure functions over a page of the JSON result (`PageRecord.to_json()`), called by
tasks/lifecycle/page_views.py in the `api` process. A page's `words` (in the pixels of
the image the engine read: turned upright and deskewed) are grouped into lines in the
engine's reading order: a word starts a new line where it does not continue the
current one to the right on the same band. Line ids are `p<page>-l<index>` (1-based),
the same on every read of the same stored result. A page without words (a
vision-language model's, a text layer's) has one line per line of its text, with no
box and no confidence.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tasks.pipeline._geometry import rotated_size

Box = tuple[int, int, int, int]
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class PageLine:
    """One line of a page: its words (JSON word boxes), text, box and mean confidence."""

    id: str
    text: str
    box: Box | None
    confidence: float | None
    words: tuple[Mapping[str, Any], ...]


def line_id(page: int, index: int) -> str:
    return f"p{page}-l{index}"


def _continues(line: list[Mapping[str, Any]], word: Mapping[str, Any]) -> bool:
    last = line[-1]["box"]
    x0, y0, _, y1 = word["box"]
    top = min(w["box"][1] for w in line)
    bottom = max(w["box"][3] for w in line)
    middle = (y0 + y1) / 2
    return x0 >= last[0] and (top <= middle <= bottom
                              or y0 <= (top + bottom) / 2 <= y1)


def group_words(words: Sequence[Mapping[str, Any]]) -> list[list[Mapping[str, Any]]]:
    """The words in lines, in the engine's order (tesseract's: block, line, word)."""
    lines: list[list[Mapping[str, Any]]] = []
    for word in words:
        if lines and _continues(lines[-1], word):
            lines[-1].append(word)
        else:
            lines.append([word])
    return lines


def union_box(boxes: Sequence[Sequence[int]]) -> Box:
    return (min(int(b[0]) for b in boxes), min(int(b[1]) for b in boxes),
            max(int(b[2]) for b in boxes), max(int(b[3]) for b in boxes))


def page_lines(page: Mapping[str, Any]) -> list[PageLine]:
    """The page's lines as the engine read them (no correction applied)."""
    number = int(page["number"])
    words = page.get("words") or []
    given = page.get("vlm") is None and page.get("text_layer") is None
    if words:
        out = []
        for index, line in enumerate(group_words(words), start=1):
            confidence = None
            if given and page.get("source", "ocr") == "ocr":
                confidence = round(sum(min(max(float(w["confidence"]), 0.0), 100.0)
                                       for w in line) / len(line) / 100, 3)
            out.append(PageLine(line_id(number, index), " ".join(str(w["text"]) for w in line),
                                union_box([w["box"] for w in line]), confidence, tuple(line)))
        return out
    texts = [t.strip() for t in str(page.get("text", "")).splitlines()]
    return [PageLine(line_id(number, i), t, None, None, ())
            for i, t in enumerate((t for t in texts if t), start=1)]


def read_size(page: Mapping[str, Any]) -> tuple[int, int] | None:
    """The size of the image the engine read (the input page turned and deskewed)."""
    size = page.get("image_size")
    if not size:
        return None
    upright = rotated_size((float(size[0]), float(size[1])), float(page.get("rotation") or 0))
    final = rotated_size(upright, float(page.get("skew") or 0.0))
    return round(final[0]), round(final[1])


def corrected_words(text: str, line: PageLine) -> list[dict[str, Any]]:
    """Word boxes for a corrected line (JSON words).

    The read words' boxes where there are as many words, else the line's box shared
    out by the words' lengths.
    """
    parts = text.split()
    if not parts or line.box is None:
        return []
    if len(parts) == len(line.words):
        return [{"text": p, "box": list(w["box"]), "confidence": 100.0}
                for p, w in zip(parts, line.words, strict=True)]
    x0, y0, x1, y1 = line.box
    total = sum(len(p) for p in parts) + len(parts) - 1
    out, start = [], 0
    for part in parts:
        left = x0 + (x1 - x0) * start / total
        right = x0 + (x1 - x0) * (start + len(part)) / total
        out.append({"text": part, "box": [int(left), y0, max(int(left) + 1, int(right)), y1],
                    "confidence": 100.0})
        start += len(part) + 1
    return out


def _normal(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


def corrected_text(text: str, lines: Sequence[PageLine], changes: Mapping[str, str]) -> str:
    """The page's text with the lines `changes` names (line id -> new text) put in place.

    Every line is looked for in the text in reading order, from where the line before
    it was found: a row that is the line itself first, else the line within a longer
    row (a paragraph's, a Markdown heading's). A page whose changed lines cannot all be
    found is given as its lines, one a line.
    """
    rows = text.split("\n")
    at = (0, 0)
    for line in lines:
        needle = _normal(line.text)
        found = _find(rows, needle, at) if needle else None
        if found is None:
            if line.id in changes:
                return "\n".join(changes.get(each.id, each.text) for each in lines)
            continue
        index, start, whole = found
        if line.id in changes:
            row = rows[index] if whole else _normal(rows[index])
            new = changes[line.id]
            rows[index] = row.replace(row.strip(), new, 1) if whole else \
                row[:start] + new + row[start + len(needle):]
            at = (index + 1, 0) if whole else (index, start + len(new))
        else:
            at = (index + 1, 0) if whole else (index, start + len(needle))
    return "\n".join(rows)


def _find(rows: Sequence[str], needle: str, at: tuple[int, int]
          ) -> tuple[int, int, bool] | None:
    """(row, start, whole row) of `needle` in `rows` from `at` (row, column of its text)."""
    first, column = at
    for index in range(first, len(rows)):
        if _normal(rows[index]) == needle and (index > first or column == 0):
            return index, 0, True
    for index in range(first, len(rows)):
        start = _normal(rows[index]).find(needle, column if index == first else 0)
        if start >= 0:
            return index, start, False
    return None


def _replace(row: str, needle: str, new: str) -> str:
    if needle in row:
        return row.replace(needle, new, 1)
    return _normal(row).replace(needle, new, 1)


def replaced_in(text: str, old: str, new: str) -> str:
    """`text` with the first row holding `old` (spaces aside) holding `new` instead."""
    needle = _normal(old)
    if not needle:
        return text
    rows = text.split("\n")
    for index, row in enumerate(rows):
        if needle in _normal(row):
            rows[index] = _replace(row, needle, new)
            return "\n".join(rows)
    return text
