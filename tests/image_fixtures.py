"""Images made for the limit tests, generated in memory (nothing big in the repo)."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


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
