"""Requests and inputs: request validation, cache options, inline data, `path` roots."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from tasks.admission import read_input as read_client_input
from tasks.errors import (
    BadRequest,
    InputNotFound,
    InputTooLarge,
    PathNotAllowed,
    UnsupportedFormat,
)
from tasks.lifecycle.inputs import decode_request, read_input, read_path
from tasks.records.request import JobRequest
from tasks.settings import Settings


def settings(**env: str) -> Settings:
    return Settings.from_env(env)


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


def test_a_client_door_refuses_a_folder_with_a_code(tmp_path: Path) -> None:
    """`OcrClient.submit(FOLDER)` reads no folder: `unsupported_format`, no OSError."""
    with pytest.raises(UnsupportedFormat, match="is a folder, not a file"):
        read_client_input(tmp_path, settings())
    with pytest.raises(InputNotFound):
        read_client_input(tmp_path / "missing.png", settings())
