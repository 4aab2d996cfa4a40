"""Heading levels of a document's Markdown and JSON blocks: numbering first, then type size.

Pure functions, run in worker children by tasks/pipeline/structure.py (the pages read
together) and by tasks/pipeline/documents.py (the pages of all of a job's chunk tasks,
at the merge).

The rule: a title is level 1. A section heading that is numbered ("1",
"1.2", "A.3.1", followed by its words) has its numbering's depth plus one (1 -> 2,
1.2 -> 3, 1.3.1 -> 4, capped at 6). Any other heading is levelled by its type size,
ranked over all the headings read together: a size that numbered headings also have
takes their level (so "Abstract" sits beside "1. Introduction"), the largest other
size is level 2, and each smaller one a level below the size above it. Without a title
box, a first heading that is unnumbered and larger than every other is the title.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

TITLE = 0
"""A title box's entry among a page's heading sizes: level 1, whatever its size."""
_NUMBERED = re.compile(r"^\s*(?:\d{1,2}|[A-Z])((?:\.\d{1,2})*)\.?(?=\s|$)")
_HEADING_LINE = re.compile(r"^(#{1,6}) ")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")


@dataclass(frozen=True)
class Heading:
    """A heading as read: its type size (`TITLE` for a title box) and its text."""

    size: int
    text: str


def number_depth(text: str) -> int:
    """How deep the heading's numbering is: "3. Traces" 1, "3.1 Traces" 2, none 0.

    Numbers have one or two digits (a year starting a heading is no section number); a
    letter counts only with numbers after it ("A.1"), not alone ("A. Smith").
    """
    found = _NUMBERED.match(text)
    if found is None:
        return 0
    if text.lstrip()[0].isalpha() and not found.group(1):
        return 0
    return 1 + found.group(1).count(".")


def levels(headings: Sequence[Heading]) -> list[int]:
    """The level (1-6) of each heading of the pages read together, in reading order."""
    titled = _promoted(headings)
    ranked = [h for i, h in enumerate(headings) if h.size != TITLE and i != titled]
    numbered: dict[int, Counter[int]] = {}
    for heading in ranked:
        depth = number_depth(heading.text)
        if depth:
            numbered.setdefault(heading.size, Counter())[min(depth + 1, 6)] += 1
    by_size: dict[int, int] = {}
    above = 1
    for size in sorted({h.size for h in ranked}, reverse=True):
        if size in numbered:
            by_size[size] = numbered[size].most_common(1)[0][0]
            above = max(above, by_size[size])
        else:
            by_size[size] = above = min(above + 1, 6)
    out = []
    for index, heading in enumerate(headings):
        depth = number_depth(heading.text)
        if heading.size == TITLE or index == titled:
            out.append(1)
        elif depth:
            out.append(min(depth + 1, 6))
        else:
            out.append(by_size[heading.size])
    return out


def _promoted(headings: Sequence[Heading]) -> int | None:
    """The index of a heading that is the title without a title box (0), or None."""
    if not headings or any(h.size == TITLE for h in headings):
        return None
    first = headings[0]
    if number_depth(first.text) or any(h.size >= first.size for h in headings[1:]):
        return None
    return 0


def heading_lines(markdown: str) -> list[int]:
    """The indices of `markdown`'s ATX heading lines (outside fenced code blocks).

    The page Markdown of structure.py writes every heading as one such line, and no
    other block line starts with `#`.
    """
    found = []
    fenced = False
    for index, line in enumerate(markdown.split("\n")):
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced and _HEADING_LINE.match(line):
            found.append(index)
    return found


def heading_texts(markdown: str) -> list[str]:
    """The text of each heading line of `markdown`, in order."""
    lines = markdown.split("\n")
    return [lines[i].lstrip("#").strip() for i in heading_lines(markdown)]


def set_levels(markdown: str, new: Sequence[int]) -> str:
    """`markdown` with its k-th heading line at level `new[k]`."""
    lines = markdown.split("\n")
    for index, level in zip(heading_lines(markdown), new, strict=False):
        lines[index] = "#" * level + " " + lines[index].lstrip("#").lstrip()
    return "\n".join(lines)
