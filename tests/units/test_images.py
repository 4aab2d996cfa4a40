"""Formats and images: sniffing the corpus, image limits, normalised modes."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from tasks.errors import CorruptInput, EmptyInput, ImageTooLarge, UnsupportedFormat
from tasks.pipeline.images import configure_pillow, normalize, open_image, too_large
from tasks.records.formats import sniff_format
from tasks.settings import Settings
from tests.harness import corpus


def settings(**env: str) -> Settings:
    return Settings.from_env(env)


@pytest.mark.parametrize("name,fmt", [
    ("scan_tess_phototest.tif", "tiff"), ("scan_linn.png", "png"),
    ("scan_meditations.jpg", "jpeg"), ("edge_decompression_bomb.gif", "gif"),
    ("dig_crazyones.pdf", "pdf"), ("bad_invalid_header_eof.pdf", "pdf"),
])
def test_sniff_corpus(name: str, fmt: str) -> None:
    assert sniff_format(corpus(name).read_bytes()) == fmt


def test_sniff_refuses_text_and_empty() -> None:
    with pytest.raises(UnsupportedFormat):
        sniff_format(b"just some text, named scan.png by mistake")
    with pytest.raises(EmptyInput):
        sniff_format(b"")


def test_image_too_large_says_what_to_scale_to_and_the_setting() -> None:
    """The limit's refusal names the size to scale to and OCR_MAX_IMAGE_PIXELS."""
    s = settings(OCR_MAX_IMAGE_PIXELS="10000")
    page = io.BytesIO()
    Image.new("L", (400, 100)).save(page, "PNG")
    with pytest.raises(ImageTooLarge) as raised:
        open_image(page.getvalue(), s)
    assert raised.value.message == (
        "page 1 is 400x100 pixels, more than the limit of 10000 pixels: scale it to "
        "200x50 pixels or less (50 % of its width and height), or raise "
        "OCR_MAX_IMAGE_PIXELS on the workers")
    configure_pillow(s)  # Pillow refuses past twice the limit, before the size is read
    try:
        with pytest.raises(ImageTooLarge) as raised:
            open_image(page.getvalue(), s)
    finally:
        configure_pillow(settings())
    assert raised.value.message == (
        "the image has more than the limit of 10000 pixels: scale it to at most 10000 "
        "pixels (an A4 page at 10 dpi), or raise OCR_MAX_IMAGE_PIXELS on the workers")
    assert "an A4 page at 1360 dpi" in too_large("x", settings()).message


def test_open_image_limits() -> None:
    s = settings()
    with pytest.raises(ImageTooLarge):
        open_image(corpus("edge_decompression_bomb.gif").read_bytes(), s)
    with pytest.raises(CorruptInput):
        open_image(corpus("bad_broken.png").read_bytes(), s)
    small = settings(OCR_MAX_IMAGE_PIXELS="1000")
    with pytest.raises(ImageTooLarge, match="640x480"):
        open_image(corpus("scan_tess_phototest.tif").read_bytes(), small)


@pytest.mark.parametrize("name", ["edge_16bit_gray.png", "edge_cmyk_baiona.jpg",
                                  "scan_linn.png", "edge_multiframe_g4.tiff"])
def test_normalize_gives_l_or_rgb(name: str) -> None:
    image = Image.open(corpus(name))
    page = normalize(image)
    assert page.mode in ("L", "RGB")
    assert page.size == image.size


def test_normalize_puts_alpha_on_white() -> None:
    transparent = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert normalize(transparent).getpixel((0, 0)) == (255, 255, 255)
