"""The pipeline in process with a fake engine: pages, progress, text layers, encryption."""

from __future__ import annotations

import io
from typing import Any

import pytest
from PIL import Image

from tasks.errors import PdfEncrypted
from tasks.pipeline.documents import run_document
from tasks.records.request import JobRequest
from tasks.settings import Settings
from tests.fake_engines import FakeEngine
from tests.harness import corpus


def run_document_json(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """`run_document` as the JSON other services read."""
    return run_document(*args, **kwargs).to_json()


def settings(**env: str) -> Settings:
    return Settings.from_env(env)


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
