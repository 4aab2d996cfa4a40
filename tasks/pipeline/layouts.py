"""hOCR and ALTO documents from per-page hOCR: merge, renumber, convert. Pure functions.

Runs in worker children (where the job's last page is in, `tasks.lifecycle.jobs.finish`)
and in tests. Each OCR'd page carries its hOCR `ocr_page` div (`PageRecord.hocr`: from
tesseract's own renderer, or `words_hocr` for engines that give words only). A document
is the pages' divs in page order inside one XHTML file, every id renumbered from the
page number (`page_3`, `block_3_1`, `line_3_2`, `word_3_17`) and `ppageno` set, so a
merged multi-page PDF is one well-formed document. ALTO (v4) is converted from the
same hOCR: blocks and paragraphs become TextBlocks, lines TextLines, words Strings
with `WC` (confidence 0-1) and `SP` between them.

Coordinates are pixels of the input page image (the image, or the PDF page rendered at
OCR_PDF_DPI): boxes of the upright, deskewed image tesseract read are mapped back
(tasks/pipeline/_geometry.py), so tools overlay them on the page as it is.
A PDF text layer's page carries its own words with their boxes (PyMuPDF's, mapped to
the page rendered at OCR_PDF_DPI: `pdf.text_layer_words`); a failed or blank page is
an empty page. Each OCR'd page div carries its language (`lang`, `xml:lang`), the
document the one most pages are in, each ALTO TextBlock its `LANG`.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

from tasks.pipeline._geometry import Box, to_input
from tasks.records.languages import main_tag, page_tag, tag
from tasks.records.results import PageRecord

LAYOUT_OUTPUTS = ("hocr", "alto")
XHTML = "http://www.w3.org/1999/xhtml"
ALTO = "http://www.loc.gov/standards/alto/ns-v4#"
_BBOX = re.compile(r"bbox (-?\d+) (-?\d+) (-?\d+) (-?\d+)")
_WCONF = re.compile(r"x_wconf (-?[\d.]+)")
_PPAGENO = re.compile(r"ppageno \d+")
_ID_KINDS = {"ocr_page": "page", "ocr_carea": "block", "ocr_par": "par", "ocr_line": "line",
             "ocr_caption": "line", "ocr_header": "line", "ocr_textfloat": "line",
             "ocrx_word": "word", "ocr_photo": "block", "ocr_separator": "block"}
LINE_CLASSES = ("ocr_line", "ocr_caption", "ocr_header", "ocr_textfloat")


def _tag(element: ET.Element) -> str:
    return element.tag.rpartition("}")[2]


def _classes(element: ET.Element) -> str:
    return element.get("class", "")


def _bbox(element: ET.Element) -> tuple[int, int, int, int] | None:
    match = _BBOX.search(element.get("title", ""))
    return None if match is None else (int(match[1]), int(match[2]), int(match[3]),
                                       int(match[4]))


def _empty_page(number: int, size: Sequence[int] | None = None) -> ET.Element:
    width, height = size if size else (0, 0)
    return ET.Element("div", {"class": "ocr_page", "id": f"page_{number}",
                              "title": f"bbox 0 0 {width} {height}; ppageno {number - 1}"})


def page_element(number: int, hocr: str | None,
                 to_input: Callable[[Box], Box] | None = None,
                 size: Sequence[int] | None = None) -> ET.Element:
    """One page's `ocr_page` div, ids renumbered for page `number` (1-based).

    With `to_input` every bbox is mapped onto the input page image (of `size`).
    """
    if not hocr:
        return _empty_page(number)
    root = ET.fromstring(hocr.strip())
    for element in root.iter():
        element.tag = _tag(element)  # the fragment is namespace-less; keep it so
    page = root if _classes(root) == "ocr_page" else root.find(".//*[@class='ocr_page']")
    if page is None:
        return _empty_page(number)
    counters: dict[str, int] = {}
    for element in page.iter():
        kind = _ID_KINDS.get(_classes(element))
        if kind is None or element is page:
            continue
        counters[kind] = counters.get(kind, 0) + 1
        element.set("id", f"{kind}_{number}_{counters[kind]}")
    if to_input is not None and size is not None:
        for element in page.iter():
            box = _bbox(element)
            if box is not None and element is not page:
                x0, y0, x1, y1 = (round(v) for v in to_input(box))
                element.set("title", _BBOX.sub(f"bbox {x0} {y0} {x1} {y1}",
                                               element.get("title", ""), count=1))
        page.set("title", _BBOX.sub(f"bbox 0 0 {size[0]} {size[1]}",
                                    page.get("title", ""), count=1))
    page.set("id", f"page_{number}")
    title = page.get("title", "")
    title = _PPAGENO.sub(f"ppageno {number - 1}", title) if _PPAGENO.search(title) \
        else f"{title}; ppageno {number - 1}".lstrip("; ")
    page.set("title", title)
    return page


def words_hocr(number: int, words: Iterable[Any], size: Sequence[int]) -> str:
    """An `ocr_page` div for an engine that gives words but no hOCR of its own.

    Words are grouped into lines by vertical overlap, in reading order (top to bottom,
    left to right); one block and paragraph hold every line.
    """
    items = sorted(words, key=lambda w: (w.box[1] + w.box[3]) / 2)
    lines: list[list[Any]] = []
    for word in items:
        middle = (word.box[1] + word.box[3]) / 2
        if lines and lines[-1][0].box[1] <= middle <= lines[-1][0].box[3]:
            lines[-1].append(word)
        else:
            lines.append([word])
    page = _empty_page(number, size)
    if not lines:
        return ET.tostring(page, encoding="unicode")
    block = ET.SubElement(page, "div", {"class": "ocr_carea", "title": _title(items)})
    par = ET.SubElement(block, "p", {"class": "ocr_par", "title": _title(items)})
    for line_words in lines:
        line_words.sort(key=lambda w: w.box[0])
        line = ET.SubElement(par, "span", {"class": "ocr_line", "title": _title(line_words)})
        for word in line_words:
            span = ET.SubElement(line, "span", {
                "class": "ocrx_word",
                "title": f"bbox {' '.join(map(str, word.box))}; "
                         f"x_wconf {round(word.confidence)}"})
            span.text = word.text
    return ET.tostring(page_element(number, ET.tostring(page, encoding="unicode")),
                       encoding="unicode")


def _title(words: Sequence[Any]) -> str:
    x0, y0 = min(w.box[0] for w in words), min(w.box[1] for w in words)
    x1, y1 = max(w.box[2] for w in words), max(w.box[3] for w in words)
    return f"bbox {x0} {y0} {x1} {y1}"


def _pages(pages: Iterable[PageRecord], earlier: dict[int, ET.Element] | None = None
           ) -> list[ET.Element]:
    """Page divs in page order; a page without hOCR takes its div from `earlier`."""
    ordered = sorted(pages, key=lambda p: p.number)
    kept = earlier or {}
    return [kept[p.number] if not p.hocr and p.number in kept
            else _own_page(p) for p in ordered]


def _own_page(page: PageRecord) -> ET.Element:
    """A page's div from its own hOCR, boxes on the input page image when known."""
    size = page.image_size
    if not page.hocr and page.source == "text-layer" and size and page.words is not None:
        # a PDF text layer's words, already in the rendered page's pixels
        return page_element(page.number, words_hocr(page.number, page.words, size))
    mapped = (to_input(size, page.rotation or 0, page.skew or 0.0) if size else None)
    return _with_lang(page_element(page.number, page.hocr, mapped, size), page.lang)


def _with_lang(div: ET.Element, lang: str | None) -> ET.Element:
    """The page div with the page's language (`lang`, `xml:lang`: a BCP 47 tag).

    The language its paragraphs were mostly read in (tesseract writes each `ocr_par`'s
    code) where the page was read with several, else the set's first one.
    """
    found = [par.get("lang", "") for par in div.iter() if _classes(par) == "ocr_par"]
    language = page_tag(lang, found)
    if language is not None:
        div.set("lang", language)
        div.set("xml:lang", language)
    return div


def earlier_pages(output: str, document: bytes | None) -> dict[int, ET.Element]:
    """The pages of an earlier hOCR or ALTO document of the job, by page number.

    A retry (`merge_from`) re-reads only the failed pages; the pages it keeps come
    from the document the earlier job stored.
    """
    if not document:
        return {}
    root = ET.fromstring(document)
    found: dict[int, ET.Element] = {}
    for element in root.iter():
        ident = element.get("ID" if output == "alto" else "id", "")
        is_page = (_tag(element) == "Page" if output == "alto"
                   else _classes(element) == "ocr_page")
        if is_page and ident.startswith("page_") and ident[5:].isdigit():
            found[int(ident[5:])] = element
    if output == "hocr":  # the merged document writes its XHTML namespace itself
        for page in found.values():
            for element in page.iter():
                element.tag = _tag(element)
    return found


def merge_hocr(pages: Iterable[PageRecord],
               earlier: dict[int, ET.Element] | None = None) -> str:
    """One hOCR (XHTML) document of the pages, in page order."""
    divs = _pages(pages, earlier)
    # The document's language: the one most pages are in (en when none says).
    language = main_tag(div.get("lang") for div in divs) or "en"
    html = ET.Element("html", {"xmlns": XHTML, "xml:lang": language, "lang": language})
    head = ET.SubElement(html, "head")
    ET.SubElement(head, "title").text = "OCR output"
    ET.SubElement(head, "meta", {"http-equiv": "Content-Type",
                                 "content": "text/html;charset=utf-8"})
    ET.SubElement(head, "meta", {"name": "ocr-system", "content": "ocr-queue tesseract"})
    ET.SubElement(head, "meta", {"name": "ocr-capabilities",
                                 "content": "ocr_page ocr_carea ocr_par ocr_line ocrx_word "
                                            "ocrp_wconf"})
    body = ET.SubElement(html, "body")
    body.extend(divs)
    ET.indent(html, space=" ")
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN" '
            '"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">\n'
            + ET.tostring(html, encoding="unicode") + "\n")


def merge_alto(pages: Iterable[PageRecord],
               earlier: dict[int, ET.Element] | None = None) -> str:
    """One ALTO v4 document of the pages, in page order."""
    ET.register_namespace("", ALTO)
    alto = ET.Element(f"{{{ALTO}}}alto")
    description = ET.SubElement(alto, f"{{{ALTO}}}Description")
    ET.SubElement(description, f"{{{ALTO}}}MeasurementUnit").text = "pixel"
    layout = ET.SubElement(alto, f"{{{ALTO}}}Layout")
    kept = earlier or {}
    for page in sorted(pages, key=lambda p: p.number):
        number = page.number
        if not page.hocr and number in kept:
            layout.append(kept[number])
        else:
            layout.append(_alto_page(_own_page(page)))
    ET.indent(alto, space=" ")
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            + ET.tostring(alto, encoding="unicode") + "\n")


def _alto_page(page: ET.Element) -> ET.Element:
    number = int(page.get("id", "page_1").rpartition("_")[2])
    x0, y0, x1, y1 = _bbox(page) or (0, 0, 0, 0)
    out = ET.Element(f"{{{ALTO}}}Page", {"ID": f"page_{number}",
                                        "PHYSICAL_IMG_NR": str(number),
                                        "WIDTH": str(x1 - x0), "HEIGHT": str(y1 - y0)})
    space = ET.SubElement(out, f"{{{ALTO}}}PrintSpace", _box(x0, y0, x1, y1))
    for par in page.iter():
        if _classes(par) != "ocr_par":
            continue
        block = ET.SubElement(space, f"{{{ALTO}}}TextBlock",
                              {"ID": par.get("id", ""), **_box(*(_bbox(par) or (0, 0, 0, 0)))})
        language = tag(par.get("lang", "")) if par.get("lang") else page.get("lang")
        if language:
            block.set("LANG", language)  # ALTO's language of a block (xsd:language)
        for line in par.iter():
            if _classes(line) not in LINE_CLASSES:
                continue
            text_line = ET.SubElement(block, f"{{{ALTO}}}TextLine", {
                "ID": line.get("id", ""), **_box(*(_bbox(line) or (0, 0, 0, 0)))})
            words = [w for w in line.iter() if _classes(w) == "ocrx_word"]
            for index, word in enumerate(words):
                content = "".join(word.itertext()).strip()
                if not content:
                    continue
                if index:
                    ET.SubElement(text_line, f"{{{ALTO}}}SP")
                conf = _WCONF.search(word.get("title", ""))
                attrs = {"ID": word.get("id", ""), **_box(*(_bbox(word) or (0, 0, 0, 0))),
                         "CONTENT": content}
                if conf is not None:
                    attrs["WC"] = f"{max(0.0, min(100.0, float(conf[1]))) / 100:.2f}"
                ET.SubElement(text_line, f"{{{ALTO}}}String", attrs)
    return out


def _box(x0: int, y0: int, x1: int, y1: int) -> dict[str, str]:
    return {"HPOS": str(x0), "VPOS": str(y0), "WIDTH": str(x1 - x0), "HEIGHT": str(y1 - y0)}


def render(output: str, pages: Iterable[PageRecord], earlier: bytes | None = None
           ) -> bytes:
    """The `hocr` or `alto` document of the pages, UTF-8.

    `earlier` is the document a retried job stored: pages without hOCR of their own
    (kept from that job) take their page from it.
    """
    merge = merge_hocr if output == "hocr" else merge_alto
    return merge(pages, earlier_pages(output, earlier)).encode()


def without_layout(pages: Iterable[PageRecord]) -> list[PageRecord]:
    """The pages without their per-page hOCR (kept in the stored document only)."""
    return [replace(page, hocr=None) for page in pages]
