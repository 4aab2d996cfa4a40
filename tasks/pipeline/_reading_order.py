"""A page's blocks in reading order: full-width blocks in turn, columns one after another.

Pure geometry on boxes (anything with x0, y0, x1, y1), run in worker children by
tasks/pipeline/structure.py on the blocks of PyMuPDF's layout analysis, whose own
order can take a paragraph of the right column before the left column has ended
(dig_multicolumn_3p page 2).

A block that spans columns (its width overlaps two blocks that stand side by side:
apart horizontally, at the same height) is read where it stands, top to bottom; the
blocks between two such blocks form a band, read column by column (blocks that overlap
horizontally, transitively, are one column), left to right, each column top to bottom
and ordered the same way inside.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

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
