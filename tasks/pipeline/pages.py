"""Page selections such as "1-3,7" (pure functions, used by clients and workers)."""

from __future__ import annotations

from tasks.errors import NoPages, TooManyPages
from tasks.records.request import page_range


def select_pages(spec: str | None, count: int, max_pages: int) -> list[int]:
    """1-based page numbers chosen by `spec` (None or "" for all) out of `count` pages."""
    if count <= 0:
        raise NoPages()
    if not spec or not spec.strip():
        numbers = list(range(1, count + 1))
    else:
        chosen: set[int] = set()
        for part in spec.split(","):
            first, last = page_range(part, count)  # the syntax: records/request.py
            chosen.update(range(first, last + 1))
        numbers = sorted(chosen)
    if len(numbers) > max_pages:
        raise TooManyPages(f"{len(numbers)} pages selected, the limit is {max_pages}")
    return numbers

