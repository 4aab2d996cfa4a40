"""Markdown and JSON blocks of multi-column scans in the plain text's reading order.

A real tesseract worker reads each scan twice: as JSON (the plain text and the blocks)
and as Markdown. The known sentences of each page, given in the order a reader reads
them (column by column), are found in that same order in the plain text, in the
Markdown and in the blocks. The scans:

- a four-column magazine page drawn here (`tests.image_fixtures.magazine_page`): a
  title and a deck across the columns, a photograph over columns three and four,
  gutters of 12 pt and ragged column ends. The layout analysis gives columns one and
  two as one block;
- dig_multicolumn_3p.pdf (two columns), read with `mode=ocr`;
- a page of UNLV's magazine set (tesseract-ocr/test testing/8071_093.3B.tif: a spread
  of four columns, a photograph and a title across both pages). The layout analysis
  gives columns one and two, and three and four, as blocks of two columns each.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from devkit.corpus import corpus_addition
from tasks.client import OcrClient
from tests.harness import Worker, corpus
from tests.image_fixtures import MAGAZINE_COLUMNS, MAGAZINE_DECK, MAGAZINE_TITLE, magazine_page

pytestmark = pytest.mark.slow

UNLV_PAGE = "scan_unlv_8071_093.tif"
# tesseract-ocr/test testing/8071_093.3B.tif (Apache-2.0): not in the shared corpus yet.
UNLV_SOURCE = "tesseract-ocr/test, testing/8071_093.3B.tif, Apache-2.0"


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., Worker]) -> Worker:
    return start_worker(OCR_ENGINE="tesseract", OCR_CONCURRENCY="1", OCR_CACHE_RESULTS="0")


def read(client: OcrClient, source: Any, **options: Any) -> tuple[list[dict[str, Any]],
                                                                  list[dict[str, Any]]]:
    """The pages of `source` as JSON (plain text and blocks) and as Markdown."""
    out = []
    for output in ("json", "markdown"):
        job = client.submit(source, engine="tesseract", output=output, **options)
        result = client.wait([job], timeout=600)[job]
        assert result["status"] == "SUCCESS", result
        out.append(result["pages"])
    return out[0], out[1]


def order(text: str, phrases: list[str]) -> list[str]:
    """`phrases` in the order `text` holds them (its whitespace as single spaces)."""
    flat = " ".join(text.split())
    missing = [p for p in phrases if p not in flat]
    assert not missing, (missing, text)
    return sorted(phrases, key=flat.index)


def assert_read_in_order(pages: tuple[list[dict[str, Any]], list[dict[str, Any]]],
                         phrases: list[list[str]]) -> None:
    """Each page's phrases in the given order in its plain text, Markdown and blocks."""
    as_json, as_markdown = pages
    for page, markdown, known in zip(as_json, as_markdown, phrases, strict=True):
        assert page["source"] == markdown["source"] == "ocr"
        blocks = "\n\n".join(b["text"] for b in page["structure"]["blocks"])
        assert order(page["text"], known) == known
        assert order(markdown["text"], known) == known
        assert order(blocks, known) == known


def test_drawn_magazine_page_column_by_column(worker: Worker, client: OcrClient) -> None:
    known = [MAGAZINE_TITLE, MAGAZINE_DECK,
             "lantern light and call to each", "quiet again. Only the baker is",
             "which painters have praised for", "keeper will tell anyone who",
             "every village along this coast", "harbour master raises a red",
             "Children race paper boats", "passengers of the year are"]
    drawn = " ".join(" ".join(column) for column in MAGAZINE_COLUMNS)
    assert all(" ".join(p.split()) in drawn for p in known[2:])
    assert_read_in_order(read(client, magazine_page(), filename="magazine.png"), [known])


def test_two_column_pdf_read_by_ocr_column_by_column(worker: Worker,
                                                      client: OcrClient) -> None:
    # page 1: the left column ends "Donec nonummy", the right begins "pellentesque
    # ante"; page 2: the left ends "in faucibus orci", the right begins "luctus et"
    known = [["Abstract", "Lorem ipsum dolor sit amet", "Donec nonummy",
              "pellentesque ante", "Quisque ullamcorper"],
             ["lacus vel est", "Sed commodo posuere", "in faucibus orci",
              "luctus et ultrices", "Suspendisse vitae elit"]]
    pages = read(client, corpus("dig_multicolumn_3p.pdf"), mode="ocr", pages="1-2")
    assert_read_in_order(pages, known)


def test_unlv_magazine_spread_column_by_column(worker: Worker, client: OcrClient) -> None:
    known = ["wandered around the house", "questioned her, she would answer",  # column 1
             "He comforted her", "special assistant in the office",  # column 2
             "board chairman of CIGNA", "clinical psychologist whose book",
             "rooted in the bedrock", "Kenneth Meade, pastor of the",  # column 3
             "needed assurance and",
             "assemble a tricycle he had just", "Ziglar finished putting together",  # 4
             "Fathers might also consider a", "for a father to convey affection",
             "What Kids Need Most in a Dad"]  # the title across the spread's foot
    as_json, as_markdown = pages = read(client, corpus_addition(UNLV_PAGE, UNLV_SOURCE))
    assert_read_in_order(pages, [known])
    # a line inside two overlapping blocks is written once
    assert " ".join(as_markdown[0]["text"].split()).count("years old.") == 1
