"""The rapidocr engine's pure parts: language routing, words from RapidOCR's lines, threads.

No worker and no model here (tests/engines/test_e2e_rapidocr.py reads the corpus through real
workers); `RapidOcrEngine` is built without its ONNX sessions where only `check` runs.
"""

from __future__ import annotations

import pytest

from tasks.engines.base import RecognizeOptions
from tasks.engines.lang_routing import routed_engine
from tasks.engines.rapidocr import RapidOcrEngine, _line, _words_along, intra_op_threads
from tasks.engines.resident import ResidentEngines
from tasks.errors import LanguageUnavailable
from tasks.settings import Settings, SettingsError
from tests.harness import fake_env

DEFAULT = Settings.from_env({})


@pytest.mark.parametrize("lang,expected", [
    ("chi_sim", "rapidocr"),
    ("chi_sim+eng", "rapidocr"),
    ("eng+chi_sim", "rapidocr"),  # the first code with a pair decides
    ("chi_sim+vie", "tesseract"),  # rapidocr cannot read the whole set
    ("vie", "tesseract"),
    ("eng", "tesseract"),
    (None, "tesseract"),
])
def test_default_routing_sends_chinese_to_rapidocr(lang: str | None, expected: str) -> None:
    assert DEFAULT.lang_engine_map == {"chi_sim": "rapidocr"}
    assert routed_engine(lang, "tesseract", DEFAULT) == expected


def test_routing_keeps_the_workers_engine_when_the_routed_one_cannot_run(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert routed_engine("chi_sim", "tesseract", DEFAULT, failed={"rapidocr"}) == "tesseract"
    assert routed_engine("chi_sim", "tesseract", Settings.from_env(
        {"OCR_LANG_ENGINES": ""})) == "tesseract"
    monkeypatch.setattr(RapidOcrEngine, "installed", classmethod(lambda cls, s: False))
    assert routed_engine("chi_sim", "tesseract", DEFAULT) == "tesseract"


def test_routing_table_is_validated() -> None:
    settings = Settings.from_env({"OCR_LANG_ENGINES": "chi_sim=rapidocr, vie = tesseract"})
    assert settings.lang_engine_map == {"chi_sim": "rapidocr", "vie": "tesseract"}
    for bad in ("chi_sim=nope", "chi_sim", "=rapidocr"):
        with pytest.raises(SettingsError, match="OCR_LANG_ENGINES"):
            Settings.from_env({"OCR_LANG_ENGINES": bad})


def test_rapidocr_refuses_languages_it_does_not_read_and_takes_box_outputs() -> None:
    engine = RapidOcrEngine(ocr=None)
    for lang in (None, "chi_sim", "eng", "chi_sim+eng"):
        engine.check(RecognizeOptions(lang=lang, output="hocr"))
    for lang in ("vie", "ell+eng", "chi_sim+jpn"):
        with pytest.raises(LanguageUnavailable, match="chi_sim, eng"):
            engine.check(RecognizeOptions(lang=lang))
    assert engine.gives_words


def test_words_are_runs_of_characters_on_their_boxes() -> None:
    quad = [[10, 20], [200, 20], [200, 50], [10, 50]]
    chars = ["适", "合", " ", "W", "e", "b", " ", "A", "P", "I"]
    boxes = [[[10 + 20 * i, 20], [28 + 20 * i, 20], [28 + 20 * i, 50], [10 + 20 * i, 50]]
             for i in range(len(chars))]
    line = _line([quad, "适合 Web API", 0.9, boxes, chars, [0.5] * len(chars)])
    assert [w.text for w in line.words] == ["适合", "Web", "API"]
    assert line.words[0].box == (10, 20, 48, 50)
    assert line.words[1].box == (70, 20, 128, 50)
    assert line.words[0].confidence == 50.0
    # No character boxes (or ones that do not spell the line): words along the line box.
    assert _line([quad, "ab cd", 0.8]).words == _words_along("ab cd", (10, 20, 200, 50), 0.8)


def test_words_along_a_line_split_it_in_proportion() -> None:
    words = _words_along("ab cdef", (0, 0, 70, 10), 0.5)
    assert [(w.text, w.box) for w in words] == [("ab", (0, 0, 20, 10)),
                                                ("cdef", (30, 0, 70, 10))]
    assert _words_along("", (0, 0, 10, 10), 1.0) == ()


def test_threads_share_the_cores_among_pool_children(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert intra_op_threads(Settings.from_env({})) == 1  # a child per core
    assert intra_op_threads(Settings.from_env({"OCR_CONCURRENCY": "2"})) == 4
    assert intra_op_threads(Settings.from_env({"OCR_CONCURRENCY": "16"})) == 1
    assert intra_op_threads(Settings.from_env({"OCR_CONCURRENCY": "2",
                                               "OCR_RAPIDOCR_THREADS": "3"})) == 3
    assert intra_op_threads(Settings.from_env({"OCR_RAPIDOCR_THREADS": "64"})) == 8
    with pytest.raises(SettingsError, match="OCR_RAPIDOCR_THREADS"):
        Settings.from_env({"OCR_RAPIDOCR_THREADS": "-1"})


def test_a_routed_engine_that_fails_to_load_leaves_the_job_to_the_workers() -> None:
    settings = Settings.from_env(fake_env(cache=True, OCR_LANG_ENGINES="vie=broken"))
    engines = ResidentEngines(settings=settings, primary="fake")
    assert engines.for_job(None, "vie") == "fake"  # `broken` raised while loading
    assert "broken" in engines.failures
    assert engines.for_job(None, "vie") == "fake"  # remembered: not loaded again
    assert engines.for_job("broken", "vie") == "broken"  # a job's own engine is its own
    assert engines.for_job(None, None) == "fake"
