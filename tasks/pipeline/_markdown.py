"""A page's Markdown, block by block, from pymupdf4llm's parse of it.

Runs in worker children, called by tasks/pipeline/structure.py with the parsed page
(pymupdf4llm's `PageLayout`, boxes in reading order) and its module
`pymupdf4llm.helpers.document_layout` (`layout`), whose writers it uses for the
blocks it writes as pymupdf4llm does (paragraphs with their emphasis, tables,
footnotes, picture text). What it writes its own way:

- every block is its own CommonMark block: blocks are parted by a blank line, and a
  paragraph that would start with `#` has it escaped, so the only lines that start
  with `#` are the headings;
- a heading is one line of plain text at the level it is given (no `**` inside);
- a list item starts at each line that begins with a bullet glyph, mapped or not
  (U+FFFD, a private-use code point, a control character, a symbol font's glyph), and
  the glyph is dropped; in a text block too, when its first line starts with one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_SKIPPED = ("page-header", "page-footer")
# Bullets that are characters of their own (pymupdf4llm's list, less the ASCII and
# dash characters that start ordinary sentences, plus more dingbats).
_BULLETS = frozenset("•◦▪▫‣⁃●○■□►▶▸▹◆◇◊♦❖➢➤✓✔∙·") | {chr(c) for c in range(0x25A0, 0x2600)}
_SYMBOL_FONT = re.compile(r"symbol|dingbat|wingding|webding", re.IGNORECASE)
# What symbol fonts' bullets extract as when their font maps them to ASCII or Latin-1
# (Wingdings: l a disc, n a square, q v u Ø ü § boxes, diamonds, arrows, ticks).
_SYMBOL_BULLETS = frozenset("lnquvØü§·o")
_REPLACEMENT = "\ufffd"


def is_unmapped(ch: str) -> bool:
    """A character that stands for a glyph without a Unicode meaning of its own.

    U+FFFD, a private-use code point, or a control character: where a font maps a
    glyph to nothing (or to U+FFFD), MuPDF gives the glyph's character code.
    """
    code = ord(ch)
    return ch == _REPLACEMENT or 0xE000 <= code <= 0xF8FF or code >= 0xF0000 \
        or (code < 0x20 and ch not in "\t\n\r")


def _bullet_span(span: Mapping[str, Any]) -> bool:
    """Whether a line's first span starts with a bullet glyph."""
    text = str(span["text"]).lstrip()
    if not text:
        return False
    if is_unmapped(text[0]):
        return True
    if text[0] in _BULLETS:
        return len(text) == 1 or text[1].isspace() or is_unmapped(text[1])
    return _symbol_bullet(span, text)


def _symbol_bullet(span: Mapping[str, Any], text: str) -> bool:
    """A symbol font's bullet glyph alone in its span (Wingdings' disc is an "l")."""
    return bool(_SYMBOL_FONT.search(str(span.get("font", "")))) \
        and len(text.strip()) == 1 and text.strip() in _SYMBOL_BULLETS


def _drop_bullet(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The line's spans without its leading bullet glyph(s) and the space after."""
    out = [dict(s) for s in spans]
    while out:
        text = str(out[0]["text"]).lstrip()
        if _symbol_bullet(out[0], text):
            text = ""
        while text and (is_unmapped(text[0]) or text[0] in _BULLETS):
            text = text[1:]
        text = text.lstrip()
        if text:
            out[0]["text"] = text
            break
        out.pop(0)
    return out


def list_items(textlines: list[dict[str, Any]], listed: bool) -> list[list[dict[str, Any]]] | None:
    """The block's lines as list items (each the spans of its lines), or None.

    An item starts at a line that begins with a bullet glyph; in a list-item block
    (`listed`) also at a line that starts left of the line before (pymupdf4llm's rule
    for a hanging indent). A text block is a list only when its first line starts
    with a bullet.
    """
    lines = [line for line in textlines if line.get("spans")]
    if not lines:
        return None
    marked = [_bullet_span(line["spans"][0]) for line in lines]
    if not listed and not marked[0]:
        return None
    items: list[list[dict[str, Any]]] = []
    left = None
    for line, bullet in zip(lines, marked, strict=True):
        x0 = line["bbox"][0]
        spans = _drop_bullet(line["spans"]) if bullet else list(line["spans"])
        if not items or bullet or (listed and left is not None and x0 < left - 2):
            items.append(spans)
        else:
            items[-1].extend(spans)
        left = x0
    # an item of punctuation alone (a stray hyphen of a broken URL) is no item
    return [item for item in items
            if any(ch.isalnum() for span in item for ch in str(span["text"]))]


def heading_text(layout: Any, textlines: list[dict[str, Any]] | None) -> str:
    """A heading's plain text on one line."""
    spans = [span for line in textlines or () for span in line["spans"]]
    return " ".join(str(layout.get_plain_text(spans)).split())


def plain_text(layout: Any, box: Any) -> str:
    """A block's plain text (JSON): a list's items one a line, without their bullets."""
    items = list_items(box.textlines or [], box.boxclass == "list-item")
    if items is not None:
        return "\n".join(" ".join(str(layout.get_plain_text(item)).split())
                         for item in items)
    spans = [span for line in box.textlines or () for span in line["spans"]]
    return str(layout.get_plain_text(spans)).strip()


def page_markdown(layout: Any, page: Any, levels: Mapping[int, int],
                  full_ocred: bool = False) -> str:
    """The page's Markdown: its blocks (headers and footers left out) parted by blank lines.

    `levels` holds the level of each heading box, by its index in `page.boxes`.
    """
    list_levels = layout.create_list_item_levels(page.boxes)
    blocks = []
    for index, box in enumerate(page.boxes):
        kind = box.boxclass
        if kind in _SKIPPED:
            continue
        if kind in ("picture", "formula"):
            text = layout.picture_text_to_md(box.textlines, ignore_code=True) \
                if box.textlines else ""
        elif kind == "table":
            table = box.table or {}
            text = str(table.get("html") or table.get("markdown") or "")
            if full_ocred:
                text = text.replace("`", "")
        elif kind in ("title", "section-header"):
            words = heading_text(layout, box.textlines)
            text = f"{'#' * levels.get(index, 6)} {words}" if words else ""
        elif kind == "footnote":
            text = _escaped(layout.footnote_to_md(box.textlines or []))
        else:
            text = _list_or_text(layout, box, list_levels.get(index, 1), full_ocred)
        text = text.lstrip("\n").rstrip()
        if text.strip():
            blocks.append(text)
    return "\n\n".join(blocks)


def _list_or_text(layout: Any, box: Any, level: int, full_ocred: bool) -> str:
    items = list_items(box.textlines or [], box.boxclass == "list-item")
    if items is None:
        return _escaped(layout.text_to_md(box.textlines or [], ignore_code=full_ocred))
    indent = "   " * (level - 1)
    out = []
    for item in items:
        styled, _ = layout.get_styled_text(item)
        styled = styled.strip()
        first = styled.split(" ", 1)[0]
        ordered = first.endswith(".") and first[:-1].isdigit()
        out.append(indent + ("" if ordered else "- ") + styled)
    return "\n".join(out)


def _escaped(markdown: str) -> str:
    """A paragraph's Markdown that no parser reads as a heading."""
    stripped = markdown.lstrip(" ")
    return "\\" + stripped if stripped.startswith("#") else stripped
