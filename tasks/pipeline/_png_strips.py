"""A large PNG decoded strip by strip, never whole: memory of one strip, not the image.

Runs in worker children (`images.decode_page`, for PNGs over OCR_MAX_RENDER_PIXELS).
Pillow decodes a PNG in one piece, so the IDAT stream is inflated here row by row and
each strip of filtered rows is handed to Pillow as a small PNG of its own. PNG filters
refer to the row above, so a strip starts with the previous strip's last row,
already unfiltered (decoded by Pillow, stored with filter None), and that row is
dropped again. Only 8-bit, non-interlaced greyscale, RGB, grey+alpha and RGBA PNGs
qualify (their Pillow bytes are their raw rows); `layout` returns None for others.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from PIL import Image

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type -> samples per pixel
_INFLATE_STEP = 1 << 20


@dataclass(frozen=True)
class PngLayout:
    width: int
    height: int
    colour_type: int
    idat: tuple[tuple[int, int], ...]   # (offset, length) of each IDAT chunk's data

    @property
    def row_bytes(self) -> int:
        return 1 + self.width * _CHANNELS[self.colour_type]


def layout(data: bytes) -> PngLayout | None:
    """The rows' layout when the PNG can be decoded in strips, else None."""
    if not data.startswith(_SIGNATURE):
        return None
    pos, header, idat = len(_SIGNATURE), None, []
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = pos + 8
        if kind == b"IHDR" and length >= 13:
            header = struct.unpack(">IIBBBBB", data[body:body + 13])
        elif kind == b"IDAT":
            idat.append((body, length))
        elif kind == b"IEND":
            break
        pos = body + length + 4
    if header is None or not idat:
        return None
    width, height, depth, colour, _, _, interlace = header
    if depth != 8 or colour not in _CHANNELS or interlace != 0:
        return None
    return PngLayout(width, height, colour, tuple(idat))


def _rows(data: bytes, png: PngLayout) -> Iterator[bytes]:
    """The filtered rows (filter byte first), inflated a bounded piece at a time."""
    inflate = zlib.decompressobj()
    pending = b""
    size = png.row_bytes
    for offset, length in png.idat:
        chunk = data[offset:offset + length]
        while chunk:
            pending += inflate.decompress(chunk, _INFLATE_STEP)
            chunk = inflate.unconsumed_tail
            whole = len(pending) // size * size
            for start in range(0, whole, size):
                yield pending[start:start + size]
            pending = pending[whole:]


def strips(data: bytes, png: PngLayout, rows: int) -> Iterator[Image.Image]:
    """The image as strips of `rows` rows each (the last one shorter), top to bottom."""
    mode = {0: "L", 2: "RGB", 4: "LA", 6: "RGBA"}[png.colour_type]
    before: bytes | None = None   # the previous strip's last row, unfiltered
    batch: list[bytes] = []
    made = 0
    for row in _rows(data, png):
        batch.append(row)
        if len(batch) == rows or made + len(batch) == png.height:
            strip = _decode(png, batch, before, mode)
            made += len(batch)
            batch = []
            before = strip.crop((0, strip.height - 1, png.width, strip.height)).tobytes()
            yield strip
            if made == png.height:
                return
    raise OSError(f"the PNG ends after {made + len(batch)} of its {png.height} rows")


def _decode(png: PngLayout, batch: list[bytes], before: bytes | None,
            mode: str) -> Image.Image:
    raw = b"".join(([b"\0" + before] if before is not None else []) + batch)
    height = len(batch) + (before is not None)
    ihdr = struct.pack(">IIBBBBB", png.width, height, 8, png.colour_type, 0, 0, 0)
    small = (_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw, 1))
             + _chunk(b"IEND", b""))
    with Image.open(io.BytesIO(small)) as image:
        image.load()
        if image.mode != mode:
            raise OSError(f"strip decoded as {image.mode}, expected {mode}")
        if before is None:
            return image.copy()
        return image.crop((0, 1, png.width, height))


def _chunk(kind: bytes, body: bytes) -> bytes:
    return (struct.pack(">I", len(body)) + kind + body
            + struct.pack(">I", zlib.crc32(kind + body)))
