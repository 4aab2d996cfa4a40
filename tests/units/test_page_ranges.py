"""Page selection: `pages` ranges and the page-count limits."""

from __future__ import annotations

import pytest

from tasks.errors import InvalidPages, NoPages, TooManyPages
from tasks.records.request import select_pages


@pytest.mark.parametrize("spec,expected", [
    (None, [1, 2, 3, 4, 5]), ("", [1, 2, 3, 4, 5]), ("2", [2]), ("1-3,5", [1, 2, 3, 5]),
    ("4-", [4, 5]), ("-2", [1, 2]), ("3-9", [3, 4, 5]), (" 5 , 1 ", [1, 5]), ("2,2", [2]),
])
def test_select_pages(spec: str | None, expected: list[int]) -> None:
    assert select_pages(spec, 5, 100) == expected


@pytest.mark.parametrize("spec", ["0", "6", "3-1", "a", "1-2-3", ",", "1.5"])
def test_select_pages_rejects(spec: str) -> None:
    with pytest.raises(InvalidPages):
        select_pages(spec, 5, 100)


def test_select_pages_limits() -> None:
    with pytest.raises(NoPages):
        select_pages(None, 0, 10)
    with pytest.raises(TooManyPages):
        select_pages(None, 11, 10)
