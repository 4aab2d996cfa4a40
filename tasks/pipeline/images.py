"""Image inputs: format sniffing, safe decoding and normalisation to page images.

Runs in worker children. Formats are recognised by their bytes, never by file name.
Pillow is the only imaging library used.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tasks.errors import CorruptInput, EmptyInput, ImageTooLarge, UnsupportedFormat
from tasks.pipeline.pages import select_pages

if TYPE_CHECKING:
    from worker_config import Settings

_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"BM", "bmp"),
)
IMAGE_FORMATS = ("png", "jpeg", "gif", "tiff", "webp", "bmp")
# Formats whose frames are pages of a document; in others only the first frame counts.
_PAGED_FORMATS = ("tiff",)


def sniff_format(data: bytes) -> str:
    """`pdf` or an image format name, from the leading bytes."""
    if not data:
        raise EmptyInput()
    if b"%PDF-" in data[:1024]:
        return "pdf"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    raise UnsupportedFormat("the input is not a PDF, PNG, JPEG, TIFF, WebP, BMP or GIF file")


def configure_pillow(settings: Settings) -> None:
    """Pillow's own bomb check, aligned with ours (called once per worker child)."""
    Image.MAX_IMAGE_PIXELS = settings.max_image_pixels


def open_image(data: bytes, settings: Settings) -> Image.Image:
    """Open without decoding pixels; refuse images over the pixel limit."""
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise ImageTooLarge(f"the image has more than {settings.max_image_pixels} "
                            "pixels") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise CorruptInput(f"the image could not be decoded ({type(exc).__name__})") from None
    width, height = image.size
    if width * height > settings.max_image_pixels:
        raise ImageTooLarge(f"the image is {width}x{height} pixels, more than the limit of "
                            f"{settings.max_image_pixels}")
    if width == 0 or height == 0:
        raise CorruptInput("the image has no pixels")
    return image


def image_page_count(image: Image.Image, fmt: str) -> int:
    return getattr(image, "n_frames", 1) if fmt in _PAGED_FORMATS else 1


def iter_image_pages(data: bytes, fmt: str, pages: str | None,
                     settings: Settings) -> Iterator[tuple[int, int, int, Image.Image]]:
    """Yield (page number, page count, pages selected, normalised image)."""
    image = open_image(data, settings)
    count = image_page_count(image, fmt)
    numbers = select_pages(pages, count, settings.max_pages)
    for number in numbers:
        try:
            image.seek(number - 1)
            page = normalize(image)
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise CorruptInput(f"page {number} could not be decoded "
                               f"({type(exc).__name__})") from None
        yield number, count, len(numbers), page


def normalize(image: Image.Image) -> Image.Image:
    """A decoded copy in mode L or RGB: EXIF rotation applied, alpha on white, 16-bit scaled."""
    image.load()
    frame = ImageOps.exif_transpose(image) or image
    mode = frame.mode
    if mode in ("L", "RGB"):
        return frame.copy() if frame is image else frame
    if mode == "1":
        return frame.convert("L")
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        values = np.asarray(frame, dtype=np.float64)
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
