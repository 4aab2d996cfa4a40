"""A page's structure by PyMuPDF's own layout analysis (pymupdf4llm).

The only module that imports `pymupdf4llm` (shipped inside the PyMuPDF 2.0 wheel with
`pymupdf.layout`'s ONNX model).

Runs in worker children, for `output=markdown` and `output=json`, on documents that
tasks/pipeline/pdf opened (text-layer pages) or built (an OCR'd page: its words as an
invisible text layer over the page image, `pdf.ocr_layer_pdf`). pymupdf4llm parses each
page into blocks of DocLayNet's classes (running heads and footers apart, tables with
their cell grid); this module puts them in reading order (`_reading_order`: a block
that holds columns side by side cut into them, then columns read one by one), levels
the headings (`_headings`: numbering, then type size) and turns them into the typed
`PageStructure` records and the page's Markdown (`_markdown`), without headers and
footers. The layout model is loaded with PyMuPDF
itself: in 2.0 `import pymupdf` imports `pymupdf.layout`, which opens its ONNX
sessions (measured: the import of PyMuPDF 2.0 takes about as long as 1.28's, and its
peak RSS is 8 MB more); tasks/pipeline/pdf rebuilds them in a pool child with the
intra-op threads its share of the cores gives (`layout_threads`).
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from tasks.errors import LayoutFailed
from tasks.pipeline._headings import (
    TITLE,
    Heading,
    heading_texts,
    levels,
    set_levels,
)
from tasks.pipeline._markdown import heading_text, page_markdown, plain_text
from tasks.pipeline._reading_order import block_columns, reading_order
from tasks.pipeline._symbol_fonts import PRIVATE, with_symbols
from tasks.pipeline.pdf import name_glyphs, use_layout_threads
from tasks.records.results import Block, PageStructure

if TYPE_CHECKING:
    from tasks.settings import Settings

# The outputs that carry a page's structure: markdown (as Markdown), json (as blocks).
STRUCTURE_OUTPUTS = ("markdown", "json")
# pymupdf4llm's box classes (DocLayNet's) -> the block kinds (docling-core's labels).
_KINDS = {"text": "text", "title": "title", "section-header": "section_header",
          "list-item": "list_item", "table": "table", "picture": "picture",
          "caption": "caption", "footnote": "footnote", "formula": "formula",
          "page-header": "page_header", "page-footer": "page_footer"}
_HEADINGS = ("title", "section-header")
_RUNNING_TEXT = ("text", "list-item", "caption", "footnote")
# Points above and below a table box that its ruling lines may reach: the model's box
# hugs the table's text, the rules run around it (9 pt on tests/engines/test_structure.py's).
_MARGIN = 36.0


@dataclass(frozen=True)
class Analysed:
    """One page's Markdown and blocks."""

    markdown: str
    structure: PageStructure
    # Each title's and section header's type size (`_headings.TITLE` for a title), in
    # reading order: what levels headings across pages analysed in different tasks
    # (`relevel`).
    heading_sizes: tuple[int, ...] = ()


def analyse(doc: Any, numbers: Sequence[int], scale: float = 1.0, unit: str = "pt",
            threads: int | None = None) -> dict[int, Analysed | LayoutFailed]:
    """The Markdown and blocks of pages `numbers` (1-based) of `doc`, or why not.

    Blocks are put in reading order (`_reading_order`) and headings levelled over the
    pages read together (`_headings`). One pass reads them all; should it fail, each
    page is read alone, so a page the analysis cannot handle costs only that page its
    structure (`LayoutFailed`, which the pipeline turns into a page warning). Boxes are
    divided by `scale` into `unit` (an OCR'd page's pixels). `threads`: the intra-op
    threads of the layout model's sessions in this process (`pdf.use_layout_threads`).
    """
    from pymupdf4llm.helpers import document_layout as layout

    if threads is not None:
        use_layout_threads(threads)
    out: dict[int, Analysed | LayoutFailed] = {}
    try:
        pages = _parse(layout, doc, numbers)
    except Exception:  # noqa: BLE001 - the library's own failure: try page by page
        pages = []
        for number in numbers:
            try:
                pages += _parse(layout, doc, [number])
            except Exception as exc:  # noqa: BLE001 - any failure costs the page only
                out[number] = _failed(number, exc)
    heads = {}
    for page in pages:
        page.boxes = _ordered(page.boxes)
        heads[page.page_number] = [
            (index, Heading(TITLE if box.boxclass == "title" else int(box.max_fontsize or 0),
                            heading_text(layout, box.textlines)))
            for index, box in enumerate(page.boxes) if box.boxclass in _HEADINGS]
    found = [heading for page in pages for _, heading in heads[page.page_number]]
    ranked = iter(levels(found))
    for page in pages:
        try:
            page_levels = {index: next(ranked) for index, _ in heads[page.page_number]}
            spanned = _spanning_tables(doc, page)
            for index, table in spanned.items():
                page.boxes[index].table["html"] = table.html  # written as it is
            markdown = page_markdown(layout, page, page_levels, bool(page.full_ocred))
            sizes = tuple(h.size for _, h in heads[page.page_number])
            out[page.page_number] = Analysed(markdown, _structure(
                layout, page, scale, unit, spanned, page_levels), sizes)
        except Exception as exc:  # noqa: BLE001 - any failure costs the page only
            out[page.page_number] = _failed(page.page_number, exc)
    return out


def relevel(pages: Sequence[tuple[str | PageStructure, Sequence[int]]]
            ) -> list[str | PageStructure]:
    """Pages analysed apart with their headings levelled together, as in one analysis.

    Each page is its Markdown or its blocks, with its heading sizes.
    A Markdown page's k-th heading is its k-th heading line (`_headings.heading_lines`:
    every heading is one such line, and no other line starts with `#`); a JSON page's
    is its k-th title or section header block.
    """
    found = []
    for content, sizes in pages:
        texts = heading_texts(content) if isinstance(content, str) else \
            [b.text for b in content.blocks if b.kind in ("title", "section_header")]
        found += [Heading(size, text) for size, text in zip(sizes, texts, strict=False)]
    ranked = iter(levels(found))
    out: list[str | PageStructure] = []
    for content, sizes in pages:
        new = [next(ranked) for _ in sizes]
        if isinstance(content, str):
            out.append(set_levels(content, new))
            continue
        it = iter(new)
        out.append(replace(content, blocks=tuple(
            replace(b, level=next(it, b.level)) if b.kind in ("title", "section_header")
            else b for b in content.blocks)))
    return out


def _ordered(boxes: list[Any]) -> list[Any]:
    """Page headers, the body in reading order (`_reading_order`), page footers."""
    heads = [b for b in boxes if b.boxclass == "page-header"]
    feet = [b for b in boxes if b.boxclass == "page-footer"]
    body = [cut for b in boxes if b.boxclass not in ("page-header", "page-footer")
            for cut in _column_cuts(b)]
    return _unshared(heads + reading_order(body) + feet)


def _column_cuts(box: Any) -> list[Any]:
    """A block of text that holds columns side by side, a block each (`block_columns`).

    Only blocks of running text are cut: a heading is one line, whose words a gutter
    may part ("What Kids" and "Need Most in a Dad" across two magazine pages), and a
    picture's or a formula's text is one block, however it is set.
    """
    if box.boxclass not in _RUNNING_TEXT or not box.textlines:
        return [box]
    found = block_columns(box.textlines)
    if len(found) == 1:
        return [box]
    return [replace(box, x0=min(line["bbox"][0] for line in lines),
                    y0=min(line["bbox"][1] for line in lines),
                    x1=max(line["bbox"][2] for line in lines),
                    y1=max(line["bbox"][3] for line in lines), textlines=lines)
            for lines in found]


def _unshared(boxes: list[Any]) -> list[Any]:
    """Each span of text in the first block (in reading order) that holds it.

    The layout analysis takes a block's lines from its box, and two boxes can overlap:
    a span inside both was written twice. A block left without text is dropped.
    """
    seen: set[tuple[str, tuple[int, ...]]] = set()
    out = []
    for box in boxes:
        if not box.textlines:
            out.append(box)
            continue
        lines = []
        for line in box.textlines:
            spans = []
            for span in line["spans"]:
                key = (str(span["text"]), tuple(round(float(v)) for v in span["bbox"]))
                if key not in seen:
                    seen.add(key)
                    spans.append(span)
            if len(spans) == len(line["spans"]):
                lines.append(line)
            elif spans:
                lines.append({**line, "spans": spans})
        if lines:
            out.append(box if lines == box.textlines else replace(box, textlines=lines))
    return out


def layout_threads(settings: Settings) -> int:
    """Intra-op threads for a pool child's layout sessions: its share of the cores.

    The cores this process may run on, divided among the worker's children
    (OCR_CONCURRENCY; 0 is one child per core), at least one: children that fill the
    cores run one thread each instead of every core each (two children with
    every core each gave 1.27x one child's pages/s on two cores).
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else os.cpu_count() or 1
    return max(1, cores // (settings.concurrency or cores))


def _parse(layout: Any, doc: Any, numbers: Sequence[int]) -> list[Any]:
    """pymupdf4llm's parse of the pages, from their text layers only (OCR is ours).

    Glyphs are read as the plain text reads them: fonts' named glyphs by their
    ToUnicode (`pdf.name_glyphs`), a symbol font's private-use characters as they draw
    (`_symbol_fonts`): a span by its font, a table's text by the page's fonts.
    """
    from pymupdf4llm.ocr import OCRMode

    for number in numbers:
        name_glyphs(doc[number - 1])
    parsed = layout.parse_document(doc, pages=[n - 1 for n in numbers],
                                   use_ocr=OCRMode.NEVER, force_text=True)
    for page in parsed.pages:
        symbols = _symbols(page)
        for box in page.boxes:
            for line in box.textlines or ():
                # new span dicts: the page's own (`fulltext`) keep what MuPDF read
                line["spans"] = [{**span, "text": with_symbols(
                    str(span["text"]), str(span.get("font", "")))}
                    for span in line.get("spans", ())]
            if box.table and symbols:
                box.table = _mapped(box.table, symbols)
    return list(parsed.pages)


def _symbols(page: Any) -> dict[int, str]:
    """The page's private-use characters as its fonts draw them (`str.translate`'s table).

    For text that carries no font: a table's cells, which pymupdf4llm and MuPDF's table
    finder read from the page's characters. A character drawn in two kinds of font on
    one page takes the last one's.
    """
    found: dict[int, str] = {}
    for block in page.fulltext or ():
        for line in block.get("lines", ()):
            for span in line.get("spans", ()):
                for char in set(PRIVATE.findall(str(span.get("text", "")))):
                    found[ord(char)] = with_symbols(char, str(span.get("font", "")))
    return found


def _mapped(table: dict[str, Any], symbols: dict[int, str]) -> dict[str, Any]:
    """pymupdf4llm's table, its text (Markdown, HTML, cells) with `symbols` mapped."""
    out = dict(table)
    for key in ("markdown", "html"):
        if isinstance(out.get(key), str):
            out[key] = out[key].translate(symbols)
    if out.get("extract"):
        out["extract"] = [[None if c is None else str(c).translate(symbols) for c in row]
                          for row in out["extract"]]
    return out


def _failed(number: int, exc: BaseException) -> LayoutFailed:
    return LayoutFailed(f"page {number}: the layout analysis failed "
                        f"({type(exc).__name__}); the page's text is given plain")


@dataclass(frozen=True)
class _Spanned:
    """A table whose cells span: its HTML, cell texts (None where covered) and spans."""

    html: str
    cells: tuple[tuple[str | None, ...], ...]
    spans: tuple[tuple[int, int, int, int], ...]


def _spanning_tables(doc: Any, page: Any) -> dict[int, _Spanned]:
    """The page's table boxes (by index) that are ruled tables with spanning cells.

    The layout model's table grid is regular: it cannot tell a cell that spans. MuPDF's
    table finder (`Page.find_tables`, on the table's ruling lines) can: a cell that
    covers several grid cells is one rectangle, the others None. It runs only on pages
    the model found a table on; a table box it matches (half the box's area in one of
    its tables) with a spanning cell is given as HTML, any other keeps its Markdown.
    """
    boxes = [(i, box) for i, box in enumerate(page.boxes) if box.boxclass == "table"]
    if not boxes:
        return {}
    symbols = _symbols(page)
    source = doc[page.page_number - 1]
    if not source.get_cdrawings():
        return {}  # no ruling lines, no table for the finder
    out = {}
    for index, box in boxes:
        # The band of the page the table box stands in (_MARGIN above and below, the
        # page's width): the finder builds its character list of its clip only (of the
        # whole page it took 0.9 s of a tracemonkey page with a table). use_layout=False:
        # lines only. By default PyMuPDF 2.0's finder runs the layout model on the page
        # again (0.6-1.2 s a page here, against 0.01-0.09 s without).
        rect = source.rect
        clip = (rect.x0, box.y0 - _MARGIN, rect.x1, box.y1 + _MARGIN)
        tables = source.find_tables(clip=clip, use_layout=False).tables
        area = (box.x1 - box.x0) * (box.y1 - box.y0)
        overlap = {id(t): _overlap((box.x0, box.y0, box.x1, box.y1), t.bbox) for t in tables}
        best = max(tables, key=lambda t: overlap[id(t)], default=None)
        if best is None or overlap[id(best)] < area / 2:
            continue
        spanned = _spanned(best, symbols)
        if spanned is not None:
            out[index] = spanned
    return out


def _overlap(a: Sequence[float], b: Sequence[float]) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    return max(width, 0.0) * max(height, 0.0)


def _spanned(table: Any, symbols: dict[int, str]) -> _Spanned | None:
    """`table` (PyMuPDF's) as HTML with rowspan/colspan, or None when no cell spans.

    Its cells' private-use characters are mapped by `symbols` (`_symbols`).
    """
    rects = [list(row.cells) for row in table.rows]
    if all(rect is not None for row in rects for rect in row):
        return None
    texts = [[None if text is None else str(text).translate(symbols) for text in row]
             for row in table.extract()]
    columns = max(map(len, rects))
    col_x = [min((row[j][0] for row in rects if j < len(row) and row[j] is not None),
                 default=float("inf")) for j in range(columns)]
    row_y = [row.bbox[1] for row in table.rows]
    spans: dict[tuple[int, int], tuple[int, int]] = {}
    for i, row in enumerate(rects):
        for j, rect in enumerate(row):
            if rect is not None:
                spans[i, j] = (sum(1 for y in row_y[i:] if y < rect[3] - 1) or 1,
                               sum(1 for x in col_x[j:] if x < rect[2] - 1) or 1)
    header = max((rs for (i, _), (rs, _) in spans.items() if i == 0), default=1)
    lines = ["<table>"]
    for i, row in enumerate(rects):
        tag = "th" if i < header else "td"
        cells = []
        for j, rect in enumerate(row):
            if rect is None:
                continue
            rs, cs = spans[i, j]
            attrs = (f' rowspan="{rs}"' if rs > 1 else "") + \
                (f' colspan="{cs}"' if cs > 1 else "")
            text = html.escape(" ".join(str(texts[i][j] or "").split()))
            cells.append(f"<{tag}{attrs}>{text}</{tag}>")
        lines.append("<tr>" + "".join(cells) + "</tr>")
    lines.append("</table>")
    return _Spanned(
        "\n".join(lines),
        tuple(tuple(None if rects[i][j] is None else " ".join(str(text or "").split())
                    for j, text in enumerate(row)) for i, row in enumerate(texts)),
        tuple((i, j, rs, cs) for (i, j), (rs, cs) in spans.items() if rs > 1 or cs > 1))


def _structure(layout: Any, page: Any, scale: float, unit: str,
               spanned: dict[int, _Spanned], levels: dict[int, int]) -> PageStructure:
    blocks = []
    for index, box in enumerate(page.boxes):
        kind = _KINDS.get(box.boxclass, "text")
        bbox = (round(box.x0 / scale, 2), round(box.y0 / scale, 2),
                round(box.x1 / scale, 2), round(box.y1 / scale, 2))
        cells = None
        if index in spanned:
            found = spanned[index]
            blocks.append(Block(kind, bbox, found.html, None, found.cells, found.spans))
            continue
        if box.boxclass == "table":
            table = box.table or {}
            text = str(table.get("html") or table.get("markdown") or "").strip()
            extract = table.get("extract")
            if extract:
                cells = tuple(tuple(None if c is None else str(c) for c in row)
                              for row in extract)
        elif box.boxclass in _HEADINGS:
            text = heading_text(layout, box.textlines)
        else:
            text = plain_text(layout, box)
        level = levels.get(index, 6) if box.boxclass in _HEADINGS else None
        blocks.append(Block(kind, bbox, text, level, cells))
    return PageStructure(round(page.width / scale, 2), round(page.height / scale, 2),
                         unit, tuple(blocks))
