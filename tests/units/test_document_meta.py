"""A fanned-out document's meta as stored: what the previous release reads of it.

Pure: records alone, no Redis, no Celery worker.
"""

from __future__ import annotations

import json
from dataclasses import replace

from tasks.records.jobs import DocumentMeta
from tasks.records.request import JobRequest
from tasks.records.results import DocumentResult, PageRecord


def meta_of(pages: int, **request: object) -> DocumentMeta:
    """A scanned PDF of `pages` pages fanned out, its text-layer pages in its base result."""
    base = DocumentResult(filename="doc.pdf", status=None, format="pdf", pages=[
        PageRecord(n, f"text layer of page {n} " * 20, source="text-layer")
        for n in range(1, pages + 1, 2)])
    ocr = list(range(2, pages + 1, 2))
    return DocumentMeta(
        "job-1", JobRequest("blob", blob="in-1", filename="doc.pdf", lang="eng+vie",
                            output="hocr", mode="ocr", deadline=1.8e9, client="billing",
                            callback_url="https://cb.example/x", escalate="vlm-api",
                            escalate_below=0.5, **request),  # type: ignore[arg-type]
        "tesseract", "5.3", "cache-key", 1.7e9, pages, ocr, [f"t{n}" for n in ocr],
        "ocr-tesseract", base, url_prefixes=["https://in.example/"])


def test_a_meta_names_no_field_the_previous_release_lacks() -> None:
    """The previous release reads this one's meta: its escalation is kept apart.

    The request's `escalate` and `escalate_below` and the meta's `escalated` are in
    `escalation_json` (`ocr:doc:<id>:escalation`), put back by `from_json`.
    """
    for meta in (meta_of(6), replace(meta_of(6), escalated=[2])):
        stored = json.loads(meta.to_json())
        assert "escalated" not in stored
        assert not {"escalate", "escalate_below"} & set(stored["request"])
        assert DocumentMeta.from_json(meta.to_json(), meta.escalation_json()) == meta
    escalation = replace(meta_of(6), escalated=[2]).escalation_json()
    assert json.loads(escalation or "") == {"escalate": "vlm-api", "escalate_below": 0.5,
                                            "escalated": [2]}


def test_a_meta_without_escalation_keeps_none_apart() -> None:
    meta = meta_of(6)
    meta = replace(meta, request=replace(meta.request, escalate=None, escalate_below=None))
    assert meta.escalation_json() is None
    assert DocumentMeta.from_json(meta.to_json()) == meta
    assert meta.to_json() == meta_of(6).to_json()  # the same meta, escalating or not
