"""A born-digital PDF whose Symbol font maps its glyphs to private-use code points.

Word writes its Symbol bullets so: the font's ToUnicode gives U+F000 plus the glyph's
code (U+F0B7 for the bullet, U+F0AE for the right arrow). The text, the Markdown and
the JSON blocks give the characters the glyphs draw, never a private-use code point or
U+FFFD.
"""

from __future__ import annotations

from typing import Any

import pymupdf
import pytest

from tasks.pipeline._symbol_fonts import SYMBOL, with_symbols
from tasks.pipeline.documents import run_document
from tasks.records.request import JobRequest
from tasks.settings import Settings
from tests.fake_engines import FakeEngine

TO_UNICODE = b"""/CIDInit /ProcSet findresource begin 12 dict begin begincmap
/CMapName /Adobe-Identity-UCS def /CMapType 2 def
1 begincodespacerange <00> <FF> endcodespacerange
3 beginbfchar <B7> <F0B7> <AE> <F0AE> <B3> <F0B3> endbfchar
endcmap CMapName currentdict /CMap defineresource pop end end"""


def symbol_pdf() -> bytes:
    """Bullets and an arrow in Base14 Symbol (`symb`), its ToUnicode private-use."""
    doc = pymupdf.open()
    page = doc.new_page()
    page.insert_text((72, 72), "Shopping list", fontname="helv", fontsize=14)
    y = 100
    for item in ("apples", "pears", "plums"):
        page.insert_text((72, y), "\u00b7", fontname="symb", fontsize=11)  # code B7
        page.insert_text((90, y), item, fontname="helv", fontsize=11)
        y += 16
    y += 20
    page.insert_text((72, y), "Go", fontname="helv", fontsize=11)
    page.insert_text((90, y), "\u00ae", fontname="symb", fontsize=11)  # code AE
    page.insert_text((104, y), "there, and x", fontname="helv", fontsize=11)
    page.insert_text((170, y), "\u00b3", fontname="symb", fontsize=11)  # code B3
    page.insert_text((180, y), "y.", fontname="helv", fontsize=11)
    (xref,) = [f[0] for f in page.get_fonts() if f[3] == "Symbol"]
    cmap = doc.get_new_xref()
    doc.update_object(cmap, "<<>>")
    doc.update_stream(cmap, TO_UNICODE)
    doc.xref_set_key(xref, "ToUnicode", f"{cmap} 0 R")
    data = bytes(doc.tobytes())
    assert "\uf0b7" in pymupdf.open(stream=data)[0].get_text()  # the case itself
    return data


@pytest.fixture(scope="module")
def pdf() -> bytes:
    return symbol_pdf()


def read(data: bytes, output: str) -> dict[str, Any]:
    return run_document(data, JobRequest(source="blob", output=output), FakeEngine(0),
                        Settings.from_env({})).to_json()


def no_private(text: str) -> bool:
    return not any(c == "\ufffd" or 0xE000 <= ord(c) <= 0xF8FF for c in text)


def test_text_gives_the_drawn_characters(pdf: bytes) -> None:
    text = read(pdf, "text")["text"]
    assert no_private(text)
    assert text.count("\u2022") == 3 and "\u2192" in text and "\u2265" in text


def test_markdown_and_json_blocks_give_them_too(pdf: bytes) -> None:
    markdown = read(pdf, "markdown")["text"]
    assert no_private(markdown)
    assert "- apples" in markdown and "\u2192" in markdown and "\u2265" in markdown
    page = read(pdf, "json")["pages"][0]
    blocks = page["structure"]["blocks"]
    assert [b["text"] for b in blocks if b["kind"] == "list_item"][:3] == \
        ["apples", "pears", "plums"]
    joined = " ".join(b["text"] for b in blocks)
    assert no_private(joined) and "\u2192" in joined and no_private(page["text"])


def test_the_tables() -> None:
    # Adobe's Symbol encoding: Greek letters, arrows, relations; no private use left
    assert with_symbols("\uf061\uf062\uf0ae\uf0b3\uf0b7", "ABCDEE+Symbol") == "αβ→≥•"
    assert not any(0xE000 <= v <= 0xF8FF for v in SYMBOL.values())
    assert with_symbols("\uf0a7 \uf0d8 \uf0fc", "Wingdings-Regular") == "▪ ➢ ✓"
    assert with_symbols("plain \u00b7", "Symbol") == "plain \u00b7"
