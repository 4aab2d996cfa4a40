"""Born-digital PDFs whose fonts give glyphs no Unicode of their own.

Word writes its Symbol bullets so: the font's ToUnicode gives U+F000 plus the glyph's
code (U+F0B7 for the bullet, U+F0AE for the right arrow). IBM's BookMaster font names
its bullet SM590000 (IBM's name for ►) and has no ToUnicode. The text, the Markdown
(its tables too) and the JSON blocks give the characters the glyphs draw, never a
private-use code point, a control character or U+FFFD.
"""

from __future__ import annotations

from typing import Any

import pymupdf
import pytest

from tasks.pipeline._markdown import is_unmapped
from tasks.pipeline._symbol_fonts import SYMBOL, named_codes, with_symbols
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
    # a /Differences array: codes, each followed by the names from that code on
    assert named_codes("[ 2 /SM590000 /bullet 40 /a /SM590000 ]") == {2: "►", 41: "►"}
    assert named_codes("[ 32 /space /a1 ]") == {}


def glyphs_table_pdf() -> bytes:
    """A ruled table whose cells hold glyphs that have no Unicode of their own.

    A Type 3 font draws a pointer (a triangle) for code 2, which its encoding names
    SM590000 (IBM's name for ►), with no ToUnicode: as IBM's Redbooks' BookMaster font
    draws its bullets. Another draws Symbol's greater-or-equal, which its ToUnicode
    maps to the private-use U+F0B3, as Word writes Symbol's characters.
    """
    doc = pymupdf.open()
    page = doc.new_page(width=595, height=842)
    page.insert_text((72, 80), "Function usage", fontsize=20, fontname="hebo")
    page.insert_text((72, 110), "The columns of the function usage view, with the values "
                                "each takes.", fontsize=10)
    proc = doc.get_new_xref()
    doc.update_object(proc, "<<>>")
    doc.update_stream(proc, b"600 0 0 0 600 600 d1 50 50 m 550 300 l 50 550 l f")
    named = doc.get_new_xref()
    doc.update_object(named, (
        "<< /Type /Font /Subtype /Type3 /FontBBox [0 0 1000 1000] "
        f"/FontMatrix [0.001 0 0 0.001 0 0] /CharProcs << /SM590000 {proc} 0 R >> "
        "/Encoding << /Type /Encoding /Differences [2 /SM590000] >> /FirstChar 2 "
        "/LastChar 2 /Widths [600] /Resources << >> >>"))
    cmap = doc.get_new_xref()
    doc.update_object(cmap, "<<>>")
    doc.update_stream(cmap, b"/CIDInit /ProcSet findresource begin 12 dict begin begincmap "
                      b"/CMapName /Sym def 1 begincodespacerange <00> <FF> endcodespacerange "
                      b"1 beginbfchar <03> <F0B3> endbfchar endcmap CMapName currentdict "
                      b"/CMap defineresource pop end end")
    private = doc.get_new_xref()
    doc.update_object(private, (
        "<< /Type /Font /Subtype /Type3 /FontBBox [0 0 1000 1000] "
        f"/FontMatrix [0.001 0 0 0.001 0 0] /CharProcs << /uniF0B3 {proc} 0 R >> "
        "/Encoding << /Type /Encoding /Differences [3 /uniF0B3] >> /FirstChar 3 "
        f"/LastChar 3 /Widths [600] /Resources << >> /ToUnicode {cmap} 0 R >>"))
    kind, value = doc.xref_get_key(page.xref, "Resources")
    owner = int(value.split()[0]) if kind == "xref" else page.xref
    prefix = "" if kind == "xref" else "Resources/"
    doc.xref_set_key(owner, prefix + "Font/FN", f"{named} 0 R")
    doc.xref_set_key(owner, prefix + "Font/FP", f"{private} 0 R")
    x, y = [72, 180, 280, 540], [140, 160, 220, 250, 280]
    shape = page.new_shape()
    for left in x:
        shape.draw_line((left, y[0]), (left, y[-1]))
    for top in y:
        shape.draw_line((x[0], top), (x[-1], top))
    shape.finish(color=(0, 0, 0), width=0.8)
    shape.commit()
    for (row, col), text in {(0, 0): "Column name", (0, 1): "Data type",
                             (0, 2): "Description", (1, 0): "USAGE", (1, 1): "VARCHAR(7)",
                             (2, 0): "LEVEL", (2, 1): "INTEGER", (3, 0): "USER_TYPE",
                             (3, 1): "VARCHAR(5)",
                             (3, 2): "Type of user profile, one of two."}.items():
        page.insert_text((x[col] + 5, y[row] + 14), text, fontsize=9)
    lines = [b"BT /helv 9 Tf %d %d Td (Usage setting:) Tj ET" % (x[2] + 5, 842 - y[1] - 14)]
    for n, words in enumerate((b"ALLOWED: The profile may use the function.",
                               b"DENIED: The profile may not use the function.")):
        lines.append(b"BT /FN 8 Tf %d %d Td <02> Tj /helv 9 Tf 12 0 Td (%s) Tj ET"
                     % (x[2] + 5, 842 - y[1] - 27 - 13 * n, words))
    lines.append(b"BT /helv 9 Tf %d %d Td (Levels ) Tj /FP 9 Tf <03> Tj /helv 9 Tf "
                 b"( 5 need approval.) Tj ET" % (x[2] + 5, 842 - y[2] - 14))
    xref = page.get_contents()[0]
    doc.update_stream(xref, doc.xref_stream(xref) + b"\n" + b"\n".join(lines))
    page.insert_text((72, 300), "Each profile has one row per function.", fontsize=10)
    return bytes(doc.tobytes())


def test_glyphs_without_unicode_in_a_table_read_as_they_draw() -> None:
    """The named pointer and Symbol's private-use character, in every output.

    A table's text is read apart from its spans (pymupdf4llm's table grid, from MuPDF's
    characters); the Markdown gives it as the plain text does.
    """
    data = glyphs_table_pdf()
    plain = pymupdf.open(stream=data)[0].get_text()
    assert "\x02\nALLOWED" in plain and "\uf0b3" in plain  # as MuPDF reads them
    text = read(data, "text")["text"]
    markdown = read(data, "markdown")["text"]
    page = read(data, "json")["pages"][0]
    table = next(b for b in page["structure"]["blocks"] if b["kind"] == "table")
    words = [w["text"] for w in read(data, "hocr")["pages"][0]["words"]]
    for found in (text, markdown, page["text"], table["text"], repr(table["cells"]),
                  " ".join(words)):
        assert not any(is_unmapped(ch) for ch in found), found
    assert words.count("\u25ba") == 2 and "\u2265" in words
    assert text.count("\u25ba") == 2 and "Levels \u2265 5 need approval." in text
    assert "|Usage setting:<br>\u25ba<br>ALLOWED: The profile may use the function." \
        "<br>\u25ba<br>DENIED:" in markdown
    assert "\u2265" in table["text"] and any("\u2265" in (cell or "")
                                              for row in table["cells"] for cell in row)
