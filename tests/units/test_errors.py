"""Errors: codes, safe messages, and the JSON round trip through Celery's backend."""

from __future__ import annotations

import json

from celery import Celery
from celery.backends.base import Backend

from tasks.error_codes import ERROR_CLASSES, error_info
from tasks.errors import OcrError, PageQuotaExceeded, PdfEncrypted


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


def test_a_page_quota_refusal_keeps_its_figures_through_celery() -> None:
    backend = Backend(app=Celery(set_as_current=False), serializer="json")
    quota = {"period": "day", "cap": 3, "used": 1, "pages": 5,
             "resets": "2026-01-02T00:00:00Z", "retry_after": 60}
    stored = backend.prepare_exception(PageQuotaExceeded("over", quota=quota), "json")
    again = backend.exception_to_python(json.loads(json.dumps(stored)))
    assert error_info(again) == {"code": "page_quota_exceeded", "message": "over",
                                 "retryable": False, **quota}
    assert str(again) == "page_quota_exceeded: over"
