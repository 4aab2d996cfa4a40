"""Image inputs: safe decoding and normalisation to page images.

Runs in worker children. An input's format is recognised by its bytes, never by file
name (`sniff_format`, tasks/records/formats.py).
Pillow is the only imaging library used.
"""

from __future__ import annotations

import io
import math
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tasks.errors import CorruptInput, ImageTooLarge
from tasks.pipeline import _png_strips as png_strips
from tasks.records.request import select_pages

if TYPE_CHECKING:
    from tasks.settings import Settings

# Formats whose frames are pages of a document; in others only the first frame counts.
_PAGED_FORMATS = ("tiff",)


def configure_pillow(settings: Settings) -> None:
    """Pillow's own bomb check, aligned with ours (called once per worker child)."""
    Image.MAX_IMAGE_PIXELS = settings.max_image_pixels


def open_image(data: bytes, settings: Settings) -> Image.Image:
    """Open without decoding pixels; refuse images over the pixel limit."""
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise too_large("the image has", settings) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise CorruptInput(f"the image could not be decoded ({type(exc).__name__})") from None
    check_size(image, 1, settings)
    return image


def too_large(what: str, settings: Settings,
              size: tuple[int, int] | None = None) -> ImageTooLarge:
    """`image_too_large` that says what to do: the size to scale to, or the setting."""
    most = settings.max_image_pixels
    if size is None:  # Pillow refused it before its size was read
        # An A4 page holds 8.27 x 11.69 square inches: its dpi at `most` pixels.
        fit = f"at most {most} pixels (an A4 page at {math.isqrt(most * 100 // 9668)} dpi)"
    else:
        scale = math.sqrt(most / (size[0] * size[1]))
        fit = (f"{math.floor(size[0] * scale)}x{math.floor(size[1] * scale)} pixels or "
               f"less ({math.floor(scale * 1000) / 10:g} % of its width and height)")
    return ImageTooLarge(f"{what} more than the limit of {most} pixels: scale it to {fit}, "
                         "or raise OCR_MAX_IMAGE_PIXELS on the workers")


def check_size(image: Image.Image, number: int, settings: Settings) -> None:
    """Refuse a frame over the pixel limit or without pixels, before it is decoded."""
    width, height = image.size
    if width * height > settings.max_image_pixels:
        raise too_large(f"page {number} is {width}x{height} pixels,", settings,
                        (width, height))
    if width == 0 or height == 0:
        raise CorruptInput(f"page {number} has no pixels")


def decoded_bytes(image: Image.Image) -> int:
    """What decoding the current frame takes in memory (Pillow's storage per pixel)."""
    mode = image.mode
    per_pixel = 1 if mode in ("1", "L", "P") else 2 if mode.startswith("I;16") else 4
    return image.width * image.height * per_pixel


def image_page_count(image: Image.Image, fmt: str) -> int:
    return getattr(image, "n_frames", 1) if fmt in _PAGED_FORMATS else 1


def image_pages(data: bytes, fmt: str, pages: str | None, settings: Settings) -> int:
    """How many pages an image input's job reads: its selected frames (a TIFF's), else 1."""
    if fmt not in _PAGED_FORMATS:
        return 1
    image = open_image(data, settings)
    try:
        return len(select_pages(pages, image_page_count(image, fmt), settings.max_pages))
    finally:
        image.close()


def iter_image_pages(data: bytes, fmt: str, pages: str | None, settings: Settings
                     ) -> Generator[tuple[int, int, int, Image.Image], None, None]:
    """Yield (page number, page count, pages selected, normalised image).

    Every selected frame is checked against the pixel limit before any is decoded. A
    frame whose decoded copy is large is released (the file reopened for the next
    page) before its page image is handed on, so OCR never runs beside it.
    """
    image: Image.Image | None = open_image(data, settings)
    assert image is not None
    count = image_page_count(image, fmt)
    numbers = select_pages(pages, count, settings.max_pages)
    try:
        for number in numbers:
            _seek(image, number)
            check_size(image, number, settings)
        for number in numbers:
            if image is None:
                image = open_image(data, settings)
            _seek(image, number)
            page = decode_page(image, number, settings, data)
            if decoded_bytes(image) > _KEEP_DECODED_BYTES:
                image.close()
                image = None
            yield number, count, len(numbers), page
    finally:
        if image is not None:
            image.close()


_KEEP_DECODED_BYTES = 64 * 2**20
_STRIP_ROWS = 128  # rows of reduced output made from one strip of the decoded frame


def _seek(image: Image.Image, number: int) -> None:
    try:
        image.seek(number - 1)
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise CorruptInput(f"page {number} could not be read ({type(exc).__name__})") \
            from None


def reduce_factor(size: tuple[int, int], max_pixels: int) -> int:
    """The smallest integer factor that brings `size` within `max_pixels`."""
    width, height = size
    factor = max(1, math.ceil(math.sqrt(width * height / max_pixels)))
    while math.ceil(width / factor) * math.ceil(height / factor) > max_pixels:
        factor += 1
    return factor


def decode_page(image: Image.Image, number: int, settings: Settings,
                data: bytes | None = None) -> Image.Image:
    """The current frame decoded, normalised and at most OCR_MAX_RENDER_PIXELS large.

    A larger frame is never decoded and converted whole where that can be avoided:
    JPEGs are decoded already reduced by libjpeg's DCT scaling (`draft`); 8-bit PNGs
    (`data` given) are inflated and decoded strip by strip (`png_strips`); other
    formats are decoded once in their own mode (refused first when that would take
    more than OCR_MAX_DECODED_MB). Each strip is normalised and reduced on its own.
    """
    factor = reduce_factor(image.size, settings.max_render_pixels)
    try:
        if factor > 1 and image.format == "JPEG":
            image.draft(None, (image.width // factor, image.height // factor))
            factor = reduce_factor(image.size, settings.max_render_pixels)
        png = png_strips.layout(data) if factor > 1 and data is not None \
            and image.format == "PNG" else None
        if png is not None:
            pieces = png_strips.strips(data or b"", png, factor * _STRIP_ROWS)
            return _assemble(pieces, image, factor, top=None)
        need = decoded_bytes(image)
        if need > settings.max_decoded_bytes:
            raise ImageTooLarge(f"page {number} would take {need // 2**20} MB decoded, "
                                f"more than {settings.max_decoded_mb} MB: save it as PNG "
                                "or JPEG, or raise OCR_MAX_DECODED_MB on the workers")
        image.load()
        if factor == 1:
            return normalize(image)
        return _reduced(image, factor)
    except Image.DecompressionBombError:
        raise too_large(f"page {number} has", settings) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise CorruptInput(f"page {number} could not be decoded "
                           f"({type(exc).__name__})") from None


def _reduced(image: Image.Image, factor: int) -> Image.Image:
    """`normalize(image)` reduced `factor` times, made strip by strip."""
    width, height = image.size
    rows = factor * _STRIP_ROWS
    pieces = (image.crop((0, y, width, min(height, y + rows)))
              for y in range(0, height, rows))
    return _assemble(pieces, image, factor, _value_top(image))


def _assemble(pieces: Iterator[Image.Image], image: Image.Image, factor: int,
              top: float | None) -> Image.Image:
    """Strips of `image` (top to bottom), each normalised and reduced, as one page."""
    width, height = image.size
    out: Image.Image | None = None
    y = 0
    for piece in pieces:
        strip = normalize(piece, transpose=False, top=top).reduce(factor)
        if out is None:
            out = Image.new(strip.mode, (math.ceil(width / factor),
                                         math.ceil(height / factor)))
        out.paste(strip, (0, y // factor))
        y += piece.height
    assert out is not None
    method = _EXIF_TRANSPOSE.get(_orientation(image))
    return out.transpose(method) if method is not None else out


_ORIENTATION = 0x0112


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation, read without decoding the pixels.

    Pillow's `getexif()` decodes a whole PNG to look for an eXIf chunk after the
    image data; only one before it (in `info`) is read here.
    """
    if image.format != "PNG":
        return int(image.getexif().get(_ORIENTATION, 1))
    exif = Image.Exif()
    raw = image.info.get("exif")
    if isinstance(raw, bytes):
        exif.load(raw)
    return int(exif.get(_ORIENTATION, 1))


_EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_VALUE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def _value_top(image: Image.Image) -> float | None:
    """The largest value of a 16/32-bit frame (scaled to 0..255 as one), else None."""
    if image.mode not in _VALUE_MODES:
        return None
    extrema = image.getextrema()
    return float(extrema[1]) if isinstance(extrema[1], (int, float)) else None


def normalize(image: Image.Image, transpose: bool = True,
              top: float | None = None) -> Image.Image:
    """A decoded copy in mode L or RGB: EXIF rotation applied, alpha on white, 16-bit scaled.

    `top`: the value that maps to 255 in 16/32-bit modes (default: this image's maximum).
    """
    image.load()
    frame = (ImageOps.exif_transpose(image) or image) if transpose else image
    mode = frame.mode
    if mode in ("L", "RGB"):
        return frame.copy() if frame is image else frame
    if mode == "1":
        return frame.convert("L")
    if mode in _VALUE_MODES:
        values = np.asarray(frame, dtype=np.float64)
        if top is None:
            top = float(values.max()) if values.size else 0.0
        scale = 255.0 / top if top > 255 else 1.0
        return Image.fromarray(np.clip(values * scale, 0, 255).astype(np.uint8), "L")
    if mode == "P":
        frame = frame.convert("RGBA" if "transparency" in frame.info else "RGB")
    if frame.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = frame.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return frame.convert("RGB")
