"""Markdown and JSON with the document's structure, from every page source.

Real workers on the shared corpus. What a reader sees on the pages asserted here (their
renders were looked at): dig_multicolumn_3p page 1 is a title, author and date, an
"Abstract" heading and two columns of Lorem Ipsum (the left ends "Donec nonummy", the
right begins "pellentesque ante"), page 3 a five-column table "EU Countries
Information" and the page number 3 at the foot; dig_tracemonkey_14p has numbered
section headings ("1. Introduction", "3.1 Traces") and, on page 12, a ten-column table
of SunSpider figures; dig_geotopo_117p pages 10-11 carry the running head "1.2.
METRISCHE RÄUME" and their page numbers at the top, and page 10 the heading "1.2
Metrische Räume".
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pymupdf
import pytest
from PIL import Image

from tasks.client import OcrClient
from tests.fake_engines import MarkdownModelEngine
from tests.harness import ROOT, Worker, corpus

pytestmark = pytest.mark.slow

FAKES = ("fake-markdown=tests.fake_engines:MarkdownModelEngine,"
         "layout-breaking=tests.fake_engines:LayoutBreakingEngine")


@pytest.fixture(scope="module")
def workers(start_worker: Callable[..., Worker]) -> list[Worker]:
    """A tesseract worker, and one worker for both fake engines (a queue each).

    Jobs name their engine, so each goes to the queue of the worker meant for it. The
    tesseract worker analyses text-layer pages in chunks of one page
    (OCR_STRUCTURE_CHUNK_PAGES=1): a job with several text-layer pages fans them out
    into chunk tasks, so the heading levels asserted below are ranked across chunks
    (the fake engines' worker keeps the default: their jobs analyse in planning).
    """
    return [start_worker(OCR_ENGINE="tesseract", OCR_CONCURRENCY="2",
                         OCR_CACHE_RESULTS="0", OCR_STRUCTURE_CHUNK_PAGES="1"),
            start_worker(OCR_ENGINE="fake-markdown", OCR_ENGINE_PLUGINS=FAKES,
                         OCR_QUEUES="ocr-fake-markdown,ocr-layout-breaking",
                         OCR_CONCURRENCY="1", OCR_CACHE_RESULTS="0")]


def run(client: OcrClient, source: Any, engine: str = "tesseract", timeout: float = 300,
        **options: Any) -> dict[str, Any]:
    job = client.submit(source, engine=engine, **options)
    result = client.wait([job], timeout=timeout)[job]
    assert result["status"] == "SUCCESS", result
    return result


def headings(markdown: str) -> list[tuple[int, str]]:
    """(level, text without emphasis) of each Markdown heading line."""
    found = re.findall(r"^(#{1,6}) (.+?)\s*$", markdown, flags=re.MULTILINE)
    return [(len(hashes), text.replace("*", "").replace("_", "").strip())
            for hashes, text in found]


def test_born_digital_two_columns_heading_table_footer(workers: list[Worker],
                                                       client: OcrClient) -> None:
    result = run(client, corpus("dig_multicolumn_3p.pdf"), output="markdown")
    pages = result["pages"]
    assert result["text"] == "".join(
        ("" if p["number"] == 1 else f"\n\n<!-- page {p['number']} -->\n\n") + p["text"]
        for p in pages)
    first = pages[0]["text"]
    assert headings(first)[:2] == [(1, "Two-Column Document with Lorem Ipsum"),
                                   (2, "Abstract")]
    # reading order: the left column to its end, then the right column
    assert first.index("Lorem ipsum dolor sit amet") < first.index("Donec nonummy") \
        < first.index("pellentesque ante") < first.index("Quisque ullamcorper")
    table = pages[2]["text"]
    assert re.search(r"^\|\W*Country\W*\|.*Capital.*\|.*Official Language.*\|$", table,
                     flags=re.MULTILINE)
    assert "|Austria|8.9|83,879|Vienna|German|" in table
    assert "|Finland|5.5|338,424|Helsinki|Finnish, Swedish|" in table
    # the page numbers at the foot are footers, kept out of the body
    for page in pages:
        assert str(page["number"]) not in page["text"].split("\n"), page["number"]
    assert result["warnings"] == []


def test_json_blocks_in_reading_order(workers: list[Worker], client: OcrClient) -> None:
    result = run(client, corpus("dig_multicolumn_3p.pdf"), output="json")
    first, _, third = result["pages"]
    assert first["text"].startswith("Two-Column Document")  # the plain text, as before
    structure = first["structure"]
    assert (structure["unit"], structure["width"], structure["height"]) \
        == ("pt", 595.28, 841.89)  # A4
    kinds = [(b["kind"], b.get("level")) for b in structure["blocks"]]
    # the title: a level-1 heading (the model calls it a section header)
    assert kinds[0] in (("title", 1), ("section_header", 1)) and ("section_header", 2) in kinds
    assert kinds[-1] == ("page_footer", None)
    for block in structure["blocks"]:
        x0, y0, x1, y1 = block["bbox"]
        assert 0 <= x0 < x1 <= 595.28 and 0 <= y0 < y1 <= 841.89
    texts = [b["text"] for b in structure["blocks"] if b["kind"] == "text"]
    left = next(i for i, t in enumerate(texts) if t.startswith("Lorem ipsum dolor"))
    right = next(i for i, t in enumerate(texts) if t.startswith("Quisque ullamcorper"))
    assert left < right
    table = next(b for b in third["structure"]["blocks"] if b["kind"] == "table")
    assert table["cells"][1] == ["Austria", "8.9", "83,879", "Vienna", "German"]
    assert len(table["cells"]) == 6 and all(len(row) == 5 for row in table["cells"])
    footer = third["structure"]["blocks"][-1]
    assert (footer["kind"], footer["text"]) == ("page_footer", "3")


def test_technical_report_headings_levels_and_table(workers: list[Worker],
                                                    client: OcrClient) -> None:
    result = run(client, corpus("dig_tracemonkey_14p.pdf"), output="markdown",
                 pages="1,4,12")
    first, fourth, twelfth = (p["text"] for p in result["pages"])
    assert headings(first) == [
        (1, "Trace-based Just-in-Time Type Specialization for Dynamic Languages"),
        (2, "Abstract"), (2, "1. Introduction")]
    assert (2, "3. Trace Trees") in headings(fourth)
    assert (3, "3.1 Traces") in headings(fourth)
    assert "|3d-cube|25|27|29|3|0|1.1|1.1|1.2|2.20x|" in twelfth
    # three chunk tasks, one a page: their headings' sizes stay out of the result
    assert all("heading_sizes" not in page for page in result["pages"])


def commonmark(markdown: str) -> tuple[list[tuple[int, str]], int]:
    """The headings (level, text) and the number of tables markdown-it-py finds.

    Tables are GFM pipe tables (markdown-it-py's `table` rule) and HTML `<table>`s.
    """
    from markdown_it import MarkdownIt

    tokens = MarkdownIt("commonmark").enable("table").parse(markdown)
    found = [(int(t.tag[1]), tokens[i + 1].content) for i, t in enumerate(tokens)
             if t.type == "heading_open"]
    tables = sum(t.type == "table_open" for t in tokens) + \
        sum(t.content.count("<table") for t in tokens if t.type == "html_block")
    return found, tables


@pytest.mark.parametrize("name", ["dig_multicolumn_3p.pdf", "dig_tracemonkey_14p.pdf"])
def test_commonmark_finds_every_heading_and_table_the_pages_hold(
        workers: list[Worker], client: OcrClient, name: str) -> None:
    """The whole Markdown through a CommonMark parser, against the JSON blocks.

    The same headings (text and level) and as many tables as the pages' blocks hold;
    numbered sections one level below their parent number; no emphasis in a heading;
    every page starts a block of its own. The tesseract worker reads the text-layer
    pages in chunks of one, so the levels are those of the merge.
    """
    markdown = run(client, corpus(name), output="markdown")
    blocks = [b for p in run(client, corpus(name), output="json")["pages"]
              for b in p["structure"]["blocks"]]
    found, tables = commonmark(markdown["text"])
    assert found == [(b["level"], b["text"]) for b in blocks
                     if b["kind"] in ("title", "section_header")]
    assert tables == sum(b["kind"] == "table" for b in blocks) > 0
    assert not any("**" in text or "__" in text for _, text in found)
    assert found[0][0] == 1 and all(level > 1 for level, _ in found[1:])
    for level, text in found:
        number = re.match(r"(\d+(?:\.\d+)*)\.? ", text)
        if number:
            assert level == number.group(1).count(".") + 2, (level, text)
    for page in markdown["pages"][1:]:
        assert f"\n\n<!-- page {page['number']} -->\n\n{page['text']}" in markdown["text"]
    if name == "dig_multicolumn_3p.pdf":  # the words that end page 1 and start page 2
        assert "Nam feugiat\n\n<!-- page 2 -->\n\nlacus vel est" in markdown["text"]
        assert "sed wisi.\n\n<!-- page 3 -->\n\n<u>Table 1" in markdown["text"]
    else:
        assert len(found) >= 20 and (3, "3.1 Traces") in found \
            and (2, "10. Future Work") in found


def test_chunks_give_what_one_analysis_gives() -> None:
    """Text-layer pages analysed in chunks, then relevelled, equal one analysis of all."""
    from dataclasses import replace

    from tasks.pipeline.documents import (
        chunk_pages,
        planned_pages,
        relevel_headings,
        structure_chunks,
    )
    from tasks.pipeline.pdf import plan_pdf
    from tasks.settings import Settings

    settings = replace(Settings.from_env({}), structure_chunk_pages=1)
    data = Path(corpus("dig_tracemonkey_14p.pdf")).read_bytes()
    plan = plan_pdf(data, "1,4,12", None, "auto", settings)
    try:
        for output in ("markdown", "json"):
            whole = planned_pages(plan, replace(settings, structure_chunk_pages=8), output)
            chunks = structure_chunks(plan, output, settings)
            assert chunks == [[1], [4], [12]]
            pages = [p for chunk in chunks
                     for p in chunk_pages(plan.doc, chunk, output, settings)]
            assert [p.to_json() for p in relevel_headings(pages, chunks, output)] \
                == [p.to_json() for p in whole]
    finally:
        plan.doc.close()


def test_running_heads_kept_out(workers: list[Worker], client: OcrClient) -> None:
    plain = run(client, corpus("dig_geotopo_117p.pdf"), pages="10-11")
    assert all("1.2. METRISCHE RÄUME" in p["text"] for p in plain["pages"])
    result = run(client, corpus("dig_geotopo_117p.pdf"), output="markdown", pages="10-11")
    for page in result["pages"]:
        assert "METRISCHE RÄUME" not in page["text"]
        assert page["text"].split("\n")[0] not in ("7", "8")  # the page numbers above
    assert (3, "1.2 Metrische Räume") in headings(result["pages"][0]["text"])  # by number


def spanning_table_pdf() -> bytes:
    """A page with a ruled table whose header cells span.

    "Region" spans two rows, "Sales" two columns (Q1, Q2); two rows of figures follow.
    """
    doc = pymupdf.open()
    page = doc.new_page(width=595, height=842)
    page.insert_text((72, 80), "Quarterly Results", fontsize=20)
    page.insert_text((72, 110), "The sales of each region by quarter, in thousands.",
                     fontsize=10)
    x, y = [72, 200, 300, 400], [140, 165, 190, 215, 240]
    shape = page.new_shape()
    shape.draw_rect(pymupdf.Rect(x[0], y[0], x[3], y[4]))
    shape.draw_line((x[1], y[0]), (x[1], y[4]))  # Region | the rest, all rows
    shape.draw_line((x[2], y[1]), (x[2], y[4]))  # Q1 | Q2, below the Sales cell
    shape.draw_line((x[1], y[1]), (x[3], y[1]))  # under Sales only: Region spans
    for k in (2, 3):
        shape.draw_line((x[0], y[k]), (x[3], y[k]))
    shape.finish(color=(0, 0, 0), width=0.8)
    shape.commit()
    for (row, col), text in {(0, 0): "Region", (0, 1): "Sales", (1, 1): "Q1", (1, 2): "Q2",
                             (2, 0): "North", (2, 1): "120", (2, 2): "135",
                             (3, 0): "South", (3, 1): "98", (3, 2): "101"}.items():
        page.insert_text((x[col] + 5, y[row] + 16 + (12 if text == "Region" else 0)),
                         text, fontsize=10)
    page.insert_text((72, 280), "Sales grew in both regions in the second quarter.",
                     fontsize=10)
    return bytes(doc.tobytes())


def test_spanning_table_as_html_with_spans(workers: list[Worker], client: OcrClient) -> None:
    data = spanning_table_pdf()
    markdown = run(client, data, output="markdown", filename="spans.pdf")["pages"][0]["text"]
    assert '<th rowspan="2">Region</th><th colspan="2">Sales</th>' in markdown
    assert "<tr><th>Q1</th><th>Q2</th></tr>" in markdown
    assert "<tr><td>North</td><td>120</td><td>135</td></tr>" in markdown
    assert "|" not in markdown  # no Markdown table beside it
    result = run(client, data, output="json", filename="spans.pdf")
    table = next(b for b in result["pages"][0]["structure"]["blocks"]
                 if b["kind"] == "table")
    assert table["cells"] == [["Region", "Sales", None], [None, "Q1", "Q2"],
                              ["North", "120", "135"], ["South", "98", "101"]]
    assert table["spans"] == [{"row": 0, "col": 0, "row_span": 2, "col_span": 1},
                              {"row": 0, "col": 1, "row_span": 1, "col_span": 2}]
    (docling_table,) = to_docling(result).tables
    spans = {(c.text, c.row_span, c.col_span) for c in docling_table.data.table_cells}
    assert {("Region", 2, 1), ("Sales", 1, 2), ("Q1", 1, 1)} <= spans


def scanned_and_digital_pdf() -> bytes:
    """Tracemonkey's first page as a 200-dpi scan (no text), then its fourth page."""
    with pymupdf.open(corpus("dig_tracemonkey_14p.pdf")) as source:
        out = pymupdf.open()
        pix = source[0].get_pixmap(dpi=200, colorspace=pymupdf.csGRAY)
        page = out.new_page(width=source[0].rect.width, height=source[0].rect.height)
        page.insert_image(page.rect, stream=pix.tobytes("png"))
        out.insert_pdf(source, from_page=3, to_page=3)
        return bytes(out.tobytes())


def test_scanned_page_by_tesseract_has_structure_beside_a_text_page(
        workers: list[Worker], client: OcrClient) -> None:
    result = run(client, scanned_and_digital_pdf(), output="markdown")
    scanned, digital = result["pages"]
    assert (scanned["source"], digital["source"]) == ("ocr", "text-layer")
    found = headings(scanned["text"])
    assert found[0] == (1, "Trace-based Just-in-Time Type Specialization for Dynamic "
                           "Languages")
    assert any(text == "Abstract" for _, text in found)
    # numbered sections are levelled by their numbers, whatever pages are read together
    assert headings(digital["text"])[:2] == [(2, "3. Trace Trees"), (3, "3.1 Traces")]
    as_json = run(client, scanned_and_digital_pdf(), output="json", pages="1")
    page = as_json["pages"][0]
    structure = page["structure"]  # in the pixels of the words, the image OCR read
    assert structure["unit"] == "px" and structure["blocks"][0]["kind"] == "title"
    words = page["words"]
    assert all(w["box"][2] <= structure["width"] + 1 and w["box"][3] <= structure["height"] + 1
               for w in words)


def test_vlm_markdown_unchanged(workers: list[Worker], client: OcrClient,
                                tmp_path: Any) -> None:
    image = tmp_path / "page.png"
    Image.new("L", (600, 800), 255).save(image)
    result = run(client, image, engine="fake-markdown", output="markdown")
    assert result["text"] == MarkdownModelEngine.MARKDOWN
    pdf = run(client, corpus("scan_dh_lorem_ipsum.pdf"), engine="fake-markdown",
              output="json")
    assert pdf["pages"][0]["text"] == MarkdownModelEngine.MARKDOWN
    assert "structure" not in pdf["pages"][0]


def test_failed_layout_on_one_page_gives_its_plain_text_and_a_warning(
        workers: list[Worker], client: OcrClient) -> None:
    with pymupdf.open(corpus("dig_multicolumn_3p.pdf")) as doc:
        doc[1].insert_text((72, 40), "BREAK-LAYOUT", fontsize=8)
        data = bytes(doc.tobytes())
        plain = doc[1].get_text().rstrip()
    result = run(client, data, engine="layout-breaking", output="markdown")
    first, second, third = result["pages"]
    assert second["text"] == plain
    assert second["structure_error"]["code"] == "layout_failed"
    assert result["warnings"] == [{"page": 2, "code": "layout_failed",
                                   "message": second["structure_error"]["message"]}]
    assert headings(first["text"])[0] == (1, "Two-Column Document with Lorem Ipsum")
    assert "|Austria|8.9|83,879|Vienna|German|" in third["text"]


def to_docling(result: dict[str, Any]) -> Any:
    """A json result's blocks as a docling-core `DoclingDocument`, kind for label.

    Headers and footers go to the furniture layer, as docling puts them.
    """
    from docling_core.types.doc import (
        BoundingBox,
        ContentLayer,
        DocItemLabel,
        DoclingDocument,
        ProvenanceItem,
        Size,
        TableCell,
        TableData,
    )

    doc = DoclingDocument(name=result.get("filename") or "result")
    for page in result["pages"]:
        structure = page["structure"]
        doc.add_page(page_no=page["number"],
                     size=Size(width=structure["width"], height=structure["height"]))
        group = None
        for block in structure["blocks"]:
            left, top, right, bottom = block["bbox"]
            prov = ProvenanceItem(page_no=page["number"], charspan=(0, len(block["text"])),
                                  bbox=BoundingBox(l=left, t=top, r=right, b=bottom))
            label = DocItemLabel(block["kind"])
            if label is not DocItemLabel.LIST_ITEM:
                group = None
            if label is DocItemLabel.TITLE:
                doc.add_title(block["text"], prov=prov)
            elif label is DocItemLabel.SECTION_HEADER:
                doc.add_heading(block["text"], level=block["level"], prov=prov)
            elif label is DocItemLabel.LIST_ITEM:
                group = group or doc.add_list_group()
                doc.add_list_item(block["text"], prov=prov, parent=group)
            elif label is DocItemLabel.TABLE:
                rows = block.get("cells") or []
                spans = {(s["row"], s["col"]): (s["row_span"], s["col_span"])
                         for s in block.get("spans") or ()}
                cells = [TableCell(text=text or "", start_row_offset_idx=r,
                                   end_row_offset_idx=r + spans.get((r, c), (1, 1))[0],
                                   start_col_offset_idx=c,
                                   end_col_offset_idx=c + spans.get((r, c), (1, 1))[1],
                                   row_span=spans.get((r, c), (1, 1))[0],
                                   col_span=spans.get((r, c), (1, 1))[1],
                                   column_header=r == 0)
                         for r, row in enumerate(rows) for c, text in enumerate(row)
                         if text is not None]  # None: a cell a spanning one covers
                doc.add_table(TableData(table_cells=cells, num_rows=len(rows),
                                        num_cols=max(map(len, rows), default=0)), prov=prov)
            elif label is DocItemLabel.PICTURE:
                doc.add_picture(prov=prov)
            else:
                furniture = label in (DocItemLabel.PAGE_HEADER, DocItemLabel.PAGE_FOOTER)
                doc.add_text(label, block["text"], prov=prov,
                             content_layer=ContentLayer.FURNITURE if furniture else None)
    return doc


def test_blocks_map_one_to_one_onto_a_docling_document(workers: list[Worker],
                                                       client: OcrClient) -> None:
    result = run(client, corpus("dig_multicolumn_3p.pdf"), output="json")
    doc = to_docling(result)
    blocks = [b for p in result["pages"] for b in p["structure"]["blocks"]]
    items = list(doc.texts) + list(doc.tables) + list(doc.pictures)
    assert len(items) == len(blocks)
    assert sorted(item.label.value for item in items) == sorted(b["kind"] for b in blocks)
    markdown = doc.export_to_markdown()
    assert "Two-Column Document with Lorem Ipsum" in markdown.split("\n")[0]
    assert re.search(r"^\| Austria\s+\|\s+8\.9 \|\s+83,879 \| Vienna\s+\| German\s+\|$",
                     markdown, flags=re.MULTILINE)
    assert "\n3\n" not in markdown  # the page number: a footer, furniture


def test_submit_cli_and_node_client_deliver_markdown(workers: list[Worker], redis_url: str,
                                                     tmp_path: Path) -> None:
    source = str(corpus("dig_multicolumn_3p.pdf"))
    done = subprocess.run([sys.executable, "submit.py", "--output", "markdown", "--engine",
                           "tesseract", "--out", str(tmp_path), source], cwd=ROOT,
                          env={**os.environ, "REDIS_URL": redis_url}, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    written = (tmp_path / "dig_multicolumn_3p.md").read_text()
    assert written.startswith("# Two-Column Document with Lorem Ipsum")
    assert "|Austria|8.9|83,879|Vienna|German|" in written
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the Node.js client is not run")
    ran = subprocess.run([node, str(ROOT / "clients" / "node" / "ocr_client.js"), "--redis",
                          redis_url, "--output", "markdown", "--engine", "tesseract", source],
                         capture_output=True, text=True, timeout=240)
    assert ran.returncode == 0, ran.stderr
    (record,) = [json.loads(line) for line in ran.stdout.splitlines()]
    assert record["status"] == "SUCCESS" and record["text"] == written


def test_chunk_tasks_end_the_job_once_and_cancel_stops_them(redis_url: str) -> None:
    """What `ocr.pdf_text_chunk` does, without Celery: chunks in any order, one merge.

    dig_multicolumn_3p's three text-layer pages in chunks of one page: the job fans out
    with no OCR page, the last chunk recorded ends it, once, with its pages in order and
    the heading levels one analysis gives; a cancel stops the chunk tasks too, and keeps
    the chunk done without its internal heading sizes.
    """
    from dataclasses import replace

    from tasks.lifecycle.cancel import CANCELLED, cancel_job
    from tasks.lifecycle.fanout import record_page, run_text_chunk
    from tasks.lifecycle.open_documents import OpenDocumentCache
    from tasks.records.jobs import JobStatus
    from tests.units.test_lifecycle import fan_out, make_life

    data = Path(corpus("dig_multicolumn_3p.pdf")).read_bytes()
    life = make_life(redis_url)
    try:
        life.settings = replace(life.settings, structure_chunk_pages=1)
        meta = fan_out(life, "job-chunks", data, output="markdown")
        assert (meta.ocr_pages, meta.text_chunks, meta.total) == ([], [[1], [2], [3]], 3)
        docs = OpenDocumentCache()
        chunks = [meta.describe(meta.text_chunks[index]) for index in (2, 0, 1)]
        ended = [record_page(chunk, run_text_chunk(chunk, docs, life.settings, life.stores),
                             life.join, life.ender, life.settings, life.stores)
                 for chunk in chunks]
        docs.close()
        assert ended == [False, False, True] and len(life.ports.published) == 1
        outcome = life.ports.published[0]
        assert outcome.status is JobStatus.SUCCESS and outcome.result is not None
        pages = [page.to_json() for page in outcome.result.pages]
        assert [p["number"] for p in pages] == [1, 2, 3]
        assert all("heading_sizes" not in p for p in pages)
        assert headings(pages[0]["text"])[:2] == [
            (1, "Two-Column Document with Lorem Ipsum"), (2, "Abstract")]
        assert "|Austria|8.9|83,879|Vienna|German|" in pages[2]["text"]

        # json: not the markdown job's cached result
        meta = fan_out(life, "job-chunks-cancel", data, output="json")
        meta = replace(meta, chunk_tasks=["c0", "c1", "c2"])
        life.join.start(meta, [])  # as fan_out does
        docs = OpenDocumentCache()
        chunk = meta.describe(meta.text_chunks[0])
        assert not record_page(chunk, run_text_chunk(chunk, docs, life.settings, life.stores),
                               life.join, life.ender, life.settings, life.stores)
        docs.close()
        stopped: list[list[str]] = []
        assert cancel_job("job-chunks-cancel", life.stores.control, life.join, life.ender,
                          stopped.append) == CANCELLED
        assert stopped == [["job-chunks-cancel", "c0", "c1", "c2"]]
        cancelled = life.ports.published[-1]
        assert cancelled.status is JobStatus.CANCELLED and cancelled.result is not None
        kept = [page.to_json() for page in cancelled.result.pages]
        assert [p["number"] for p in kept] == [1] and "structure" in kept[0]
        assert "heading_sizes" not in kept[0]
    finally:
        life.engines.unload()
