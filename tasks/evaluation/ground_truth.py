"""Ground truth for scoring: a document's pages of text, from plain text, PAGE or ALTO.

Runs wherever reads are scored (`submit.py eval`, the nightly golden-set audit). A
document `NAME.EXT` has its ground truth beside it as `NAME.gt.txt` (UTF-8, pages
separated by a form feed) or `NAME.gt.xml` (PAGE XML or ALTO, any version: the
namespace is ignored). PAGE gives each `Page`'s `TextLine`s (their first `TextEquiv`),
or its `TextRegion`s where no line carries text; ALTO gives each `Page`'s `TextLine`s,
their `String` contents joined by spaces (a `HYP` keeps its hyphen).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator

from tasks.errors import BadRequest

__all__ = ["GT_SUFFIXES", "document_name", "parse_ground_truth"]

GT_SUFFIXES = (".gt.txt", ".gt.xml")


def document_name(filename: str) -> str:
    """`scan.pdf` -> `scan`: the NAME its ground truth `NAME.gt.*` is found by."""
    return filename.rsplit(".", 1)[0] if "." in filename else filename


def _local(tag: object) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _children(element: ET.Element, name: str) -> Iterator[ET.Element]:
    return (e for e in element.iter() if _local(e.tag) == name)


def _page_xml_text(container: ET.Element) -> str:
    equivs = [e for e in container if _local(e.tag) == "TextEquiv"]
    equivs.sort(key=lambda e: int(e.get("index", "0") or 0))
    for equiv in equivs:
        for unicode in equiv:
            if _local(unicode.tag) == "Unicode":
                return unicode.text or ""
    return ""


def _page_xml(root: ET.Element) -> list[str]:
    pages = []
    for page in _children(root, "Page"):
        lines = [_page_xml_text(line) for line in _children(page, "TextLine")]
        if not any(lines):
            lines = [_page_xml_text(region) for region in _children(page, "TextRegion")]
        pages.append("\n".join(line for line in lines if line))
    return pages


def _alto(root: ET.Element) -> list[str]:
    pages = []
    for page in _children(root, "Page"):
        lines = []
        for line in _children(page, "TextLine"):
            tokens = [e.get("CONTENT", "") for e in line
                      if _local(e.tag) in ("String", "HYP")]
            lines.append(" ".join(t for t in tokens if t))
        pages.append("\n".join(line for line in lines if line))
    return pages


def parse_ground_truth(filename: str, data: bytes) -> list[str]:
    """The pages of a ground-truth file (`*.gt.txt` or `*.gt.xml`).

    Raises `BadRequest` for a file that is not UTF-8 text, not well-formed XML, or
    XML that is neither PAGE nor ALTO.
    """
    if filename.endswith(".gt.xml"):
        try:
            root = ET.fromstring(data)
        except ET.ParseError as exc:
            raise BadRequest(f"{filename}: not well-formed XML ({exc})") from None
        kind = _local(root.tag)
        if kind == "PcGts":
            return _page_xml(root)
        if kind == "alto":
            return _alto(root)
        raise BadRequest(f"{filename}: neither PAGE XML (PcGts) nor ALTO (alto), "
                           f"but <{kind}>")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BadRequest(f"{filename}: ground truth is not UTF-8 text") from None
    return text.split("\f")
