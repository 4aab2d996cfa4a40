"""Unit tests of pure functions and of the pipeline run in-process.

Settings, page selection, formats, requests, errors; fake engine in-process.
"""

from __future__ import annotations

import base64
import io
import os
import signal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery
from celery.backends.base import Backend
from PIL import Image

from tasks.engines import resolve_engine, tessdata
from tasks.engines.release import RELEASE_SIGNAL, ChildKeeper, signal_children
from tasks.engines.resident import ResidentEngines
from tasks.errors import (
    ERROR_CLASSES,
    BadRequest,
    CorruptInput,
    EmptyInput,
    EngineUnavailable,
    ImageTooLarge,
    InputNotFound,
    InputTooLarge,
    InvalidPages,
    NoPages,
    OcrError,
    PathNotAllowed,
    PdfEncrypted,
    TooManyPages,
    UnsupportedFormat,
    error_info,
)
from tasks.lifecycle.inputs import decode_request, read_input, read_path
from tasks.pipeline.documents import run_document
from tasks.pipeline.images import normalize, open_image, sniff_format
from tasks.pipeline.pages import select_pages
from tasks.queue.routing import route_task
from tasks.records.request import JobRequest
from tasks.settings import Settings, SettingsError, settings_markdown
from tests.fake_engines import FakeEngine
from tests.harness import corpus, eventually


def run_document_json(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """`run_document` as the JSON other services read."""
    return run_document(*args, **kwargs).to_json()


def settings(**env: str) -> Settings:
    return Settings.from_env(env)


# --- settings -------------------------------------------------------------------

def test_defaults_are_valid_and_offline() -> None:
    s = settings()
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert resolve_engine(s) == "tesseract"
    assert (tessdata.wheel_dir() / "eng.traineddata").is_file()


@pytest.mark.parametrize("env,name", [
    ({"OCR_MAX_TASKS_PER_CHILD": "many"}, "OCR_MAX_TASKS_PER_CHILD"),
    ({"OCR_CACHE_RESULTS": "maybe"}, "OCR_CACHE_RESULTS"),
    ({"OCR_ENGINE": "paddle"}, "OCR_ENGINE"),
    ({"OCR_ENGINE_PLUGINS": "fake"}, "OCR_ENGINE_PLUGINS"),
    ({"OCR_SOFT_TIME_LIMIT": "100", "OCR_HARD_TIME_LIMIT": "50"}, "OCR_HARD_TIME_LIMIT"),
    ({"OCR_MODEL": "../etc"}, "OCR_MODEL"),
])
def test_bad_settings_name_their_variable(env: dict[str, str], name: str) -> None:
    with pytest.raises(SettingsError, match=name):
        settings(**env)


def test_auto_engine_picks_vlm_only_when_model_present(tmp_path: Path) -> None:
    env = {"OCR_MODEL_DIR": str(tmp_path), "OCR_MODEL": "tiny"}
    assert resolve_engine(settings(**env)) == "tesseract"
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "config.json").write_text("{}")
    assert resolve_engine(settings(**env)) == "mlx-vlm"


def test_mlx_cache_clear_follows_its_setting() -> None:
    from tasks.engines.vlm.budget import PatchGrid
    from tasks.engines.vlm.mlx_vlm_engine import MlxVlmEngine, VlmBudget
    from tasks.engines.vlm.profiles import PROFILES

    assert settings().mlx_clear_cache is True
    assert settings(OCR_MLX_CLEAR_CACHE="0").mlx_clear_cache is False
    for clear in (True, False):
        calls: list[str] = []
        mx = SimpleNamespace(get_active_memory=lambda: 2**20, get_peak_memory=lambda: 2**21,
                             get_cache_memory=lambda: 3 * 2**20,
                             clear_cache=lambda calls=calls: calls.append("clear"),
                             reset_peak_memory=lambda calls=calls: calls.append("reset"))
        budget = VlmBudget(1288, 8, (0.0,), PatchGrid())
        engine = MlxVlmEngine(None, None, "", PROFILES["generic"], budget, "m", (mx, None),
                              clear_cache=clear)
        assert engine.release_cache() == {"mlx_active_mb": 1.0, "mlx_peak_mb": 2.0,
                                          "mlx_cache_mb": 3.0}
        assert calls == (["clear", "reset"] if clear else ["reset"])


def test_settings_doc_is_current() -> None:
    table = settings_markdown()
    for name in ("REDIS_URL", "OCR_ENGINE", "OCR_MAX_TASKS_PER_CHILD", "OCR_ALLOWED_ROOTS"):
        assert f"`{name}`" in table
    doc = Path(__file__).resolve().parents[2] / "docs" / "settings.md"
    assert doc.read_text() == table, "regenerate: python worker_config.py > docs/settings.md"


# --- pages ------------------------------------------------------------------------

@pytest.mark.parametrize("spec,expected", [
    (None, [1, 2, 3, 4, 5]), ("", [1, 2, 3, 4, 5]), ("2", [2]), ("1-3,5", [1, 2, 3, 5]),
    ("4-", [4, 5]), ("-2", [1, 2]), ("3-9", [3, 4, 5]), (" 5 , 1 ", [1, 5]), ("2,2", [2]),
])
def test_select_pages(spec: str | None, expected: list[int]) -> None:
    assert select_pages(spec, 5, 100) == expected


@pytest.mark.parametrize("spec", ["0", "6", "3-1", "a", "1-2-3", ",", "1.5"])
def test_select_pages_rejects(spec: str) -> None:
    with pytest.raises(InvalidPages):
        select_pages(spec, 5, 100)


def test_select_pages_limits() -> None:
    with pytest.raises(NoPages):
        select_pages(None, 0, 10)
    with pytest.raises(TooManyPages):
        select_pages(None, 11, 10)


# --- formats and images -----------------------------------------------------------

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


# --- requests and inputs ----------------------------------------------------------

def test_request_validation() -> None:
    s = settings()
    ok = decode_request({"blob": "ocr:blob:abcdefgh", "pages": "1-2"}, s)
    assert ok.source == "blob" and ok.pages == "1-2" and ok.output == "text"
    for bad in ({}, {"blob": "x", "path": "/y"}, {"blob": "k", "colour": "red"},
                {"blob": "k", "output": "docx"}, {"blob": "k", "engine": "paddle"},
                {"blob": "k", "pages": 3}, {"blob": "k", "mode": "fast"}):
        with pytest.raises(BadRequest):
            decode_request(bad, s)


def test_cache_options_leave_out_password_and_name() -> None:
    request = JobRequest(source="blob", filename="a.pdf", password="secret")
    options = request.cache_options("tesseract", "eng")
    assert "password" not in options and "filename" not in options
    assert options["engine"] == "tesseract" and options["model"] == "eng"


def test_data_b64_limits() -> None:
    s = settings(OCR_MAX_INPUT_MB="0.001")
    big = base64.b64encode(b"x" * 2000).decode()
    with pytest.raises(InputTooLarge):
        read_input(JobRequest(source="data_b64", data_b64=big), s, blobs=None)  # type: ignore[arg-type]
    with pytest.raises(BadRequest):
        read_input(JobRequest(source="data_b64", data_b64="!!notbase64"), settings(),
                   blobs=None)  # type: ignore[arg-type]


def test_read_path_stays_inside_roots(tmp_path: Path) -> None:
    root = tmp_path / "inbox"
    root.mkdir()
    (root / "ok.png").write_bytes(b"data")
    outside = tmp_path / "secret.txt"
    outside.write_bytes(b"secret")
    (root / "link.png").symlink_to(outside)
    s = settings(OCR_ALLOWED_ROOTS=str(root))
    assert read_path(str(root / "ok.png"), s) == b"data"
    with pytest.raises(PathNotAllowed):
        read_path(str(root / ".." / "secret.txt"), s)
    with pytest.raises(PathNotAllowed):
        read_path(str(root / "link.png"), s)
    with pytest.raises(InputNotFound):
        read_path(str(root / "missing.png"), s)
    with pytest.raises(BadRequest):
        read_path("relative.png", s)
    with pytest.raises(PathNotAllowed):
        read_path(str(root / "ok.png"), settings())


def test_routing_by_engine() -> None:
    assert route_task("ocr.document", (), {"engine": "mlx-vlm"}, {}) == {"queue": "ocr-mlx-vlm"}
    assert route_task("ocr.document", (), {}, {}) is None


# --- errors -----------------------------------------------------------------------

def test_errors_survive_celery_json_round_trip() -> None:
    backend = Backend(app=Celery(set_as_current=False), serializer="json")
    for code, cls in ERROR_CLASSES.items():
        stored = backend.prepare_exception(cls("details here"), "json")
        again = backend.exception_to_python(stored)
        assert isinstance(again, cls)
        assert error_info(again) == {"code": code, "message": "details here",
                                     "retryable": cls.retryable}


def test_error_codes_are_unique_and_unknown_errors_hide_text() -> None:
    assert len(ERROR_CLASSES) == len({c.code for c in ERROR_CLASSES.values()})
    info = error_info(ValueError("contents of the secret page"))
    assert info["code"] == "internal_error" and "secret" not in info["message"]
    assert str(PdfEncrypted("need it")) == "pdf_encrypted: need it"
    assert OcrError().message == "internal error"


# --- the pipeline in-process, with a fake engine ------------------------------------

def test_run_document_pages_and_progress() -> None:
    seen: list[tuple[int, int]] = []
    data = corpus("edge_multiframe_g4.tiff").read_bytes()
    result = run_document_json(data, JobRequest(source="blob", pages="2-3"), FakeEngine(0),
                          settings(), progress=lambda d, t: seen.append((d, t)))
    assert [p["number"] for p in result["pages"]] == [2, 3]
    assert result["page_count"] == 3 and result["format"] == "tiff"
    assert seen == [(1, 2), (2, 2)]
    assert all(p["source"] == "ocr" and p["text"].startswith("fake ") for p in result["pages"])
    assert result["text"] == "\f".join(p["text"] for p in result["pages"])


def test_run_document_text_layer_pdf() -> None:
    data = corpus("dig_crazyones.pdf").read_bytes()
    result = run_document_json(data, JobRequest(source="blob"), FakeEngine(0), settings())
    assert result["pages"][0]["source"] == "text-layer"
    assert "crazy ones" in result["text"]


def test_run_document_reports_text_layer_pages_in_one_progress_step() -> None:
    seen: list[tuple[int, int]] = []
    data = corpus("dig_multicolumn_3p.pdf").read_bytes()
    result = run_document_json(data, JobRequest(source="blob"), FakeEngine(0), settings(),
                          progress=lambda d, t: seen.append((d, t)))
    assert [p["source"] for p in result["pages"]] == ["text-layer"] * 3
    assert seen == [(3, 3)]


def test_run_document_encrypted_pdf() -> None:
    data = corpus("edge_encrypted_pw_openpassword.pdf").read_bytes()
    with pytest.raises(PdfEncrypted):
        run_document_json(data, JobRequest(source="blob"), FakeEngine(0), settings())
    with pytest.raises(PdfEncrypted):
        run_document_json(data, JobRequest(source="blob", password="wrong"), FakeEngine(0),
                     settings())
    result = run_document_json(data, JobRequest(source="blob", password="openpassword"),
                          FakeEngine(0), settings())
    assert result["pages"]


def test_png_in_memory_roundtrip() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (30, 20), "white").save(buffer, "PNG")
    result = run_document_json(buffer.getvalue(), JobRequest(source="blob"), FakeEngine(0),
                          settings(OCR_SKIP_BLANK_PAGES="0"))
    assert result["pages"][0]["text"] == "fake 30x20 mean=255.0"


# --- engine registry and release in a pool child (in-process) -----------------------

def _model_settings(tmp_path: Path) -> Settings:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    return settings(OCR_ENGINE="fake-model", OCR_MODEL_DIR=str(tmp_path), OCR_MODEL="m",
                    OCR_ENGINE_PLUGINS="fake-model=tests.fake_engines:FakeModelEngine")


def test_registry_reports_model_entries_around_loads(tmp_path: Path) -> None:
    seen: list[tuple[dict[str, str], list[str]]] = []
    registry = ResidentEngines(settings=_model_settings(tmp_path), primary="fake-model",
                              on_load=lambda r: seen.append((r.model_entries(),
                                                             list(r.engines))))
    registry.get()
    # registered while loading (before the engine exists), and after
    assert seen == [({"fake-model": "m"}, []), ({"fake-model": "m"}, ["fake-model"])]
    assert registry.take_used_models() == {"m"} and registry.take_used_models() == set()
    assert registry.unload() == ["fake-model"] and registry.model_entries() == {}


def test_failed_load_is_deregistered(tmp_path: Path) -> None:
    s = settings(OCR_ENGINE="fake-model", OCR_MODEL_DIR=str(tmp_path), OCR_MODEL="gone",
                 OCR_ENGINE_PLUGINS="fake-model=tests.fake_engines:FakeModelEngine")
    seen: list[dict[str, str]] = []
    registry = ResidentEngines(settings=s, primary="fake-model",
                              on_load=lambda r: seen.append(r.model_entries()))
    with pytest.raises(EngineUnavailable):
        registry.get()
    assert seen == [{"fake-model": "gone"}, {}]


def test_release_waits_for_the_running_task(tmp_path: Path) -> None:
    registry = ResidentEngines(settings=_model_settings(tmp_path), primary="fake-model")
    keeper = ChildKeeper(None, tmp_path, idle_seconds=0, heartbeat_seconds=30)
    keeper._engines = registry
    keeper.task_finished()  # serving, idle
    registry.get()
    keeper.task_started()
    keeper._on_signal(RELEASE_SIGNAL, None)  # remote control during a task: deferred
    assert registry.engines
    keeper.task_finished()
    assert not registry.engines
    registry.get()
    keeper.task_started()
    keeper._idle_asked = True
    keeper._on_signal(RELEASE_SIGNAL, None)  # idle request during a task: not idle
    keeper.task_finished()
    assert registry.engines


def test_release_signal_reaches_the_handler(tmp_path: Path) -> None:
    registry = ResidentEngines(settings=_model_settings(tmp_path), primary="fake-model")
    keeper = ChildKeeper(None, tmp_path, idle_seconds=0, heartbeat_seconds=30)
    previous = signal.getsignal(RELEASE_SIGNAL)
    try:
        keeper.install()
        keeper._engines = registry
        keeper.task_finished()
        registry.get()
        signal_children([os.getpid()])
        # the handler runs in this (main) thread at the next bytecode
        eventually(lambda: not registry.engines, 10, "the release signal's handler",
                   interval=0.01)
    finally:
        signal.signal(RELEASE_SIGNAL, previous)


def test_tesseract_words_of_a_page_without_text() -> None:
    """Word boxes asked of an empty page (pdf, json, hOCR, ALTO outputs): none, no error."""
    from tasks.engines import RecognizeOptions
    from tasks.engines.tesseract import TesseractEngine

    engine = TesseractEngine.load(Settings.from_env({}))
    try:
        result = engine.recognize(Image.new("L", (200, 120), 235),
                                  RecognizeOptions(want_words=True))
    finally:
        engine.close()
    assert result.words == () and result.text.strip() == ""
