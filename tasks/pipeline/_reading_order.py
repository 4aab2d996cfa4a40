"""A page's blocks in reading order: full-width blocks in turn, columns one after another.

Pure geometry on boxes (anything with x0, y0, x1, y1), run in worker children by
tasks/pipeline/structure.py on the blocks of PyMuPDF's layout analysis, whose own
order can take a paragraph of the right column before the left column has ended
(dig_multicolumn_3p page 2). The same module cuts a block that holds columns side by
side into its columns first (`block_columns`, on the block's text lines): the analysis
gives a magazine's columns, parted by a narrow gutter, as one block.

A block that spans columns (its width overlaps two blocks that stand side by side:
apart horizontally, at the same height) is read where it stands, top to bottom; the
blocks between two such blocks form a band, read column by column (blocks that overlap
horizontally, transitively, are one column), left to right, each column top to bottom
and ordered the same way inside.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

_TOUCH = 1.0  # points two boxes must share horizontally to be in one column


class Box(Protocol):
    x0: float
    y0: float
    x1: float
    y1: float


B = TypeVar("B", bound=Box)


def reading_order(boxes: Sequence[B]) -> list[B]:
    """`boxes` in reading order (see the module's docstring)."""
    if len(boxes) <= 1:
        return list(boxes)
    spanning = [b for b in boxes if _spans(b, boxes)]
    if not spanning:
        columns = _columns(boxes)
        if len(columns) == 1:
            return sorted(boxes, key=lambda b: (b.y0, b.x0))
        return [b for column in columns for b in reading_order(column)]
    out: list[B] = []
    band: list[B] = []
    for box in sorted(boxes, key=lambda b: (b.y0, b.x0)):
        if any(box is s for s in spanning):
            out += _band(band)
            band = []
            out.append(box)
        else:
            band.append(box)
    return out + _band(band)


def _band(band: list[B]) -> list[B]:
    return [b for column in _columns(band) for b in reading_order(column)]


def _overlap(a: Box, b: Box) -> bool:
    return min(a.x1, b.x1) - max(a.x0, b.x0) > _TOUCH


def _side_by_side(a: Box, b: Box) -> bool:
    """Two boxes apart horizontally, at the same height (in two columns)."""
    return not _overlap(a, b) and min(a.y1, b.y1) > max(a.y0, b.y0)


def _spans(box: Box, boxes: Sequence[Box]) -> bool:
    """Whether `box` overlaps horizontally two boxes that stand side by side."""
    under = [b for b in boxes if b is not box and _overlap(box, b)]
    return any(_side_by_side(a, b) for i, a in enumerate(under) for b in under[i + 1:])


def _columns(boxes: Sequence[B]) -> list[list[B]]:
    """Boxes grouped by horizontal overlap (transitively), left to right."""
    groups: list[list[B]] = []
    for box in sorted(boxes, key=lambda b: b.x0):
        joined = [g for g in groups if any(_overlap(box, b) for b in g)]
        merged = [box] + [b for g in joined for b in g]
        groups = [g for g in groups if not any(g is j for j in joined)] + [merged]
    return sorted(groups, key=lambda g: min(b.x0 for b in g))


# pymupdf4llm's text line: {"bbox": (x0, y0, x1, y1), "spans": [{"bbox": ..., "text":
# ...}, ...]}, its spans left to right.
Line = dict[str, Any]
# Characters a column's lines hold at the median: prose, where a column of bullet glyphs
# or item numbers beside their text holds one to three.
_PROSE = 10
# The narrowest gutter, in ems of the block's type (its spans' median size): a
# magazine's is about one em (12 pt beside 9.5 pt type), the space between two words
# of justified text a quarter to half of one.
_GUTTER = 0.75


def block_columns(lines: Sequence[Line]) -> list[list[Line]]:
    """A block's lines read column by column: each column's lines top to bottom.

    The layout analysis can give two columns side by side as one block, whose lines
    then each join a line of both columns ("shows that tradi- one day when he was
    trying to"). A gutter is a strip of the block, `_GUTTER` ems wide or wider, that
    none of its spans crosses: the block is cut at its gutters when each column they
    part holds at least three lines of prose (`_PROSE` characters at the median), a
    line of each column being the spans of a line on its side; else it is one column,
    its lines as given (two lines a side: the cases of a formula, "x, falls ..."). A
    line across the gutter leaves none: such a block is not cut.
    """
    spans = [(span, number) for number, line in enumerate(lines) for span in line["spans"]]
    if not spans:
        return [list(lines)]
    gutter = _GUTTER * statistics.median(float(s.get("size") or 0) for s, _ in spans)
    groups: list[list[tuple[Any, int]]] = []
    right = 0.0
    for span, number in sorted(spans, key=lambda s: float(s[0]["bbox"][0])):
        x0, x1 = float(span["bbox"][0]), float(span["bbox"][2])
        if groups and x0 - right < gutter:
            groups[-1].append((span, number))
            right = max(right, x1)
        else:
            groups.append([(span, number)])
            right = x1
    if len(groups) < 2:
        return [list(lines)]
    found = [_column(lines, group) for group in groups]
    if not all(len(column) >= 3 and _prose(column) for column in found):
        return [list(lines)]
    return found


def _column(lines: Sequence[Line], group: list[tuple[Any, int]]) -> list[Line]:
    """The pieces of `lines` that `group`'s spans make, top to bottom."""
    out = []
    for number, line in enumerate(lines):
        mine = [span for span, n in group if n == number]
        if not mine:
            continue
        part = [span for span in line["spans"] if any(span is m for m in mine)]
        out.append({**line, "spans": part, "bbox": (
            min(float(s["bbox"][0]) for s in part), float(line["bbox"][1]),
            max(float(s["bbox"][2]) for s in part), float(line["bbox"][3]))})
    return out


def _prose(pieces: list[Line]) -> bool:
    return statistics.median(len("".join(str(s["text"]) for s in p["spans"]).strip())
                             for p in pieces) >= _PROSE
