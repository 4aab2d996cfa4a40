"""Images made for the limit tests, generated in memory (nothing big in the repo)."""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import numpy as np
from PIL import Image


def png(shade: int = 200, size: tuple[int, int] = (64, 48)) -> bytes:
    """A plain grey PNG: the fake engines answer `fake WxH mean=SHADE` (dark ones fault)."""
    buffer = io.BytesIO()
    Image.new("L", size, shade).save(buffer, "PNG")
    return buffer.getvalue()


def bomb_frame_tiff() -> bytes:
    """A G4 TIFF: page 1 is 800x600, page 2 is 15000x15000 (225 Mpx) of white."""
    buf = io.BytesIO()
    Image.new("1", (800, 600), 1).save(buf, "TIFF", save_all=True, compression="group4",
                                       append_images=[Image.new("1", (15000, 15000), 1)])
    return buf.getvalue()


def big_rgba_png(side: int = 13300) -> bytes:
    """A side x side RGBA PNG (white, a dark band every 1000 rows), made row by row."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))

    white, dark = b"\0" + b"\xff" * 4 * side, b"\0" + b"\x20\x20\x20\xff" * side
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(dark if y % 1000 < 40 else white) for y in range(side))
    idat += packer.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 6,
                                                              0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def filtered_png(pixels: np.ndarray, colour_type: int) -> bytes:
    """An 8-bit PNG of `pixels` (H x W x channels) whose rows use filters 0-4 in turn."""
    height = pixels.shape[0]
    rows = pixels.reshape(height, -1).astype(np.int16)
    bpp = pixels.shape[2]
    out = bytearray()
    for y in range(height):
        raw = rows[y]
        up = rows[y - 1] if y else np.zeros_like(raw)
        left = np.concatenate([np.zeros(bpp, np.int16), raw[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, np.int16), up[:-bpp]])
        kind = y % 5
        if kind == 0:
            encoded = raw
        elif kind == 1:
            encoded = raw - left
        elif kind == 2:
            encoded = raw - up
        elif kind == 3:
            encoded = raw - (left + up) // 2
        else:
            p = left + up - upleft
            pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - upleft)
            predictor = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
            encoded = raw - predictor
        out += bytes([kind]) + (encoded % 256).astype(np.uint8).tobytes()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))

    header = struct.pack(">IIBBBBB", pixels.shape[1], height, 8, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(bytes(out), 6)) + chunk(b"IEND", b""))


# A page in five European languages, as the multilingual test page users send: a
# paragraph each in English, German, Spanish, Portuguese and French (what `lang=auto`
# must read with the languages its words hold, not as English alone).
EUROPEAN_PARAGRAPHS = (
    ("eng", ["The quick brown fox jumps over the lazy dog. This sentence",
             "is used to test typewriters and computer keyboards, and",
             "to show every letter of the English alphabet at once."]),
    ("deu", ["Der schnelle braune Fuchs springt über den faulen Hund.",
             "Zwölf Boxkämpfer jagen Viktor quer über den großen Sylter",
             "Deich, während die Möwen über dem Wasser kreisen."]),
    ("spa", ["El veloz zorro marrón salta sobre el perro perezoso.",
             "El pingüino Wenceslao hizo kilómetros bajo exhaustiva",
             "lluvia y frío, añoraba a su querido cachorro."]),
    ("por", ["A rápida raposa marrom salta sobre o cão preguiçoso.",
             "Luís argüia à Júlia que «brações, fé, chá, óxido, pôr,",
             "zângão» eram palavras do português."]),
    ("fra", ["Le vif renard brun saute par-dessus le chien paresseux.",
             "Portez ce vieux whisky au juge blond qui fume sur son île",
             "intérieure, à côté de l'alcôve ovoïde, où les bûches brûlent."]),
)


# A notice in six European languages (a paragraph each: English, German, French,
# Italian, Spanish, Portuguese), set in Times: held out from the sentences and the font
# the line identification was measured on above, for the multilingual test.
NOTICE_PARAGRAPHS = (
    ("eng", ["Please keep this notice with your tickets. The museum",
             "opens at nine in the morning and closes at six on weekdays."]),
    ("deu", ["Bitte bewahren Sie diesen Hinweis bei Ihren Eintrittskarten",
             "auf. Das Museum öffnet werktags um neun Uhr und schließt um"]),
    ("fra", ["Veuillez conserver cet avis avec vos billets. Le musée ouvre",
             "à neuf heures du matin et ferme à dix-huit heures en semaine."]),
    ("ita", ["Si prega di conservare questo avviso insieme ai biglietti. Il",
             "museo apre alle nove del mattino e chiude alle diciotto."]),
    ("spa", ["Por favor, conserve este aviso junto con sus entradas. El",
             "museo abre a las nueve de la mañana y cierra a las seis."]),
    ("por", ["Por favor, guarde este aviso junto com os seus bilhetes. O",
             "museu abre às nove da manhã e fecha às dezoito horas."]),
)


def scanned(page: Any, dpi: int, seed: int) -> bytes:
    """A PyMuPDF `page` as a grey PNG scan at `dpi`: slightly blurred, `seed`'s noise."""
    import pymupdf
    from PIL import ImageFilter

    pixels = page.get_pixmap(dpi=dpi, colorspace=pymupdf.csGRAY)
    drawn = Image.frombytes("L", (pixels.width, pixels.height), pixels.samples)
    image = np.asarray(drawn.filter(ImageFilter.GaussianBlur(0.8)))
    noisy = image.astype(np.int16) + np.random.default_rng(seed).normal(0, 8, image.shape)
    out = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "L").save(out, "PNG")
    return out.getvalue()


def european_page(dpi: int = 300, seed: int = 7, paragraphs: tuple[
        tuple[str, list[str]], ...] = EUROPEAN_PARAGRAPHS, font: str = "helv") -> bytes:
    """A page of `paragraphs` as a simulated scan: a PNG at `dpi`, grey, blurred, noisy.

    Drawn with PyMuPDF's `font` (Helvetica; `tiro`: Times; Latin-1: every letter
    above), rendered, blurred and given noise as the corpus' simulated scans are (blur
    0.8, noise sigma 8; fixed `seed`, so the same bytes each time). Its text, one line
    per drawn line and a blank line between paragraphs: `european_text(paragraphs)`.
    """
    import pymupdf

    doc = pymupdf.open()
    page = doc.new_page(width=595, height=842)
    y = 90.0
    for _, lines in paragraphs:
        for line in lines:
            page.insert_text((60, y), line, fontsize=13, fontname=font)
            y += 19
        y += 19
    scan = scanned(page, dpi, seed)
    doc.close()
    return scan


def european_text(paragraphs: tuple[tuple[str, list[str]], ...] = EUROPEAN_PARAGRAPHS
                  ) -> str:
    """What `european_page(paragraphs=paragraphs)` draws."""
    return "\n\n".join("\n".join(lines) for _, lines in paragraphs)


def notice_page() -> bytes:
    """The six-language notice as a simulated scan (`european_page`, Times)."""
    return european_page(seed=11, paragraphs=NOTICE_PARAGRAPHS, font="tiro")


# A magazine page's title, deck and four columns (a paragraph list each), in reading
# order: what `magazine_page` draws.
MAGAZINE_TITLE = "Harbour Towns of the Northern Coast"
MAGAZINE_DECK = "Four villages, one coastline, and the seasons that rule them"
MAGAZINE_COLUMNS = (
    ("The first boats leave the harbour before dawn, when the water is still dark and "
     "the gulls sleep on the sea wall. Fishermen load their nets by lantern light and "
     "call to each other across the quay.",
     "By the time the sun rises the fleet is far out beyond the lighthouse, and the "
     "town is quiet again. Only the baker is awake, pulling loaves from an oven that "
     "his grandfather built of river stones. His bread is sold out before nine."),
    ("Visitors come for the light, which painters have praised for two centuries. In "
     "the late afternoon it turns the slate roofs silver and the harbour green.",
     "A small museum on the hill keeps their canvases, and the keeper will tell anyone "
     "who asks which window each picture was painted from. Most of those windows "
     "still open onto the same view of masts and nets and weathered boats."),
    ("Winter storms shape the life of every village along this coast. The old houses "
     "turn their backs to the sea, with thick walls and small windows facing the "
     "hills.",
     "When a gale is forecast the harbour master raises a red flag, and the boats stay "
     "tied up for days. Families gather in the kitchen and mend nets by the stove "
     "while the wind rattles the shutters."),
    ("Spring brings the market back to the square, with cheese from the farms inland "
     "and honey from the heather moors. Children race paper boats in the stream that "
     "runs beside the church.",
     "The ferry to the islands starts again in April, and the first passengers of the "
     "year are greeted by the mayor with a speech that nobody can hear over the "
     "engines. Summer is short here, and everyone knows it."),
)


def magazine_page(dpi: int = 300, seed: int = 5) -> bytes:
    """A four-column magazine page as a simulated scan: a PNG at `dpi`, grey, blurred, noisy.

    A title and a deck across the columns, then four justified columns of Times with
    gutters of 12 pt (a magazine's: narrower than a line is tall). Columns one and two
    start under the deck; a photograph (shaded, with grain) tops columns three and
    four, whose text starts below it. Each column ends where its text does (ragged
    ends). Rendered, blurred and given noise as `european_page` is.
    """
    import pymupdf

    doc = pymupdf.open()
    page = doc.new_page(width=595, height=842)
    page.insert_text((40, 80), MAGAZINE_TITLE, fontsize=26, fontname="tibo")
    page.insert_text((40, 104), MAGAZINE_DECK, fontsize=11, fontname="tiit")
    gutter = 12.0
    width = (515 - 3 * gutter) / 4
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:300, 0:520]
    shade = 120 + 60 * np.sin(cols / 40.0) * np.cos(rows / 55.0) + rng.normal(0, 20, rows.shape)
    photo = io.BytesIO()
    Image.fromarray(np.clip(shade, 0, 255).astype(np.uint8), "L").save(photo, "PNG")
    left = 40 + 2 * (width + gutter)
    picture = pymupdf.Rect(left, 125, 555, 125 + (555 - left) * 300 / 520)
    page.insert_image(picture, stream=photo.getvalue())
    for index, paragraphs in enumerate(MAGAZINE_COLUMNS):
        x0 = 40 + index * (width + gutter)
        top = 125 if index < 2 else picture.y1 + 14
        text = "\n".join(paragraphs)
        room = page.insert_textbox(pymupdf.Rect(x0, top, x0 + width, 800), text,
                                   fontsize=9.5, fontname="tiro", align=3)
        assert room >= 0, "the column's text does not fit"
    scan = scanned(page, dpi, seed)
    doc.close()
    return scan
