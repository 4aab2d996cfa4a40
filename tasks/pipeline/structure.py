"""A page's structure by PyMuPDF's own layout analysis (pymupdf4llm).

The only module that imports `pymupdf4llm` (shipped inside the PyMuPDF 2.0 wheel with
`pymupdf.layout`'s ONNX model).

Runs in worker children, for `output=markdown` and `output=json`, on documents that
tasks/pipeline/pdf.py opened (text-layer pages) or built (an OCR'd page: its words as an
invisible text layer over the page image, `pdf.ocr_layer_pdf`). pymupdf4llm parses each
page into blocks of DocLayNet's classes in reading order (columns read one by one,
running heads and footers apart, tables with their cell grid) and writes its Markdown;
this module turns that into the typed `PageStructure` records and the page's Markdown,
without headers and footers. The layout model is loaded with PyMuPDF itself: in 2.0
`import pymupdf` imports `pymupdf.layout`, which opens its ONNX sessions (measured: the
import of PyMuPDF 2.0 takes about as long as 1.28's, and its peak RSS is 8 MB more).
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from tasks.errors import LayoutFailed
from tasks.records.results import Block, PageStructure

# The outputs that carry a page's structure: markdown (as Markdown), json (as blocks).
STRUCTURE_OUTPUTS = ("markdown", "json")
# pymupdf4llm's box classes (DocLayNet's) -> the block kinds (docling-core's labels).
_KINDS = {"text": "text", "title": "title", "section-header": "section_header",
          "list-item": "list_item", "table": "table", "picture": "picture",
          "caption": "caption", "footnote": "footnote", "formula": "formula",
          "page-header": "page_header", "page-footer": "page_footer"}
_HEADINGS = ("title", "section-header")


@dataclass(frozen=True)
class Analysed:
    """One page's Markdown and blocks."""

    markdown: str
    structure: PageStructure
    # The type size of each title and section header, in reading order: what ranks
    # heading levels across pages analysed in different tasks (`relevel`).
    heading_sizes: tuple[int, ...] = ()


def analyse(doc: Any, numbers: Sequence[int], scale: float = 1.0, unit: str = "pt"
            ) -> dict[int, Analysed | LayoutFailed]:
    """The Markdown and blocks of pages `numbers` (1-based) of `doc`, or why not.

    Heading levels rank the type sizes of the headings of the pages read together
    (pymupdf4llm's rule). One pass reads them all; should it fail, each page is read
    alone, so a page the analysis cannot handle costs only that page its structure
    (`LayoutFailed`, which the pipeline turns into a page warning). Boxes are divided
    by `scale` into `unit` (an OCR'd page's pixels).
    """
    from pymupdf4llm.helpers import document_layout as layout

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
    sizes = {box.max_fontsize for page in pages for box in page.boxes
             if box.boxclass in _HEADINGS}
    if sizes:
        layout.update_header_tags(pages, sizes)
    for page in pages:
        try:
            spanned = _spanning_tables(doc, page)
            for index, table in spanned.items():
                page.boxes[index].table["html"] = table.html  # written as it is
            markdown = layout.ParsedDocument(pages=[page]).to_markdown(
                header=False, footer=False)
            heads = tuple(int(box.max_fontsize) for box in page.boxes
                          if box.boxclass in _HEADINGS)
            out[page.page_number] = Analysed(str(markdown).strip(),
                                             _structure(layout, page, scale, unit,
                                                        spanned), heads)
        except Exception as exc:  # noqa: BLE001 - any failure costs the page only
            out[page.page_number] = _failed(page.page_number, exc)
    return out


def heading_levels(sizes: Iterable[int]) -> Callable[[int], int]:
    """pymupdf4llm's rule: the six largest heading sizes rank 1-6, any smaller one 6."""
    ranked = sorted(set(sizes), reverse=True)[:6]
    return lambda size: ranked.index(size) + 1 if ranked and size >= ranked[-1] else 6


def relevel(markdown: str, sizes: Sequence[int], local: Callable[[int], int],
            common: Callable[[int], int]) -> str:
    """`markdown`'s headings (of `sizes`, written at `local` levels) at `common` levels.

    The k-th heading of the page is the first line after the (k-1)-th that starts with
    its local level's `#`s: pymupdf4llm writes each heading as one such line.
    """
    lines = markdown.split("\n")
    at = 0
    for size in sizes:
        mark = "#" * local(size) + " "
        while at < len(lines) and not lines[at].startswith(mark):
            at += 1
        if at == len(lines):
            break
        lines[at] = "#" * common(size) + " " + lines[at][len(mark):]
        at += 1
    return "\n".join(lines)


def _parse(layout: Any, doc: Any, numbers: Sequence[int]) -> list[Any]:
    """pymupdf4llm's parse of the pages, from their text layers only (OCR is ours)."""
    from pymupdf4llm.ocr import OCRMode

    parsed = layout.parse_document(doc, pages=[n - 1 for n in numbers],
                                   use_ocr=OCRMode.NEVER, force_text=True)
    return list(parsed.pages)


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
    source = doc[page.page_number - 1]
    if not source.get_cdrawings():
        return {}  # no ruling lines, no table for the finder
    # use_layout=False: lines only. By default PyMuPDF 2.0's finder runs the layout
    # model on the page again (0.6-1.2 s a page here, against 0.01-0.09 s without).
    tables = source.find_tables(use_layout=False).tables
    out = {}
    for index, box in boxes:
        area = (box.x1 - box.x0) * (box.y1 - box.y0)
        overlap = {id(t): _overlap((box.x0, box.y0, box.x1, box.y1), t.bbox) for t in tables}
        best = max(tables, key=lambda t: overlap[id(t)], default=None)
        if best is None or overlap[id(best)] < area / 2:
            continue
        spanned = _spanned(best)
        if spanned is not None:
            out[index] = spanned
    return out


def _overlap(a: Sequence[float], b: Sequence[float]) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    return max(width, 0.0) * max(height, 0.0)


def _spanned(table: Any) -> _Spanned | None:
    """`table` (PyMuPDF's) as HTML with rowspan/colspan, or None when no cell spans."""
    rects = [list(row.cells) for row in table.rows]
    if all(rect is not None for row in rects for rect in row):
        return None
    texts = table.extract()
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
               spanned: dict[int, _Spanned]) -> PageStructure:
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
        else:
            spans = [span for line in box.textlines or () for span in line["spans"]]
            text = layout.get_plain_text(spans).strip()
        level = int(box.header_level or 1) if box.boxclass in _HEADINGS else None
        blocks.append(Block(kind, bbox, text, level, cells))
    return PageStructure(round(page.width / scale, 2), round(page.height / scale, 2),
                         unit, tuple(blocks))
