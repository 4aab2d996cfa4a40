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

from collections.abc import Sequence
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
            markdown = layout.ParsedDocument(pages=[page]).to_markdown(
                header=False, footer=False)
            out[page.page_number] = Analysed(str(markdown).strip(),
                                             _structure(layout, page, scale, unit))
        except Exception as exc:  # noqa: BLE001 - any failure costs the page only
            out[page.page_number] = _failed(page.page_number, exc)
    return out


def _parse(layout: Any, doc: Any, numbers: Sequence[int]) -> list[Any]:
    """pymupdf4llm's parse of the pages, from their text layers only (OCR is ours)."""
    from pymupdf4llm.ocr import OCRMode

    parsed = layout.parse_document(doc, pages=[n - 1 for n in numbers],
                                   use_ocr=OCRMode.NEVER, force_text=True)
    return list(parsed.pages)


def _failed(number: int, exc: BaseException) -> LayoutFailed:
    return LayoutFailed(f"page {number}: the layout analysis failed "
                        f"({type(exc).__name__}); the page's text is given plain")


def _structure(layout: Any, page: Any, scale: float, unit: str) -> PageStructure:
    blocks = []
    for box in page.boxes:
        kind = _KINDS.get(box.boxclass, "text")
        bbox = (round(box.x0 / scale, 2), round(box.y0 / scale, 2),
                round(box.x1 / scale, 2), round(box.y1 / scale, 2))
        cells = None
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
