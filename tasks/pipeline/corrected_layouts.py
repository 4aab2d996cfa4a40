"""Corrected lines written into a job's stored hOCR or ALTO document. Pure functions.

Called in the `api` process when a result is asked for as `hocr` or `alto`
(tasks/api/_results.py) and the client corrected some of its lines
(tasks/lifecycle/page_views.py). A corrected line's box (in the pixels of the image the
engine read) is mapped onto the input page as the document's boxes are
(`_geometry.to_input`); the document's words of that page whose middles lie in it
give way to the corrected words (the same word boxes where the word count is the
same, else boxes shared out over the line), where the first of them was.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Any

from tasks.pipeline._geometry import to_input
from tasks.pipeline.layouts import ALTO, XHTML
from tasks.pipeline.page_lines import PageLine, corrected_words

SLACK = 2  # pixels around a mapped line box that still hold its words' middles
HOCR_HEAD = ('<?xml version="1.0" encoding="UTF-8"?>\n'
             '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN" '
             '"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">\n')
Changes = Mapping[int, Mapping[str, tuple[PageLine, str]]]


def _mapper(page: Mapping[str, Any]) -> Any:
    size = page.get("image_size")
    if not size:
        return lambda box: box
    return to_input(size, float(page.get("rotation") or 0), float(page.get("skew") or 0.0))


def _round(box: tuple[float, ...]) -> tuple[int, int, int, int]:
    return round(box[0]), round(box[1]), round(box[2]), round(box[3])


def corrected_layout(fmt: str, document: bytes, pages: Mapping[int, Mapping[str, Any]],
                     changes: Changes) -> bytes:
    """The `hocr` or `alto` document with the changed lines' words in place.

    `pages`: the result's pages by number (their size, rotation and skew).
    """
    root = ET.fromstring(document)
    alto = fmt == "alto"
    for number, lines in changes.items():
        page_div = _page(root, number, alto)
        if page_div is None:
            continue
        mapped = _mapper(pages.get(number, {}))
        for line, text in lines.values():
            if line.box is not None:
                words = [(w["text"], _round(mapped(tuple(w["box"]))))
                         for w in corrected_words(text, line)]
                _put_words(page_div, _round(mapped(line.box)), words, alto)
    if alto:
        ET.register_namespace("", ALTO)
        return ('<?xml version="1.0" encoding="UTF-8"?>\n'
                + ET.tostring(root, encoding="unicode") + "\n").encode()
    ET.register_namespace("", XHTML)
    return (HOCR_HEAD + ET.tostring(root, encoding="unicode") + "\n").encode()


def _local(element: ET.Element) -> str:
    return element.tag.rpartition("}")[2]


def _page(root: ET.Element, number: int, alto: bool) -> ET.Element | None:
    for element in root.iter():
        if alto and _local(element) == "Page" and element.get("ID") == f"page_{number}":
            return element
        if not alto and element.get("class") == "ocr_page" and \
                element.get("id") == f"page_{number}":
            return element
    return None


def _word_box(element: ET.Element, alto: bool) -> tuple[int, int, int, int] | None:
    if alto:
        if _local(element) != "String":
            return None
        x, y = int(float(element.get("HPOS", 0))), int(float(element.get("VPOS", 0)))
        return (x, y, x + int(float(element.get("WIDTH", 0))),
                y + int(float(element.get("HEIGHT", 0))))
    if element.get("class") != "ocrx_word":
        return None
    for part in element.get("title", "").split(";"):
        bits = part.split()
        if len(bits) == 5 and bits[0] == "bbox":
            return int(bits[1]), int(bits[2]), int(bits[3]), int(bits[4])
    return None


def _inside(box: tuple[int, int, int, int], target: tuple[int, int, int, int]) -> bool:
    middle_x, middle_y = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return target[0] - SLACK <= middle_x <= target[2] + SLACK and \
        target[1] - SLACK <= middle_y <= target[3] + SLACK


def _put_words(page: ET.Element, target: tuple[int, int, int, int],
               words: list[tuple[str, tuple[int, int, int, int]]], alto: bool) -> None:
    """The page's words inside `target` replaced by `words`, where the first one was."""
    parents = {child: parent for parent in page.iter() for child in parent}
    found = [w for w in page.iter() if (box := _word_box(w, alto)) is not None
             and _inside(box, target)]
    if not found:
        return
    first = found[0]
    line = parents[first]
    ident = first.get("ID" if alto else "id", "word")
    at = list(line).index(first)
    made = []
    for index, (text, (x0, y0, x1, y1)) in enumerate(words, start=1):
        if alto:
            if index > 1:
                made.append(ET.Element(f"{{{ALTO}}}SP"))
            made.append(ET.Element(f"{{{ALTO}}}String", {
                "ID": f"{ident}_c{index}", "HPOS": str(x0), "VPOS": str(y0),
                "WIDTH": str(x1 - x0), "HEIGHT": str(y1 - y0), "CONTENT": text,
                "WC": "1.00"}))
        else:
            span = ET.Element(first.tag, {"class": "ocrx_word", "id": f"{ident}_c{index}",
                                          "title": f"bbox {x0} {y0} {x1} {y1}; x_wconf 100"})
            span.text = text
            span.tail = first.tail
            made.append(span)
    for offset, element in enumerate(made):
        line.insert(at + offset, element)
    touched = {parents[w] for w in found}
    for element in found:
        parents[element].remove(element)
    if alto:
        for each in touched:
            _tidy_spaces(each)


def _tidy_spaces(line: ET.Element) -> None:
    """No ALTO `SP` at a line's ends or two in a row (left where words were taken out)."""
    previous_space = True
    for element in list(line):
        space = _local(element) == "SP"
        if space and previous_space:
            line.remove(element)
            continue
        previous_space = space
    children = list(line)
    if children and _local(children[-1]) == "SP":
        line.remove(children[-1])
