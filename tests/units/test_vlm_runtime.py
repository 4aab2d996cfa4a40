"""Unit tests of the VLM runtime: page budget, repetition guard, fallback, contracts.

No MLX and no worker: the pure helpers, the pipeline's fallback with stand-in engines,
the result and telemetry shapes.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pymupdf
import pytest
from PIL import Image

from tasks.engines import resolve_engine
from tasks.engines.base import OcrEngine, PageResult, RecognizeOptions, VlmRead, Word
from tasks.engines.tesseract import TesseractEngine
from tasks.engines.vlm.base import VlmBudget
from tasks.engines.vlm.budget import PatchGrid, budget_size
from tasks.engines.vlm.page_read import Generation
from tasks.engines.vlm.profiles import select_profile
from tasks.engines.vlm.repetition import RepetitionGuard
from tasks.engines.vlm.vlm_api_engine import PageClock, VlmApiEngine
from tasks.pipeline.documents import ocr_page
from tasks.pipeline.pdf import render_page
from tasks.pipeline.results import assemble
from tasks.queue.celery_config import worker_app_config
from tasks.queue.job_samples import job_record, page_samples
from tasks.records.results import DocumentResult, PageRecord
from tasks.settings import Settings, SettingsError
from tests.harness import corpus
from tests.pdf_fixtures import repeated_image_pdf

QWEN = PatchGrid(factor=28, max_pixels=12_845_056, min_pixels=3136)


# ---------------------------------------------------------------------------- page budget

def ocr_page_json(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """`ocr_page` as the JSON other services read."""
    return ocr_page(*args, **kwargs).to_json()


def test_budget_of_a_300_dpi_letter_page() -> None:
    w, h = budget_size(2550, 3300, 1288, QWEN)
    assert max(w, h) <= 1288 + 14 and w % 28 == 0 and h % 28 == 0
    assert (w // 28) * (h // 28) < 2200  # vs ~10,700 image tokens at 300 dpi
    assert abs(w / h - 2550 / 3300) < 0.03


def test_budget_never_upscales_and_respects_max_pixels() -> None:
    assert budget_size(640, 480, 1288, QWEN) == (644, 476)
    small = PatchGrid(factor=28, max_pixels=56 * 56, min_pixels=28 * 28)
    w, h = budget_size(2550, 3300, 1288, small)
    assert w * h <= 56 * 56 and (w, h) == (56, 56)
    assert budget_size(3000, 1000, 1500, PatchGrid()) == (1500, 500)


def test_pdf_page_rendered_at_the_budget_directly() -> None:
    settings = Settings.from_env({})
    with pymupdf.open(corpus("scan_linn_skew.pdf")) as doc:
        budget = render_page(doc, 1, settings, 1288)
        full = render_page(doc, 1, settings)
        fitted = render_page(doc, 1, settings, 1288,
                             fit=lambda w, h: budget_size(w, h, 1288, QWEN))
    assert max(budget.size) in (1288, 1289)
    assert full.size == (2550, 3300)
    # At the model's patch grid itself (what the engine's `page_size` gives): no resize.
    assert fitted.size == budget_size(2550, 3300, 1288, QWEN) != budget.size


# ----------------------------------------------------------------------- repetition guard

def _feed(guard: RepetitionGuard, tokens: list[int]) -> int | None:
    """The index of the token at which the guard fired, or None."""
    for i, token in enumerate(tokens):
        if guard.feed(token):
            return i
    return None


def test_guard_stops_a_single_token_loop_and_a_line_loop() -> None:
    rng = random.Random(1)
    text = [rng.randrange(300) for _ in range(400)]
    assert _feed(RepetitionGuard(), text) is None
    stuck = text[:50] + [7] * 400
    fired = _feed(guard := RepetitionGuard(), stuck)
    assert fired is not None and fired < 50 + 200 and guard.period() == 1
    line = [rng.randrange(300) for _ in range(23)]
    looping = text[:100] + line * 30
    fired = _feed(guard := RepetitionGuard(), looping)
    assert fired is not None and fired < 100 + 23 * 8 and guard.period() == 23


def test_guard_lets_short_legitimate_repetition_pass() -> None:
    rng = random.Random(2)
    rule = [5] * 60  # a rule of dashes, a dot leader
    rows = [rng.randrange(300) for _ in range(12)] * 3  # three identical table rows
    tokens = ([rng.randrange(300) for _ in range(100)] + rule
              + [rng.randrange(300) for _ in range(100)] + rows
              + [rng.randrange(300) for _ in range(100)])
    assert _feed(RepetitionGuard(), tokens) is None


def test_guard_sees_a_long_period_loop() -> None:
    rng = random.Random(3)
    block = [rng.randrange(300) for _ in range(120)]
    assert _feed(RepetitionGuard(), block * 3) is None  # three repeats: not yet a loop
    assert _feed(guard := RepetitionGuard(), block * 5) is not None
    assert guard.period() == 120


# ------------------------------------------------------------------ fallback in pipeline

class _Vlm(OcrEngine):
    name = "stub-vlm"
    orientation_engine = "stub-tess"

    def __init__(self, finish: str) -> None:
        self.finish = finish
        self.seen: list[tuple[int, int]] = []

    @classmethod
    def load(cls, settings: Settings) -> _Vlm:
        raise NotImplementedError

    def recognize(self, image: Image.Image, options: RecognizeOptions) -> PageResult:
        self.seen.append(image.size)
        vlm = VlmRead("generic", (28, 28), 10, 5, self.finish, 2)
        return PageResult(text="vlm text" if vlm.complete else "", vlm=vlm)


class _Tess(OcrEngine):
    name = "stub-tess"

    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []

    @classmethod
    def load(cls, settings: Settings) -> _Tess:
        raise NotImplementedError

    def detect_orientation(self, image: Image.Image) -> int:
        return 180

    def recognize(self, image: Image.Image, options: RecognizeOptions) -> PageResult:
        self.seen.append(image.size)
        return PageResult(text="tess text", words=(Word("tess", (1, 2, 3, 4), 90.0),),
                          confidence=90.0)


def _pair(finish: str) -> tuple[_Vlm, _Tess]:
    vlm, tess = _Vlm(finish), _Tess()
    vlm.bind_peers({"stub-tess": tess, "tesseract": tess}.__getitem__)
    return vlm, tess


def test_incomplete_read_falls_back_on_the_full_resolution_page() -> None:
    settings = Settings.from_env({"OCR_DESKEW": "0", "OCR_SKIP_BLANK_PAGES": "0"})
    vlm, tess = _pair("length")
    small, full = Image.new("L", (40, 60), 255), Image.new("L", (400, 600), 255)
    page = ocr_page_json(1, small, vlm, RecognizeOptions(output="json", want_words=True), settings,
                    rerender=lambda: full)
    assert page["text"] == "tess text" and page["rotation"] == 180
    assert page["vlm"]["finish_reason"] == "length" and page["vlm"]["tries"] == 2
    assert page["fallback"] == {"engine": "tesseract", "reason": "length"}
    assert page["image_size"] == [400, 600] and page["words"][0]["text"] == "tess"
    assert vlm.seen == [(40, 60)] and tess.seen == [(400, 600)]
    result = assemble([PageRecord.from_json(page)], DocumentResult(status="")).to_json()
    assert result["status"] == "SUCCESS"
    assert [w["page"] for w in result["warnings"]] == [1]
    assert result["warnings"][0]["code"] == "vlm_fallback"


def test_complete_read_is_the_text_and_no_warning() -> None:
    settings = Settings.from_env({"OCR_DESKEW": "0", "OCR_SKIP_BLANK_PAGES": "0"})
    vlm, tess = _pair("stop")
    page = ocr_page_json(1, Image.new("L", (40, 60), 255), vlm, RecognizeOptions(), settings)
    assert page["text"] == "vlm text" and "fallback" not in page
    assert page["vlm"]["image_size"] == [28, 28]
    assembled = assemble([PageRecord.from_json(page)], DocumentResult(status=""))
    assert tess.seen == [] and assembled.to_json()["warnings"] == []


class _RecordingApi(VlmApiEngine):
    """The vlm-api engine with its server stood in for: keeps each page it would send."""

    sent: list[Image.Image]

    def generate(self, image: Image.Image, temperature: float,
                 clock: PageClock | None = None) -> Generation:
        assert self.messages(image)  # the request body is built (PNG data URL) as sent
        self.sent.append(image.copy())
        return Generation("text", 10, 5, "stop")


@pytest.mark.parametrize("turned", [0, 90, 180])
def test_vlm_pages_are_turned_upright_and_upright_ones_skip_osd(
        turned: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A vlm-api page goes to the model upright.

    An upright page is found so by the trial read of a few lines alone (no OSD); a page
    turned 90 or 180 degrees by OSD, and turned back before it is sent.
    """
    settings = Settings.from_env({"OCR_DESKEW": "0", "OCR_SKIP_BLANK_PAGES": "0"})
    name = "Qwen2.5-VL-3B-Instruct"
    profile = select_profile(Path(name), None, model_name=name)
    budget = VlmBudget.of(settings, profile, QWEN)
    engine = _RecordingApi(None, None, name, "read", profile, budget.longest_side,
                           budget.max_tokens, budget.temperatures, budget.grid, settings)
    engine.sent = []
    tess = TesseractEngine.load(settings)
    engine.bind_peers({"tesseract": tess}.__getitem__)
    checks: list[int] = []
    osd = tess.detect_orientation
    monkeypatch.setattr(tess, "detect_orientation",
                        lambda image: checks.append(1) or osd(image))
    with Image.open(corpus("scan_linn.png")) as scan:
        upright = scan.convert("L")

    def sent_page(page: Image.Image) -> tuple[PageRecord, Image.Image]:
        with pymupdf.open(stream=repeated_image_pdf(page, 1, dpi=200)) as doc:
            image = render_page(doc, 1, settings, engine.page_longest_side,
                                mode=engine.page_mode)
            record = ocr_page(1, image, engine, RecognizeOptions(), settings)
        return record, engine.sent.pop()

    try:
        _, reference = sent_page(upright)
        checks.clear()
        page, sent = sent_page(upright.rotate(turned, expand=True))
    finally:
        tess.close()
    assert page.text == "text" and page.rotation == (360 - turned) % 360
    assert checks == ([] if turned == 0 else [1])
    assert sent.size == reference.size
    # The page the model got is the upright one (up to resampling), not a turned one.
    difference = np.abs(np.asarray(sent, float) - np.asarray(reference, float)).mean()
    turned_back = np.abs(np.asarray(reference.rotate(180), float)
                         - np.asarray(reference, float)).mean()
    assert difference < turned_back / 4


def test_fallback_none_fails_the_page_with_a_code() -> None:
    settings = Settings.from_env({"OCR_DESKEW": "0", "OCR_SKIP_BLANK_PAGES": "0",
                                  "OCR_VLM_FALLBACK": "none"})
    vlm, tess = _pair("repetition")
    page = ocr_page_json(3, Image.new("L", (40, 60), 255), vlm, RecognizeOptions(), settings)
    assert page["error"]["code"] == "vlm_incomplete" and page["text"] == ""
    assert page["vlm"]["finish_reason"] == "repetition" and tess.seen == []
    with pytest.raises(Exception) as info:
        assemble([PageRecord.from_json(page)], DocumentResult(status="")).to_json()
    assert getattr(info.value, "code", None) == "vlm_incomplete"


# --------------------------------------------------------------- settings and telemetry

def test_vlm_settings() -> None:
    s = Settings.from_env({})
    assert s.vlm_max_tokens is None and s.vlm_longest_side is None
    assert s.vlm_temperatures == (0.0, 0.2) and s.vlm_fallback == "tesseract"
    s = Settings.from_env({"OCR_VLM_MAX_TOKENS": "300", "OCR_VLM_TEMPERATURES": "0,0.1,0.3",
                           "OCR_MLX_MEMORY_LIMIT_MB": "8000", "OCR_MLX_CACHE_LIMIT_MB": "0"})
    assert s.vlm_max_tokens == 300 and s.vlm_temperatures == (0.0, 0.1, 0.3)
    assert s.mlx_memory_limit_mb == 8000 and s.mlx_cache_limit_mb == 0
    for bad in ({"OCR_VLM_FALLBACK": "mlx-vlm"}, {"OCR_VLM_FALLBACK": "nope"},
                {"OCR_VLM_MAX_TOKENS": "0"}, {"OCR_VLM_TEMPERATURES": ""}):
        with pytest.raises(SettingsError):
            Settings.from_env(bad)


def test_one_pool_child_for_a_vlm_worker(tmp_path: object) -> None:
    from pathlib import Path

    models = Path(str(tmp_path))
    (models / "m").mkdir()
    (models / "m" / "config.json").write_text("{}")
    vlm = {"OCR_MODEL_DIR": str(models), "OCR_MODEL": "m"}

    def config(env: dict[str, str]) -> dict[str, object]:
        settings = Settings.from_env(env)
        return worker_app_config(settings, resolve_engine(settings))

    assert config(vlm)["worker_concurrency"] == 1
    assert config({**vlm, "OCR_CONCURRENCY": "3"})["worker_concurrency"] == 3
    assert config({})["worker_concurrency"] is None
    assert config({})["worker_pool"] == "tasks.queue.pool:TaskPool"


def test_vlm_tokens_and_fallbacks_in_the_job_line_and_the_page_counters() -> None:
    pages = [
        {"number": 1, "text": "a", "source": "ocr",
         "vlm": {"prompt_tokens": 100, "generation_tokens": 40, "finish_reason": "stop"}},
        {"number": 2, "text": "b", "source": "ocr",
         "vlm": {"prompt_tokens": 120, "generation_tokens": 64, "finish_reason": "length"},
         "fallback": {"engine": "tesseract", "reason": "length"}},
    ]
    result = {"status": "SUCCESS", "pages": pages, "engine": {"name": "mlx-vlm"}}
    record, samples = job_record("j", "n", "f.pdf", "mlx-vlm", 1.0, result)
    assert record["vlm"] == {"prompt_tokens": 220, "generation_tokens": 104,
                             "finish_reasons": {"length": 1, "stop": 1}, "fallbacks": 1}
    assert not [s for s in samples if s[0].startswith("ocr_vlm_")]  # counted per page
    samples = page_samples("mlx-vlm", pages)
    label = {"engine": "mlx-vlm"}
    assert ("ocr_pages_total", {**label, "source": "ocr"}, 2.0) in samples
    assert ("ocr_vlm_tokens_total", {**label, "kind": "prompt"}, 220.0) in samples
    assert ("ocr_vlm_pages_total", {**label, "finish_reason": "length"}, 1.0) in samples
    assert ("ocr_vlm_fallbacks_total", {**label, "fallback": "tesseract",
                                        "reason": "length"}, 1.0) in samples


# ----------------------------------------------------- searchable PDF from a VLM's read

def _boxes(text: str) -> tuple[Word, ...]:
    return tuple(Word(w, (10 * i, 0, 10 * i + 8, 10), 80.0) for i, w in enumerate(text.split()))


def test_align_words_places_the_models_words_on_the_boxes() -> None:
    from tasks.engines.vlm.word_placement import align_words

    boxes = _boxes("Tne quick brown fox, jumps over thc lazy dog")
    placed = align_words("The quick brown fox jumps over the lazy dog.", boxes)
    assert [w.text for w in placed] == ["The", "quick", "brown", "fox", "jumps", "over",
                                        "the", "lazy", "dog."]
    assert [w.box for w in placed] == [b.box for b in boxes]
    # Words the boxes lack join a neighbour; boxed noise the model did not read drops.
    placed = align_words("Title: The quick fox", _boxes("The ~~ quick fox"))
    assert " ".join(w.text for w in placed) == "Title: The quick fox"
    assert placed[0].box == (0, 0, 8, 10)
    assert align_words("", boxes) == () and align_words("a b", ()) == ()


def test_pdf_output_of_a_clean_vlm_read_has_a_placed_text_layer() -> None:
    settings = Settings.from_env({"OCR_DESKEW": "0", "OCR_SKIP_BLANK_PAGES": "0"})
    vlm, tess = _pair("stop")
    vlm.text_layer_from = "stub-tess"  # type: ignore[misc]
    full = Image.new("L", (400, 600), 255)
    page = ocr_page_json(1, Image.new("L", (40, 60), 255), vlm,
                    RecognizeOptions(output="pdf", want_words=True), settings,
                    rerender=lambda: full)
    assert page["text"] == "vlm text" and "fallback" not in page
    assert page["text_layer"] == {"boxes": "stub-tess", "words": 1, "unplaced": 0}
    assert page["words"] == [{"text": "vlm text", "box": [1, 2, 3, 4], "confidence": 90.0}]
    assert page["image_size"] == [400, 600] and tess.seen == [(400, 600)]


def test_place_words_counts_the_words_it_cannot_place() -> None:
    from tasks.engines.vlm.word_placement import place_words

    placed, unplaced = place_words("Title: The quick fox", _boxes("The ~~ quick fox"))
    assert unplaced == 1 and " ".join(w.text for w in placed) == "Title: The quick fox"
    assert place_words("The quick fox", _boxes("The quick fox"))[1] == 0
    assert place_words("a b", ()) == ((), 2)


@pytest.mark.parametrize("output", ["hocr", "alto"])
def test_hocr_and_alto_of_a_vlm_read_carry_the_models_words_on_boxes(output: str) -> None:
    from tasks.pipeline.layouts import render

    settings = Settings.from_env({"OCR_DESKEW": "0", "OCR_SKIP_BLANK_PAGES": "0"})
    vlm, tess = _pair("stop")
    vlm.text_layer_from = "stub-tess"  # type: ignore[misc]
    vlm.check(RecognizeOptions(output=output))  # no output_unsupported
    full = Image.new("L", (400, 600), 255)
    page = ocr_page(1, Image.new("L", (40, 60), 255), vlm,
                    RecognizeOptions(output=output, want_words=True, want_hocr=True),
                    settings, rerender=lambda: full)
    assert page.text == "vlm text" and page.text_layer is not None
    assert page.text_layer.words == 1 and page.text_layer.unplaced == 0
    assert page.image_size == (400, 600) and tess.seen == [(400, 600)]
    document = render(output, [page]).decode()
    if output == "hocr":
        assert "bbox 0 0 400 600" in document and "bbox 397 596 399 598" in document
        assert ">vlm text</span>" in document
    else:
        assert 'CONTENT="vlm text"' in document and 'HPOS="397" VPOS="596"' in document


# ------------------------------------------- the engine's generation loop, MLX stubbed

class _Chunk:
    def __init__(self, text: str, token: int, n: int, finish: str | None = None) -> None:
        self.text, self.token, self.generation_tokens = text, token, n
        self.prompt_tokens, self.finish_reason = 100, finish


def _engine(profile: str, replies: dict[float, list[str]], max_tokens: int = 400,
            temperatures: tuple[float, ...] = (0.0, 0.2)) -> tuple[Any, list[Any]]:
    """An MlxVlmEngine whose mlx_vlm.stream_generate replays `replies` per temperature.

    A reply is a list of text pieces, one token each; it ends with the end token
    (`stop`) unless it reaches `max_tokens` (`length`), as mlx-vlm's stream does.
    """
    from types import SimpleNamespace

    from tasks.engines.vlm.mlx_vlm_engine import MlxVlmEngine, VlmBudget
    from tasks.engines.vlm.profiles import PROFILES

    calls: list[Any] = []

    def stream_generate(model: Any, processor: Any, prompt: str, image: list[Any],
                        max_tokens: int, temperature: float, verbose: bool) -> Any:
        calls.append((image[0].size, temperature))
        pieces = replies[temperature].pop(0) if isinstance(replies[temperature][0], list) \
            else replies[temperature]
        for n, piece in enumerate(pieces[:max_tokens], 1):
            yield _Chunk(piece, hash(piece) % 1000, n)
        if len(pieces) >= max_tokens:
            yield _Chunk("", 0, max_tokens, "length")
        else:
            yield _Chunk("", 2, len(pieces), "stop")

    budget = VlmBudget(1288, max_tokens, temperatures, QWEN)
    engine = MlxVlmEngine(None, None, "p", PROFILES[profile], budget, "m",
                          (None, SimpleNamespace(stream_generate=stream_generate)))
    return engine, calls


def test_engine_retries_a_cut_read_on_the_next_temperature() -> None:
    words = [f"w{i} " for i in range(50)]
    engine, calls = _engine("generic", {0.0: words, 0.2: ["Hello ", "**world**"]},
                            max_tokens=20)
    read = engine.recognize(Image.new("RGB", (2550, 3300), "white"), RecognizeOptions())
    assert read.text == "Hello world" and read.vlm is not None
    assert read.vlm.finish_reason == "stop" and read.vlm.tries == 2
    assert read.vlm.image_size == (1008, 1288) and read.vlm.generation_tokens == 2
    assert [c[1] for c in calls] == [0.0, 0.2] and calls[0][0] == (1008, 1288)


def test_engine_stops_loops_and_reports_an_incomplete_read() -> None:
    loop = ["| a ", "| b ", "|\n"] * 200
    engine, calls = _engine("generic", {0.0: loop, 0.2: loop}, max_tokens=4000)
    read = engine.recognize(Image.new("RGB", (600, 800), "white"), RecognizeOptions())
    assert read.text == "" and read.vlm is not None
    assert read.vlm.finish_reason == "repetition" and read.vlm.tries == 2
    assert read.vlm.generation_tokens < 200  # stopped early, not at 600 or 4000


def test_engine_honours_stop_strings_and_olmocr_rotation() -> None:
    engine, _ = _engine("docling", {0.0: ["<doctag>", "<text>Hi</text>", "</doctag>",
                                          "junk"] * 50})
    read = engine.recognize(Image.new("RGB", (600, 800), "white"), RecognizeOptions())
    assert read.vlm is not None and read.vlm.finish_reason == "stop"
    assert "junk" not in read.text and "Hi" in read.text
    sideways = ["---\nprimary_language: en\nis_rotation_valid: false\n"
                "rotation_correction: 90\nis_table: false\nis_diagram: false\n---\n",
                "garbled"]
    upright = ["---\nprimary_language: en\nis_rotation_valid: true\n"
               "rotation_correction: 0\nis_table: false\nis_diagram: false\n---\n",
               "The page"]
    engine, calls = _engine("olmocr", {0.0: [sideways, upright]})
    read = engine.recognize(Image.new("RGB", (560, 840), "white"), RecognizeOptions())
    assert read.text == "The page" and read.vlm is not None and read.vlm.tries == 2
    assert calls[0][0] == (560, 840) and calls[1][0] == (840, 560)
    assert read.vlm.image_size == (840, 560)
