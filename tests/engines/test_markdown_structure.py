"""Markdown that a CommonMark parser reads as a reader sees the document.

In-process (no worker): the pure rules (heading levels, reading order, columns within a
block, list items, page joins) on made-up inputs, and PyMuPDF's layout analysis on a
made-up PDF with unmapped bullet glyphs and on the corpus' two-column PDF and IBM
Redpaper. The corpus documents through real workers, parsed by markdown-it-py, are in
tests/engines/test_structure.py.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pymupdf
import pytest
from markdown_it import MarkdownIt

from devkit.corpus import corpus_addition
from tasks.pipeline._headings import TITLE, Heading, levels, number_depth
from tasks.pipeline._markdown import list_items
from tasks.pipeline._reading_order import reading_order
from tasks.records.results import DocumentResult, PageRecord
from tests.harness import corpus

# docling's 18-page sample of IBM's Redpaper REDP-5110 (docling tests/data/pdf/
# redp5110_sampled.pdf): page 8's table lists values behind BookMaster's bullets.
REDPAPER = "dig_redp5110_sampled_18p.pdf"
REDPAPER_SOURCE = "DS4SD/docling, tests/data/pdf/redp5110_sampled.pdf, MIT"


def parse(markdown: str) -> list[Any]:
    return MarkdownIt("commonmark").enable("table").parse(markdown)


def headings(markdown: str) -> list[tuple[int, str]]:
    """(level, inline text) of each heading a CommonMark parser finds."""
    tokens = parse(markdown)
    return [(int(t.tag[1]), tokens[i + 1].content) for i, t in enumerate(tokens)
            if t.type == "heading_open"]


def test_numbered_headings_nest_by_number_and_others_by_size() -> None:
    found = [Heading(TITLE, "A Paper"), Heading(12, "Abstract"),
             Heading(12, "1. Introduction"), Heading(10, "1.1 Scope"),
             Heading(10, "Type specialization."), Heading(9, "1.1.1 Detail"),
             Heading(11, "Unnumbered between"), Heading(12, "2024 in review"),
             Heading(9, "A.2 Appendix part"), Heading(12, "A. Smith")]
    assert levels(found) == [1, 2, 2, 3, 3, 4, 3, 2, 3, 2]
    assert [number_depth(h.text) for h in found] == [0, 0, 1, 2, 0, 3, 0, 0, 2, 0]
    # without numbers: the largest size is ##, each smaller one a level deeper
    assert levels([Heading(14, "Part"), Heading(12, "Chapter"), Heading(10, "Note"),
                   Heading(12, "Chapter")]) == [1, 2, 3, 2]  # no title box: the first,
    # larger than all, is the title
    assert levels([Heading(12, "Intro"), Heading(14, "Big"), Heading(12, "End")]) \
        == [3, 2, 3]


@dataclass
class Box:
    x0: float
    y0: float
    x1: float
    y1: float
    name: str


def test_reading_order_columns_one_after_another() -> None:
    # dig_multicolumn_3p page 1's blocks: a centred title, author and date, then a left
    # column that starts with its "Abstract" heading beside the right column's top.
    boxes = [Box(156, 155, 455, 170, "title"), Box(277, 187, 335, 196, "name"),
             Box(265, 211, 346, 221, "date"), Box(311, 249, 539, 388, "R1"),
             Box(72, 246, 134, 256, "abstract"), Box(72, 271, 301, 292, "L1"),
             Box(311, 398, 539, 514, "R2"), Box(72, 295, 301, 505, "L2"),
             Box(72, 510, 301, 675, "L3"), Box(311, 522, 539, 675, "R3"),
             Box(72, 690, 539, 700, "full-width note")]
    assert [b.name for b in reading_order(boxes)] == [
        "title", "name", "date", "abstract", "L1", "L2", "L3", "R1", "R2", "R3",
        "full-width note"]
    # page 2: the right column's top paragraph beside the left column's first two
    page2 = [Box(72, 128, 235, 137, "L1"), Box(72, 140, 301, 268, "L2"),
             Box(311, 128, 539, 232, "R1"), Box(72, 271, 301, 424, "L3"),
             Box(311, 546, 539, 675, "R2"), Box(72, 582, 301, 675, "L4")]
    assert [b.name for b in reading_order(page2)] == ["L1", "L2", "L3", "L4", "R1", "R2"]


def test_a_block_of_columns_side_by_side_is_cut_into_them() -> None:
    """The layout analysis's block over two columns: its lines, column by column.

    The lines join a line of each column, as pymupdf4llm joins spans at one height.
    """
    from tasks.pipeline._reading_order import block_columns

    def row(y: float, *pieces: tuple[float, float, str]) -> dict[str, Any]:
        return {"bbox": (pieces[0][0], y, pieces[-1][1], y + 10),
                "spans": [{"bbox": (x0, y, x1, y + 10), "text": text, "size": 9.5}
                          for x0, x1, text in pieces]}

    left, right = (43.0, 191.0), (203.0, 351.0)  # a gutter of 12 pt beside 9.5 pt type
    block = [row(63 + 11 * i, (*left, f"left column, its line {i}"),
                 (*right, f"right column, its line {i}")) for i in range(4)]
    block.append(row(107, (*left, "the left column's last line")))  # ragged ends
    assert [[" ".join(s["text"] for s in line["spans"]) for line in column]
            for column in block_columns(block)] == [
        [f"left column, its line {i}" for i in range(4)] + ["the left column's last line"],
        [f"right column, its line {i}" for i in range(4)]]
    # not cut: bullet glyphs beside their items, a formula's two cases, and the words of
    # justified text (a span each, as LaTeX's PDFs give them) whose gaps line up
    bullets = [row(100 + 12 * i, (72, 76, "\u2022"), (90, 300, f"item {i} of the list"))
               for i in range(4)]
    cases = [row(100, (72, 200, "U open in R, such that"), (260, 400, "if 0 is not in U")),
             row(112, (72, 200, "U open in X if and only"), (260, 400, "if 0 is in U"))]
    words = [row(100 + 12 * i, (54, 85, "After"), (89, 154, "an instruction is"),
                 (158, 293, f"read from the pipeline {i}")) for i in range(4)]
    for lines in (bullets, cases, words):
        assert block_columns(lines) == [lines]


def line(x0: float, *texts: str, font: str = "Helvetica") -> dict[str, Any]:
    return {"bbox": (x0, 0, 300, 10),
            "spans": [{"text": t, "font": font, "flags": 0, "char_flags": 0, "size": 10}
                      for t in texts]}


def test_unmapped_bullets_start_items_and_are_dropped() -> None:
    def texts(items: list[list[dict[str, Any]]] | None) -> list[str]:
        assert items is not None
        return [" ".join(s["text"] for s in item) for item in items]

    merged = [line(72, "\ufffd\ufffd Extremely large database and"),
              line(80, "overcoming limits to growth"),
              line(72, "\ufffd\ufffd ISV education and enablement"),
              line(72, "\uf0b7", "Private use bullet"),
              line(72, "l", font="Wingdings-Regular"), line(80, "Wingdings disc")]
    assert texts(list_items(merged, listed=True)) == [
        "Extremely large database and overcoming limits to growth",
        "ISV education and enablement", "Private use bullet", "Wingdings disc"]
    # a text block is a list only when it starts with a bullet
    assert list_items([line(72, "Plain words"), line(72, "\u2022 later")], False) is None
    assert texts(list_items([line(72, "\u2022 one"), line(72, "\u2022 two")], False)) \
        == ["one", "two"]
    # a letter l in an ordinary font is a word, not a bullet
    assert list_items([line(72, "l", "is a letter")], False) is None


def test_markdown_pages_joined_as_blocks_text_keeps_form_feeds() -> None:
    pages = [PageRecord(1, "last words of a paragraph: Nam feugiat", source="text-layer"),
             PageRecord(2, "# Heading at the top", source="text-layer"),
             PageRecord(3, "```\nan open fence", source="ocr"),
             PageRecord(4, "|a|b|\n|---|---|\n|1|2|", source="ocr")]
    markdown = DocumentResult(status=None, output="markdown", pages=pages)
    assert markdown.text == ("last words of a paragraph: Nam feugiat\n\n<!-- page 2 -->\n\n"
                             "# Heading at the top\n\n<!-- page 3 -->\n\n```\nan open fence"
                             "\n```\n\n<!-- page 4 -->\n\n|a|b|\n|---|---|\n|1|2|")
    tokens = parse(markdown.text)
    assert headings(markdown.text) == [(1, "Heading at the top")]
    assert sum(t.type == "table_open" for t in tokens) == 1
    paragraphs = [tokens[i + 1].content for i, t in enumerate(tokens)
                  if t.type == "paragraph_open"]
    assert paragraphs == ["last words of a paragraph: Nam feugiat"]
    text = replace(markdown, output="text")
    assert text.text == "\f".join(p.text for p in pages)


def bullets_pdf() -> bytes:
    """A heading, a paragraph, and a list whose bullets are glyphs without Unicode.

    A Type 3 font draws each bullet (a square); its ToUnicode maps two of them to
    U+FFFD (which MuPDF gives as the glyph's code, here U+0001) and two to the private
    use U+F0B7 (Symbol's bullet, as Word's PDFs have it).
    """
    doc = pymupdf.open()
    page = doc.new_page(width=595, height=842)
    page.insert_text((72, 90), "Highlights", fontsize=20, fontname="hebo")
    page.insert_text((72, 130), "This paper covers the following topics of the study "
                                "in some detail, one after the other.", fontsize=10)
    page.insert_text((72, 250), "After the list, a closing paragraph.", fontsize=10)
    proc = doc.get_new_xref()
    doc.update_object(proc, "<<>>")
    doc.update_stream(proc, b"1000 0 0 0 1000 1000 d1 200 300 400 400 re f")
    cmap = doc.get_new_xref()
    doc.update_object(cmap, "<<>>")
    doc.update_stream(cmap, b"/CIDInit /ProcSet findresource begin 12 dict begin begincmap "
                      b"/CMapName /Bullets def 1 begincodespacerange <00> <FF> "
                      b"endcodespacerange 2 beginbfchar <01> <FFFD> <02> <F0B7> endbfchar "
                      b"endcmap CMapName currentdict /CMap defineresource pop end end")
    font = doc.get_new_xref()
    doc.update_object(font, (
        "<< /Type /Font /Subtype /Type3 /FontBBox [0 0 1000 1000] "
        f"/FontMatrix [0.001 0 0 0.001 0 0] /CharProcs << /uniFFFD {proc} 0 R "
        f"/uniF0B7 {proc} 0 R >> /Encoding << /Type /Encoding /Differences "
        "[1 /uniFFFD /uniF0B7] >> /FirstChar 1 /LastChar 2 /Widths [1000 1000] "
        f"/Resources << >> /ToUnicode {cmap} 0 R >>"))
    kind, value = doc.xref_get_key(page.xref, "Resources")
    owner = int(value.split()[0]) if kind == "xref" else page.xref
    prefix = "" if kind == "xref" else "Resources/"
    doc.xref_set_key(owner, prefix + "Font/FB", f"{font} 0 R")
    lines = []
    for n, (code, words) in enumerate(((1, "Extremely large database and overcoming limits"),
                                       (1, "ISV education and enablement"),
                                       (2, "Security of the data at rest"),
                                       (2, "Performance of row and column access"))):
        lines.append(b"BT /FB 10 Tf 72 %d Td <0%d> Tj /helv 10 Tf 14 0 Td (%s) Tj ET"
                     % (842 - 160 - 16 * n, code, words.encode()))
    xref = page.get_contents()[0]
    doc.update_stream(xref, doc.xref_stream(xref) + b"\n" + b"\n".join(lines))
    return bytes(doc.tobytes())


@pytest.fixture(scope="module")
def settings() -> Any:
    from tasks.settings import Settings

    return replace(Settings.from_env({}), structure_chunk_pages=100)


def markdown_of(data: bytes, settings: Any, output: str = "markdown",
                pages: str | None = None) -> list[PageRecord]:
    from tasks.pipeline.documents import planned_pages
    from tasks.pipeline.pdf import plan_pdf

    plan = plan_pdf(data, pages, None, "auto", settings)
    try:
        return planned_pages(plan, settings, output)
    finally:
        plan.doc.close()


def test_pdf_with_unmapped_bullets_gives_list_items(settings: Any) -> None:
    data = bullets_pdf()
    with pymupdf.open(stream=data) as doc:
        plain = doc[0].get_text()
    assert "\x01 Extremely" in plain and "\uf0b7Security" in plain  # as MuPDF reads it
    (page,) = markdown_of(data, settings)
    assert not any(ch in page.text for ch in "\ufffd\uf0b7\x01"), page.text
    tokens = parse(page.text)
    assert headings(page.text) == [(1, "Highlights")]  # no emphasis inside
    items = [tokens[i + 2].content for i, t in enumerate(tokens)
             if t.type == "list_item_open"]
    assert items == ["Extremely large database and overcoming limits",
                     "ISV education and enablement", "Security of the data at rest",
                     "Performance of row and column access"], page.text


def test_redpaper_table_keeps_its_bullets(settings: Any) -> None:
    """Page 8's table of function usage: BookMaster's four pointers, no U+FFFD."""
    pages = markdown_of(Path(corpus_addition(REDPAPER, REDPAPER_SOURCE)).read_bytes(), settings)
    markdown = "\n\n".join(page.text for page in pages)
    assert len(pages) == 18 and "\ufffd" not in markdown
    assert "|USAGE|VARCHAR(7)|Usage setting:<br>\u25ba<br>ALLOWED: The user profile is " \
        "allowed to use the function.<br>\u25ba<br>DENIED: The user profile is not " \
        "allowed to use the function.|" in markdown
    assert markdown.count("\u25ba") == 4
    redpaper = Path(corpus_addition(REDPAPER, REDPAPER_SOURCE)).read_bytes()
    (text,) = markdown_of(redpaper, settings, "text", "8")
    assert "Usage setting:\n\u25ba\nALLOWED" in text.text and "\x02" not in text.text


def test_two_column_pdf_column_by_column_on_every_page(settings: Any) -> None:
    pages = markdown_of(Path(corpus("dig_multicolumn_3p.pdf")).read_bytes(), settings)
    first, second, _ = (p.text for p in pages)
    assert first.index("Abstract") < first.index("Lorem ipsum dolor sit amet") \
        < first.index("Donec nonummy") < first.index("pellentesque ante") \
        < first.index("Quisque ullamcorper")
    # page 2: the left column to its end ("... in faucibus orci"), then the right
    # column, which begins "luctus et ultrices posuere cubilia Curae"
    assert second.index("lacus vel est") < second.index("Sed commodo posuere") \
        < second.index("in faucibus orci") < second.index("luctus et ultrices") \
        < second.index("Suspendisse vitae elit")


def test_cache_key_carries_the_output_version(monkeypatch: pytest.MonkeyPatch,
                                              settings: Any) -> None:
    """A result cached before an output format changed is not found after it."""
    from tasks.lifecycle import jobs
    from tasks.pipeline.results import OUTPUT_VERSION
    from tasks.records.jobs import Job
    from tasks.records.request import JobRequest

    job = Job("j1", JobRequest(source="blob", output="markdown"), "tesseract", 0.0)
    before = jobs.cache_key(b"%PDF", job, settings)
    assert before == jobs.cache_key(b"%PDF", job, settings)
    monkeypatch.setattr(jobs, "OUTPUT_VERSION", OUTPUT_VERSION + 1)
    assert jobs.cache_key(b"%PDF", job, settings) != before


def test_layout_sessions_take_the_threads_of_their_share_of_the_cores(settings: Any) -> None:
    """Each pool child's layout sessions get the cores divided among the children."""
    import os

    from tasks.pipeline.pdf import session_threads, use_layout_threads
    from tasks.pipeline.structure import layout_threads

    cores = len(os.sched_getaffinity(0))
    assert layout_threads(replace(settings, concurrency=0)) == 1  # a child per core
    assert layout_threads(replace(settings, concurrency=1)) == cores
    assert layout_threads(replace(settings, concurrency=2 * cores)) == 1
    use_layout_threads(2)
    assert session_threads() == [2, 2, 2]  # the layout GNN, image features, table grid
    use_layout_threads(1)
    assert session_threads() == [1, 1, 1]
    (page,) = markdown_of(bullets_pdf(), settings)  # the rebuilt sessions read pages
    assert headings(page.text) == [(1, "Highlights")]
