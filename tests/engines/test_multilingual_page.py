"""A page in six Latin languages read with `lang=auto` by the real tesseract engine.

In this test process (no workers: the page's reading strategy, `read_page`, is the
pipeline's own) on the simulated scan of a notice in English, German, French,
Italian, Spanish and Portuguese (`tests/image_fixtures.notice_page`, Times; its
sentences and font are held out from those the line identification was measured on).
The engine finds exactly those six languages (`tests/tessdata_sets.pinned`), whatever
else this host has; `make test-langs` installs them (the Makefile's TEST_LANGS). Also
tesseract's own test page in the same six languages (the corpus'
`scan_tess_eurotext.tif`), whose lines each run from one language into the next.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.engines.base import RecognizeOptions
from tasks.engines.tesseract import TesseractEngine
from tasks.pipeline.page_reading import read_page
from tasks.records.results import ScriptFound
from tasks.settings import Settings
from tests.cer import cer
from tests.image_fixtures import NOTICE_PARAGRAPHS, european_text, notice_page
from tests.tessdata_sets import lacking, pinned

LANGS = tuple(code for code, _ in NOTICE_PARAGRAPHS)  # eng deu fra ita spa por
SETTINGS = Settings.from_env({})


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TesseractEngine]:
    absent = lacking(LANGS)
    if absent:
        pytest.skip(f"no traineddata for {' '.join(absent)} on this host: "
                    f"run `make test-langs` (or apt-get install tesseract-ocr-<lang>)")
    folder: Path = tmp_path_factory.mktemp("tessdata")
    with pinned(LANGS, folder):
        loaded = TesseractEngine.load(SETTINGS)
        yield loaded
        loaded.close()


def test_a_page_in_six_latin_languages_is_read_with_the_six(engine: TesseractEngine
                                                           ) -> None:
    from PIL import Image

    page = Image.open(io.BytesIO(notice_page()))
    truth = european_text(NOTICE_PARAGRAPHS)
    auto = read_page(1, page, engine, RecognizeOptions(lang="auto"), SETTINGS)
    assert auto.lang is not None and sorted(auto.lang.split("+")) == sorted(LANGS), auto.lang
    assert auto.script == ScriptFound("Latin", auto.script.confidence if auto.script
                                      else None, "found")
    english = read_page(1, page, engine, RecognizeOptions(lang="eng"), SETTINGS)
    assert cer(truth, auto.text) < cer(truth, english.text), (auto.text, english.text)
    # Letters eng lacks (`schließt`, `mañana`, `às`): read, not dropped or misread.
    accented = {ch for ch in truth if not ch.isascii()}
    assert {ch for ch in auto.text if ch in accented} > \
        {ch for ch in english.text if ch in accented}, (auto.text, english.text)


def test_a_page_in_two_languages_is_read_with_those_two(engine: TesseractEngine) -> None:
    """The notice's German and Italian paragraphs alone: no other language is added."""
    from PIL import Image

    from tests.image_fixtures import european_page

    two = tuple(p for p in NOTICE_PARAGRAPHS if p[0] in ("deu", "ita"))
    page = Image.open(io.BytesIO(european_page(seed=11, paragraphs=two, font="tiro")))
    auto = read_page(1, page, engine, RecognizeOptions(lang="auto"), SETTINGS)
    assert auto.lang is not None and sorted(auto.lang.split("+")) == ["deu", "ita"], auto.lang


# One line in each language, in Helvetica: held out from the notice's sentences and font.
LINES = (
    ("eng", ["The library will be closed on Monday for the annual inventory."]),
    ("deu", ["Die Bibliothek bleibt am Montag wegen der jährlichen Inventur geschlossen."]),
    ("fra", ["La bibliothèque sera fermée lundi pour l'inventaire annuel."]),
    ("ita", ["La biblioteca resterà chiusa lunedì per l'inventario annuale."]),
    ("spa", ["La biblioteca estará cerrada el lunes por el inventario anual."]),
    ("por", ["A biblioteca estará fechada na segunda-feira para o inventário anual."]),
)


def test_a_line_in_each_language_is_read_with_each(engine: TesseractEngine) -> None:
    """A line told without being sure (Portuguese read without its accents) counts too.

    Scored with the service's metric: read no worse than with `eng` alone.
    """
    from PIL import Image

    from tasks.evaluation.scoring import score
    from tests.image_fixtures import european_page

    page = Image.open(io.BytesIO(european_page(seed=5, paragraphs=LINES, font="helv")))
    truth = european_text(LINES)
    auto = read_page(1, page, engine, RecognizeOptions(lang="auto"), SETTINGS)
    assert auto.lang is not None and sorted(auto.lang.split("+")) == sorted(LANGS), auto.lang
    english = read_page(1, page, engine, RecognizeOptions(lang="eng"), SETTINGS)
    assert score(truth, auto.text).cer <= score(truth, english.text).cer, \
        (auto.text, english.text)


def test_tesseracts_six_language_page_reads_better_than_with_the_six_named(
        engine: TesseractEngine) -> None:
    """Its sentences, over its lines, name the six: read with them all, English first.

    Measured (the service's CER): `auto` 0.73 % (read `eng+fra+deu+spa+ita+por`),
    the six named `eng+deu+fra+ita+spa+por` 1.46 %, `eng` alone 1.94 %.
    """
    from PIL import Image

    from devkit.corpus import corpus_addition
    from tasks.evaluation.scoring import score

    name = "scan_tess_eurotext.tif"  # tesseract-ocr/test testing/eurotext.tif (Apache-2.0)
    source = "tesseract-ocr/test, testing/eurotext.tif and .txt, Apache-2.0"
    page = Image.open(corpus_addition(name, source))
    truth = corpus_addition("scan_tess_eurotext.gt.txt", source).read_text()
    auto = read_page(1, page, engine, RecognizeOptions(lang="auto"), SETTINGS)
    assert auto.lang is not None and sorted(auto.lang.split("+")) == sorted(LANGS), auto.lang
    assert auto.script is not None and auto.script.outcome == "found", auto.script
    named = read_page(1, page, engine, RecognizeOptions(lang="+".join(LANGS)), SETTINGS)
    english = read_page(1, page, engine, RecognizeOptions(lang="eng"), SETTINGS)
    assert score(truth, auto.text).cer <= score(truth, named.text).cer < \
        score(truth, english.text).cer, (auto.text, named.text, english.text)
