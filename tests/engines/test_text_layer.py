"""A born-digital PDF is read in one text pass.

Planning builds each page's text once (`read_text_layer`): what it keeps is exactly
`page.get_text("text")`, on every text PDF of the corpus, with the visible/invisible
decisions the former `get_texttrace` pass made (the corpus's OCR layers included).
"""

from __future__ import annotations

from typing import Any

import pymupdf
import pytest

from tasks.pipeline.pdf import plan_pdf, read_text_layer, text_chars
from tasks.settings import Settings
from tests.cer import cer
from tests.harness import corpus, ground_truth

# The corpus PDFs with a text layer, and the layer planning finds on each page.
TEXT_PDFS = {
    "dig_crazyones.pdf": ["visible"],
    "dig_multicolumn_3p.pdf": ["visible"] * 3,
    "dig_tracemonkey_14p.pdf": ["visible"] * 14,
    "dig_geotopo_117p.pdf": ["visible"] * 117,
    "mixed_vicksburg_crazyones_7p.pdf": ["invisible", "visible"] + ["invisible"] * 5,
    "scan_vicksburg_ocrlayer_6p.pdf": ["invisible"] * 6,
}


@pytest.mark.parametrize("name", sorted(TEXT_PDFS))
def test_planning_keeps_get_text_output_and_layers(name: str) -> None:
    data = corpus(name).read_bytes()
    plan = plan_pdf(data, None, None, "auto", Settings.from_env({}))
    try:
        with pymupdf.open(stream=data, filetype="pdf") as doc:
            expected = {n: page.get_text("text") for n, page in enumerate(doc, start=1)}
        assert {n: text for n, (text, _) in plan.text_pages.items()} == expected
        assert [layer for _, (_, layer) in sorted(plan.text_pages.items())] == TEXT_PDFS[name]
        assert plan.ocr_pages == [] and plan.blank_pages == []
        text = "\f".join(t.rstrip() for _, (t, _) in sorted(plan.text_pages.items()))
        assert cer(ground_truth(name), text) == 0.0  # the ground truth is the text layer
    finally:
        plan.doc.close()


def test_planning_reads_each_page_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """One MuPDF text pass per page: no `get_texttrace`, one text page built."""
    built: list[int] = []
    get_textpage = pymupdf.Page.get_textpage

    def counted(page: Any, *args: Any, **kwargs: Any) -> Any:
        built.append(page.number)
        return get_textpage(page, *args, **kwargs)

    def refused(page: Any) -> Any:
        raise AssertionError("planning ran a second pass (get_texttrace)")

    monkeypatch.setattr(pymupdf.Page, "get_textpage", counted)
    monkeypatch.setattr(pymupdf.Page, "get_texttrace", refused)
    for name in ("mixed_vicksburg_crazyones_7p.pdf", "dig_tracemonkey_14p.pdf"):
        built.clear()
        plan = plan_pdf(corpus(name).read_bytes(), None, None, "auto", Settings.from_env({}))
        plan.doc.close()
        assert sorted(built) == list(range(len(TEXT_PDFS[name])))


def text_modes_pdf() -> bytes:
    """One page per way of drawing text, and a page whose text lies off the page."""
    doc = pymupdf.open()
    for options in ({}, {"render_mode": 3}, {"fill_opacity": 0}, {"render_mode": 7},
                    {"render_mode": 2}, {"fill_opacity": 0.5}):
        doc.new_page().insert_text((72, 72), "Hello world again", **options)
    doc.new_page().insert_text((72, -72), "Hello world again")
    return bytes(doc.tobytes())


def test_characters_by_how_the_text_is_drawn() -> None:
    with pymupdf.open(stream=text_modes_pdf(), filetype="pdf") as doc:
        counts = [text_chars(page) for page in doc]
        assert counts == [
            (17, 0),  # filled: visible
            (0, 17),  # render mode 3: an invisible OCR layer
            (0, 17),  # fully transparent: invisible
            (0, 0),   # render mode 7, a clip path only: not counted (as get_texttrace)
            (17, 0),  # filled and stroked: counted once
            (17, 0),  # half transparent: visible
            (0, 0),   # off the page: not extracted, not counted
        ]
    with pymupdf.open(corpus("dig_crazyones.pdf")) as doc:
        page = doc[0]
        layer = read_text_layer(page, enough=8)
        assert layer.text == page.get_text("text")
        # Counting stopped at the end of the line that made it enough.
        assert 8 <= layer.visible < text_chars(page)[0]


def test_planning_with_every_kind_of_text_page() -> None:
    settings = Settings.from_env({"OCR_SKIP_BLANK_PAGES": "1"})
    plan = plan_pdf(text_modes_pdf(), None, None, "auto", settings)
    try:
        layers = {n: layer for n, (_, layer) in plan.text_pages.items()}
        assert layers == {1: "visible", 2: "invisible", 3: "invisible", 5: "visible",
                          6: "visible"}
        assert plan.ocr_pages == []
        # A clip path only paints nothing (as before); text off the page neither (it
        # was a "visible" text page with no text when get_texttrace counted it).
        assert plan.blank_pages == [4, 7]
    finally:
        plan.doc.close()
