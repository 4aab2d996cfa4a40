"""A fanned-out document's meta as stored: what the previous release reads of it.

Pure: records alone, no Redis, no Celery worker.
"""

from __future__ import annotations

import json
from dataclasses import replace

from tasks.records.jobs import DocumentMeta, Job
from tasks.records.request import JobRequest
from tasks.records.results import DocumentResult, PageRecord


def meta_of(pages: int, **request: object) -> DocumentMeta:
    """A scanned PDF of `pages` pages fanned out, its text-layer pages in its base result."""
    base = DocumentResult(filename="doc.pdf", status=None, format="pdf", pages=[
        PageRecord(n, f"text layer of page {n} " * 20, source="text-layer")
        for n in range(1, pages + 1, 2)])
    ocr = list(range(2, pages + 1, 2))
    return DocumentMeta(Job(
        "job-1", JobRequest("blob", blob="in-1", filename="doc.pdf", lang="eng+vie",
                            output="hocr", mode="ocr", deadline=1.8e9, client="billing",
                            callback_url="https://cb.example/x", escalate="vlm-api",
                            escalate_below=0.5, **request),  # type: ignore[arg-type]
        "tesseract", 1.7e9, url_prefixes=("https://in.example/",), model="5.3",
        cache_key="cache-key"), pages, ocr, [f"t{n}" for n in ocr], "ocr-tesseract", base)


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
    meta = replace(meta, job=replace(meta.job, request=replace(
        meta.request, escalate=None, escalate_below=None)))
    assert meta.escalation_json() is None
    assert DocumentMeta.from_json(meta.to_json()) == meta
    assert meta.to_json() == meta_of(6).to_json()  # the same meta, escalating or not


def test_an_encrypted_url_inputs_sealed_name_is_kept_in_its_object() -> None:
    """Its pages open their host's copy with the sealed password: the meta names it.

    Not in the request the previous release reads (it refuses a field it does not
    know), but in the URL input's object, which it reads by key.
    """
    url = "https://in.example/locked.pdf"
    meta = meta_of(4)
    meta = replace(meta, input_object={"etag": "e1"}, job=replace(meta.job, request=replace(
        meta.request, url=url, blob=None, sealed="a" * 32)))
    stored = json.loads(meta.to_json())
    assert "sealed" not in stored["request"]
    assert stored["input_object"] == {"etag": "e1", "sealed": "a" * 32}
    back = DocumentMeta.from_json(meta.to_json(), meta.escalation_json())
    assert back.request.sealed == "a" * 32 and back.input_object == {"etag": "e1"}
    assert back.describe([2]).request.sealed == "a" * 32  # its page tasks' descriptor
    # A blob input's pages open the decrypted copy: its meta names nothing sealed.
    blob = meta_of(4, sealed="b" * 32)
    assert "sealed" not in blob.to_json()
    assert DocumentMeta.from_json(blob.to_json()).request.sealed is None
