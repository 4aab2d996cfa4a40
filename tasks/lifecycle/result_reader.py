"""The one reader of a job's stored result: what every reader gets, made in one place.

The HTTP API, `submit.py`, `OcrClient`, batches (a `result_url`, a local batch's
target) and the console read a result through `Reading`, made from the job's stored
state by `stored_public`. Unless the original is asked,
the result carries the corrections of the client that sent the job
(tasks/lifecycle/page_views.py: by the document's sha256, so a later job of the same
document by the same client carries them, whichever door sent it). Each format is
drawn here: the text, the Markdown, the JSON without storage keys, and the stored
hOCR, ALTO or searchable PDF with the corrected lines written in (`document`).

A page without text in a format that cannot give it (a Markdown page the engine gave
no Markdown for) is named in the result's `warnings` (`markdown_missing`), never an
empty success.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import redis

from tasks.error_codes import error_info
from tasks.errors import DeadlineExceeded, OcrError
from tasks.lifecycle.page_views import PageChanges, corrected_result
from tasks.records.formats import STORED_FORMATS
from tasks.records.results import PageRecord
from tasks.records.status import CeleryState, JobStatus
from tasks.state.corrections import Corrections
from tasks.state.job_state import expired_before_start
from tasks.state.keys import OUTPUT_PREFIX
from tasks.state.stores import OutputStore


@dataclass(frozen=True)
class Reading:
    """A stored result as a reader gets it, and the corrected lines by page."""

    result: dict[str, Any]
    changes: PageChanges

    @classmethod
    def of(cls, result: Mapping[str, Any], store: redis.Redis | None,
           original: bool = False) -> Reading:
        """`result` with the corrections of its client (none: `original`, or no store)."""
        client = str(result.get("client") or "")
        if original or store is None or not client:
            return cls(dict(result), {})
        corrected, changes = corrected_result(result, Corrections(store, client))
        return cls(corrected, changes)

    def content(self, fmt: str, stored: bytes | None) -> bytes:
        """What a reader gets for `fmt`: text or Markdown, the JSON, or the document.

        `stored`: the stored document of `fmt` (`stored_document`), for hOCR, ALTO
        and PDF, which come back with the corrected lines written in (`document`).
        """
        if fmt in ("text", "markdown"):
            return str(self.result.get("text", "")).encode()
        if fmt == "json":
            return json.dumps(without_keys(self.result)).encode()
        return b"" if stored is None else self.document(fmt, stored)

    def document(self, fmt: str, stored: bytes) -> bytes:
        """A stored hOCR, ALTO or PDF with the corrected lines (work that grows with it)."""
        if not self.changes:
            return stored
        pages = {int(p.get("number", 0)): p for p in self.result.get("pages") or []}
        if fmt in ("hocr", "alto"):
            # on a correction's first use: the layout writer
            from tasks.pipeline.corrected_layouts import corrected_layout
            return corrected_layout(fmt, stored, pages, self.changes)
        if fmt == "pdf":
            # PyMuPDF only for a corrected PDF: loaded on this first use.
            from tasks.pipeline.pdf import relayered_pdf
            return relayered_pdf(stored, [PageRecord.from_json(pages[n])
                                          for n in self.changes])
        return stored


def stored_public(job_id: str, meta: Mapping[str, Any], control: Mapping[str, str],
                  cancelled: Callable[[], dict[str, Any] | None]) -> dict[str, Any]:
    """A job's public result from its stored state (Celery's `meta`, decoded).

    A success's result as stored; else the result a cancel kept (`cancelled`, read
    only then); a job Celery revoked is FAILURE `deadline_exceeded` where its control
    hash (`control`) says it expired before it started (`expired_before_start`: the
    rule status reads follow), else CANCELLED; any other ending is its error.
    """
    state, stored = meta.get("status"), meta.get("result")
    if state == CeleryState.SUCCESS:
        return dict(stored or {})
    kept = cancelled()
    if kept is not None:
        return kept
    if state == CeleryState.REVOKED:
        if expired_before_start(control.get("cancelled"), control.get("deadline")):
            return {"id": job_id, "status": JobStatus.FAILURE.value,
                    "filename": control.get("filename", ""),
                    "error": DeadlineExceeded("the job's deadline passed before it "
                                              "started").to_dict()}
        return {"id": job_id, "status": JobStatus.CANCELLED.value, "pages": [], "text": ""}
    exc = stored if isinstance(stored, BaseException) else OcrError()
    return {"id": job_id, "status": JobStatus.FAILURE.value, "error": error_info(exc)}


def without_keys(result: Mapping[str, Any]) -> dict[str, Any]:
    """A result without storage keys: no input blob, no stored document's key."""
    out = {k: v for k, v in result.items() if k != "input_blob"}
    for fmt in STORED_FORMATS:
        if isinstance(out.get(fmt), dict):
            out[fmt] = {k: v for k, v in out[fmt].items() if k != "key"}
    return out


def stored_document(result: Mapping[str, Any], fmt: str, outputs: OutputStore
                    ) -> bytes | None:
    """The stored document of `fmt` (None: none, or it expired): output key or inline."""
    value = result.get(fmt)
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, dict) and str(value.get("key", "")).startswith(OUTPUT_PREFIX):
        return outputs.get(str(value["key"]))
    return None


def stored_kind(result: Mapping[str, Any]) -> str | None:
    """The kind of the stored document a result names (pdf, hocr, alto), else None."""
    return next((k for k in STORED_FORMATS if isinstance(result.get(k), dict)), None)
