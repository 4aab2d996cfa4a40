"""Page clean-up before tesseract, in-process on the real engine and a corpus scan.

Skew from projected ink, the deskew resampling only the inked part of the page, the
orientation pass only when the reading was not upright, raw grey pixels to libtesseract.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tasks.engines import RecognizeOptions
from tasks.engines.tesseract import TesseractEngine
from tasks.pipeline._preprocess import Correction, _output_box, _rotation, estimate_skew
from tasks.pipeline.documents import ocr_page
from tasks.settings import Settings
from tests.cer import cer
from tests.harness import corpus, ground_truth

SETTINGS = Settings.from_env({"OCR_TESSERACT_THREADS": "1"})


def ocr_page_json(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """`ocr_page` as the JSON other services read."""
    return ocr_page(*args, **kwargs).to_json()


@pytest.fixture(scope="module")
def engine() -> Iterator[TesseractEngine]:
    loaded = TesseractEngine.load(SETTINGS)
    yield loaded
    loaded.close()


@pytest.fixture(scope="module")
def scan() -> Image.Image:
    return Image.open(corpus("scan_tess_phototest.tif")).convert("L")


class CountingEngine:
    """The real engine; counts its orientation passes and readings."""

    def __init__(self, engine: TesseractEngine) -> None:
        self._engine = engine
        self.orientation_passes = 0
        self.readings = 0

    def detect_orientation(self, image: Image.Image) -> int:
        self.orientation_passes += 1
        return self._engine.detect_orientation(image)

    def recognize(self, image: Image.Image, options: RecognizeOptions) -> Any:
        self.readings += 1
        return self._engine.recognize(image, options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


@pytest.mark.parametrize("angle", [0.0, 2.5, -3.3, 6.1])
def test_skew_estimate_undoes_a_known_turn(scan: Image.Image, angle: float) -> None:
    turned = scan.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True,
                         fillcolor=255) if angle else scan
    assert estimate_skew(turned).angle == pytest.approx(-angle, abs=0.21)


def test_skew_estimate_of_a_page_without_ink_is_zero() -> None:
    assert estimate_skew(Image.new("L", (2000, 2800), 250)).angle == 0.0
    assert estimate_skew(Image.new("RGB", (300, 200), (255, 255, 255))).angle == 0.0


def _whole_page_turn(image: Image.Image, angle: float) -> Image.Image:
    return image.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=255)


def test_deskew_resamples_the_ink_exactly_as_a_whole_page_turn(
        engine: TesseractEngine) -> None:
    """A real skewed scan with wide margins, deskewed where its ink is.

    The ink's pixels are the whole-page rotation's to the bit, the margins are the
    page's own, and the reading is the same.
    """
    page = Image.open(corpus("scan_meditations.jpg")).convert("L")
    skew = estimate_skew(page)
    assert skew.angle == pytest.approx(-0.4, abs=0.11) and skew.ink is not None
    x0, y0, x1, y1 = skew.ink
    assert (x1 - x0) * (y1 - y0) < 0.8  # the margins are left out of the resampling
    deskewed = Correction(skew=skew.angle, ink=skew.ink).apply(page)
    whole = _whole_page_turn(page, skew.angle)
    assert deskewed.size == whole.size
    matrix, size = _rotation(page.size, skew.angle)
    bx0, by0, bx1, by1 = _output_box(matrix, skew.ink, page.size, size)
    ours, theirs = np.asarray(deskewed), np.asarray(whole)
    assert np.array_equal(ours[by0:by1, bx0:bx1], theirs[by0:by1, bx0:bx1])
    assert not np.array_equal(ours, theirs)  # outside the box: the unturned margins
    options = RecognizeOptions()
    assert engine.recognize(deskewed, options).text == engine.recognize(whole, options).text


def test_deskew_of_a_page_inked_to_its_edges_is_the_whole_page_turn(
        scan: Image.Image) -> None:
    inked = scan.copy()
    inked.paste(0, (0, 0, inked.width, 3))
    inked.paste(0, (0, inked.height - 3, inked.width, inked.height))
    turned = _whole_page_turn(inked, 2.5)
    skew = estimate_skew(turned)
    assert skew.ink == (0.0, 0.0, 1.0, 1.0)
    assert Correction(skew=skew.angle, ink=skew.ink).apply(turned).tobytes() == \
        _whole_page_turn(turned, skew.angle).tobytes()


def test_quarter_turns_are_exact_pixel_moves(scan: Image.Image) -> None:
    for rotation in (90, 180, 270):
        moved = Correction(rotation=rotation).apply(scan)
        assert moved.tobytes() == scan.rotate(rotation, expand=True).tobytes()


def test_upright_reading_needs_no_orientation_pass(engine: TesseractEngine,
                                                   scan: Image.Image) -> None:
    counting = CountingEngine(engine)
    page = ocr_page_json(1, scan.convert("RGB"), counting,  # type: ignore[arg-type]
                    RecognizeOptions(), SETTINGS)
    assert (counting.orientation_passes, counting.readings) == (0, 1)
    assert page["rotation"] == 0
    assert cer(ground_truth("scan_tess_phototest.tif"), page["text"]) <= 0.02


@pytest.mark.parametrize("turn,rotation", [(90, 270), (180, 180), (270, 90)])
def test_turned_pages_are_found_and_read_again(engine: TesseractEngine, scan: Image.Image,
                                               turn: int, rotation: int) -> None:
    turned = scan.rotate(turn, expand=True)
    first = engine.recognize(turned, RecognizeOptions())
    # A quarter turn clockwise reads well, but in vertical lines: not upright either.
    assert first.upright is False
    counting = CountingEngine(engine)
    page = ocr_page_json(1, turned, counting, RecognizeOptions(), SETTINGS)  # type: ignore[arg-type]
    assert (counting.orientation_passes, counting.readings) == (1, 2)
    assert page["rotation"] == rotation
    assert cer(ground_truth("scan_tess_phototest.tif"), page["text"]) <= 0.02


def test_orientation_off_reads_once_as_given(engine: TesseractEngine,
                                             scan: Image.Image) -> None:
    settings = Settings.from_env({"OCR_AUTO_ROTATE": "0", "OCR_DESKEW": "0"})
    counting = CountingEngine(engine)
    page = ocr_page_json(1, scan.rotate(180), counting, RecognizeOptions(),  # type: ignore[arg-type]
                    settings)
    assert (counting.orientation_passes, counting.readings) == (0, 1)
    assert page["rotation"] == 0 and page["skew"] == 0.0


def test_grey_and_rgb_pages_read_alike(engine: TesseractEngine, scan: Image.Image) -> None:
    grey = engine.recognize(scan, RecognizeOptions(want_words=True))
    rgb = engine.recognize(scan.convert("RGB"), RecognizeOptions(want_words=True))
    assert grey.text == rgb.text and grey.words == rgb.words
    assert grey.upright is True
