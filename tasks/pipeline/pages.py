"""Page selections such as "1-3,7" (pure functions, used by clients and workers)."""

from __future__ import annotations

import re

from tasks.errors import InvalidPages, NoPages, TooManyPages

_PART = re.compile(r"^\s*(\d+)?\s*(-)?\s*(\d+)?\s*$")


def select_pages(spec: str | None, count: int, max_pages: int) -> list[int]:
    """1-based page numbers chosen by `spec` (None or "" for all) out of `count` pages."""
    if count <= 0:
        raise NoPages()
    if not spec or not spec.strip():
        numbers = list(range(1, count + 1))
    else:
        chosen: set[int] = set()
        for part in spec.split(","):
            first, last = _parse_part(part, count)
            chosen.update(range(first, last + 1))
        numbers = sorted(chosen)
    if len(numbers) > max_pages:
        raise TooManyPages(f"{len(numbers)} pages selected, the limit is {max_pages}")
    return numbers


def _parse_part(part: str, count: int) -> tuple[int, int]:
    match = _PART.match(part)
    if not match or not (match.group(1) or match.group(3)):
        raise InvalidPages(f"{part.strip()!r} is not a page or range like 3 or 1-5")
    start, dash, end = match.groups()
    first = int(start) if start else 1
    last = (int(end) if end else count) if dash else first
    if first < 1 or last < first:
        raise InvalidPages(f"{part.strip()!r} is not an increasing range of pages from 1")
    if first > count:
        raise InvalidPages(f"page {first} is beyond the last page ({count})")
    return first, min(last, count)
