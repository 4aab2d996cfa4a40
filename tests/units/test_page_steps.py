"""A page's reading, one step at a time (tasks/pipeline/page_reading.py's `STEPS`).

Each test runs one step, or the few a decision needs, over a `PageContext` in this
process: on pages drawn here, with the real tesseract engine where the step asks an
engine (its languages pinned to `tests.tessdata_sets.UNIT_LANGS`, whatever else this
host has), and with fake engines where the step is the pipeline's own logic.
"""

from __future__ import annotations

from collections.abc import Iterator

import pymupdf
import pytest
from PIL import Image

from devkit.fake_engines import FakeEngine
from tasks.engines.base import PageResult, RecognizeOptions
from tasks.engines.tesseract import TesseractEngine
from tasks.errors import EngineUnavailable, VlmIncomplete
from tasks.pipeline._preprocess import estimate_skew
from tasks.pipeline.page_reading import (
    PageContext,
    convert,
    deskew,
    fall_back,
    find_structure,
    make_record,
    orient,
    pick_language,
    preview,
    read_page,
    recognise,
    reorient,
    skip_blank,
)
from tasks.pipeline.previews import PREVIEW_BUDGET
from tasks.pipeline.structure import Analysed
from tasks.records.results import Fallback, VlmRead
from tasks.settings import Settings
from tests.cer import cer
from tests.tessdata_sets import UNIT_LANGS, pinned

SETTINGS = Settings.from_env({})
ENGLISH = ["The library will be closed on Monday for the annual inventory.",
           "Books borrowed before the closure may be returned on Tuesday.",
           "The reading room opens again at nine in the morning, as usual.",
           "Please ask at the desk for the list of journals on loan."]
GREEK = ["Η βιβλιοθήκη θα είναι κλειστή τη Δευτέρα για την απογραφή.",
         "Τα βιβλία που δανειστήκατε επιστρέφονται την Τρίτη το πρωί.",
         "Η αίθουσα ανάγνωσης ανοίγει ξανά στις εννέα, όπως πάντα."]
VIETNAMESE = ["Thư viện sẽ đóng cửa vào thứ Hai để kiểm kê hàng năm.",
              "Tiếng Việt là ngôn ngữ chính thức của nước Việt Nam.",
              "Chúng tôi viết trang này để kiểm tra việc nhận dạng chữ."]


@pytest.fixture(scope="module")
def tesseract(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TesseractEngine]:
    with pinned(UNIT_LANGS, tmp_path_factory.mktemp("tessdata")):
        engine = TesseractEngine.load(SETTINGS)
        yield engine
        engine.close()


def drawn(lines: list[str], dpi: int = 200) -> Image.Image:
    """A grey page of `lines` in Noto Sans (pymupdf-fonts, of requirements.txt)."""
    doc = pymupdf.open()
    page = doc.new_page(width=595, height=420)
    for index, line in enumerate(lines):
        page.insert_text((50, 80 + 24 * index), line, fontsize=14, fontname="notos")
    pixels = page.get_pixmap(dpi=dpi, colorspace=pymupdf.csGRAY)
    doc.close()
    return Image.frombytes("L", (pixels.width, pixels.height), pixels.samples)


class Counting(FakeEngine):
    """The fake engine, keeping the size of each image it reads."""

    def __init__(self, name: str = "fake") -> None:
        super().__init__(0.0)
        self.name = name  # type: ignore[misc]
        self.seen: list[tuple[int, int]] = []

    def recognize(self, image: Image.Image, options: RecognizeOptions) -> PageResult:
        self.seen.append(image.size)
        return super().recognize(image, options)


class Model(Counting):
    """A vision-language model whose reads end with `finish` (`stop`: complete)."""

    orientation_engine = "tesseract"

    def __init__(self, finish: str = "stop") -> None:
        super().__init__("fake-model")
        self.finish = finish

    def recognize(self, image: Image.Image, options: RecognizeOptions) -> PageResult:
        self.seen.append(image.size)
        vlm = VlmRead("generic", image.size, 10, 5, self.finish, 2)
        return PageResult(text="# model text" if vlm.complete else "", vlm=vlm)


def test_a_blank_page_ends_the_reading_without_an_engine() -> None:
    engine = Counting()
    page = PageContext(4, Image.new("L", (300, 400), 255), engine, RecognizeOptions(),
                       SETTINGS)
    skip_blank(page)
    assert page.ended and page.page.source == "blank" and page.page.seconds is not None
    assert read_page(4, Image.new("L", (300, 400), 255), engine, RecognizeOptions(),
                     SETTINGS).source == "blank"
    assert engine.seen == []
    written = PageContext(4, drawn(ENGLISH), engine, RecognizeOptions(), SETTINGS)
    skip_blank(written)
    assert not written.ended and written.record is None


@pytest.mark.parametrize("lines,script,lang", [(GREEK, "Greek", "ell"),
                                               (VIETNAMESE, "Latin", "vie")])
def test_an_auto_page_is_read_in_the_language_of_its_lines(
        tesseract: TesseractEngine, lines: list[str], script: str, lang: str) -> None:
    page = PageContext(1, drawn(lines), tesseract, RecognizeOptions(lang="auto"), SETTINGS)
    pick_language(page)
    assert page.script is not None and page.script.name == script, page.script
    assert page.options.lang is not None and lang in page.options.lang.split("+")
    assert page.engine is tesseract and page.checked == 0  # its probe proved it upright
    named = PageContext(1, drawn(lines), tesseract, RecognizeOptions(lang="eng"), SETTINGS)
    pick_language(named)
    assert named.options.lang == "eng" and named.script is None


def test_orient_turns_a_page_upright_before_an_engine_that_cannot_read_it(
        tesseract: TesseractEngine) -> None:
    """A model (no `reads_orientation`) gets its page upright: its checker turned it."""
    model = Model()
    model.bind_peers({"tesseract": tesseract}.__getitem__)
    upright = drawn(ENGLISH * 2)
    page = PageContext(1, upright.rotate(90, expand=True), model, RecognizeOptions(),
                       Settings.from_env({"OCR_DESKEW": "0"}))
    convert(page)
    orient(page)
    assert page.rotation == 270 and model.seen == []
    deskew(page)
    assert page.final.tobytes() == upright.tobytes()
    kept = PageContext(1, upright.rotate(90, expand=True), model, RecognizeOptions(),
                       Settings.from_env({"OCR_AUTO_ROTATE": "0"}))
    orient(kept)
    assert kept.rotation == 0


def test_reorient_reads_again_a_page_the_engine_did_not_read_upright(
        tesseract: TesseractEngine) -> None:
    """Tesseract `reads_orientation`: it reads first, and the page is turned after."""
    text = "\n".join(ENGLISH)
    page = PageContext(1, drawn(ENGLISH).rotate(180), tesseract, RecognizeOptions(),
                       SETTINGS)
    for step in (convert, orient, deskew, recognise):
        step(page)
    assert page.rotation == 0 and not page.read.upright
    reorient(page)
    assert page.rotation == 180 and cer(text, page.read.text) < 0.05, page.read.text
    upright = PageContext(1, drawn(ENGLISH), tesseract, RecognizeOptions(), SETTINGS)
    for step in (convert, orient, deskew, recognise, reorient):
        step(upright)
    assert upright.rotation == 0 and cer(text, upright.read.text) < 0.05


def test_deskew_levels_a_skewed_page() -> None:
    level = drawn(ENGLISH)
    skewed = level.rotate(3, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=255)
    page = PageContext(1, skewed, Counting(), RecognizeOptions(), SETTINGS)
    deskew(page)
    assert page.skew.angle == pytest.approx(-3, abs=0.3)
    assert estimate_skew(page.final).angle == pytest.approx(0, abs=0.3)
    untouched = PageContext(1, skewed, Counting(), RecognizeOptions(),
                            Settings.from_env({"OCR_DESKEW": "0"}))
    deskew(untouched)
    assert untouched.skew.angle == 0 and untouched.final is skewed


def _read_by(model: Model, settings: Settings, **peers: FakeEngine) -> PageContext:
    """A 40x60 page that `model` read, at full resolution 400x600."""
    model.bind_peers(peers.__getitem__)
    full = Image.new("L", (400, 600), 255)
    page = PageContext(2, Image.new("L", (40, 60), 255), model,
                       RecognizeOptions(output="markdown"), settings,
                       rerender=lambda: full)
    recognise(page)
    return page


def test_a_model_read_that_did_not_finish_falls_back_to_the_second_engine() -> None:
    second = Counting("tesseract")
    page = _read_by(Model("length"), SETTINGS, tesseract=second)
    assert page.read.text == ""
    fall_back(page)
    assert page.fallback == Fallback(engine="tesseract", reason="length")
    assert page.read.text.startswith("fake 400x600") and second.seen == [(400, 600)]
    assert page.reader is second and page.read_size == (400, 600)
    assert page.vlm is not None and page.vlm.finish_reason == "length"
    find_structure(page)  # the fallback's read: fake words none, no structure to find
    make_record(page)
    assert page.page.fallback == page.fallback and page.page.engine == "fake-model"
    assert page.page.image_size is None


def test_a_finished_model_read_is_kept_and_has_no_structure_to_find() -> None:
    second = Counting("tesseract")
    page = _read_by(Model("stop"), SETTINGS, tesseract=second)
    fall_back(page)
    find_structure(page)
    assert page.fallback is None and page.found is None and second.seen == []
    assert page.read.text == "# model text" and not page.ended


def test_without_a_fallback_the_page_fails_and_the_reading_ends() -> None:
    none = Settings.from_env({"OCR_VLM_FALLBACK": "none"})
    page = _read_by(Model("repetition"), none)
    fall_back(page)
    assert page.ended and page.page.error is not None
    assert page.page.error.code == VlmIncomplete.code and page.page.vlm == page.vlm


def test_an_unavailable_fallback_engine_fails_the_page_with_its_code() -> None:
    def unavailable(name: str) -> FakeEngine:
        raise EngineUnavailable(f"{name} is not installed")

    model = Model("length")
    page = _read_by(model, SETTINGS)
    model.bind_peers(unavailable)
    with pytest.raises(VlmIncomplete):
        fall_back(page)


def test_the_structure_of_an_ocr_page_is_found_for_markdown(
        tesseract: TesseractEngine) -> None:
    page = PageContext(1, drawn(ENGLISH), tesseract,
                       RecognizeOptions(output="markdown", want_words=True), SETTINGS)
    for step in (convert, deskew, recognise, find_structure):
        step(page)
    assert isinstance(page.found, Analysed)
    make_record(page)
    assert page.page.text == page.found.markdown and "Monday" in page.page.text
    plain = PageContext(1, drawn(ENGLISH), tesseract, RecognizeOptions(want_words=True),
                        SETTINGS)
    for step in (convert, deskew, recognise, find_structure):
        step(plain)
    assert plain.found is None


def noise(size: tuple[int, int]) -> Image.Image:
    import random

    return Image.frombytes("L", size, random.Random(5).randbytes(size[0] * size[1]))


def test_the_preview_is_the_page_as_read_within_its_budget() -> None:
    """Noise at 300 dpi, turned: its preview is of the upright page, under the budget."""
    page = PageContext(1, noise((2550, 3300)), Counting(), RecognizeOptions(), SETTINGS)
    page.rotation = 90
    for step in (deskew, recognise, make_record, preview):
        step(page)
    shown = page.page.preview
    assert shown is not None and len(shown.data) <= PREVIEW_BUDGET
    import io

    with Image.open(io.BytesIO(shown.data)) as image:
        assert image.width > image.height  # the page read: turned, 3300 x 2550
    off = PageContext(1, noise((200, 300)), Counting(), RecognizeOptions(),
                      Settings.from_env({"OCR_PAGE_PREVIEWS": "0"}))
    for step in (deskew, recognise, make_record, preview):
        step(off)
    assert off.page.preview is None


def test_a_render_for_the_fallback_is_closed_once_the_page_is_read() -> None:
    model = Model("length")
    model.bind_peers({"tesseract": Counting("tesseract")}.__getitem__)
    full = Image.new("L", (400, 600), 255)
    page = read_page(3, Image.new("L", (40, 60), 200), model, RecognizeOptions(),
                     Settings.from_env({"OCR_SKIP_BLANK_PAGES": "0"}),
                     rerender=lambda: full)
    assert page.fallback is not None and page.text.startswith("fake 400x600")
    with pytest.raises(ValueError):
        full.load()
