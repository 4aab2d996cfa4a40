"""A finished job's result in one format, as the HTTP API answers it.

Runs in the `api` process. The media type and file name of each format come from the
table of formats (tasks/records/formats.py); a produced file (searchable PDF, hOCR,
ALTO) is read from its output key or from the result itself. Clients never see storage
keys: `public_result` drops the input blob and output keys and links each stored file.
A client's corrected lines (tasks/lifecycle/page_views.py) are in the result given
here already; the stored hOCR, ALTO and PDF take them as they are answered (the PDF's
text layer written again by PyMuPDF, which the process loads on that first use).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from tasks.api._errors import FormatUnavailable, JobUnsuccessful
from tasks.api._schemas import Links
from tasks.lifecycle.page_views import PageChanges
from tasks.records.formats import FORMATS, STORED_FORMATS
from tasks.records.results import PageRecord
from tasks.records.status import JobStatus
from tasks.state.keys import OUTPUT_PREFIX
from tasks.state.stores import OutputStore

MEDIA_TYPES = {name: fmt.media_type for name, fmt in FORMATS.items()}


@dataclass(frozen=True)
class ResultBody:
    """An answer's body, and how a stored document takes the client's corrections.

    A stored hOCR, ALTO or PDF that corrections change comes with `correct`, which
    makes the corrected document from `content`: work that grows with the document,
    which the route runs as heavy work (tasks/api/_heavy.py).
    """

    content: bytes
    media_type: str
    filename: str
    correct: Callable[[bytes], bytes] | None = None


def links(job_id: str) -> Links:
    base = f"/v1/jobs/{job_id}"
    return Links(self=base, result=f"{base}/result", events=f"{base}/events")


def public_result(result: dict[str, Any]) -> dict[str, Any]:
    """A result as API clients see it: no storage keys (inputs and outputs stay private)."""
    out = {k: v for k, v in result.items() if k != "input_blob"}
    for fmt in STORED_FORMATS:
        if isinstance(out.get(fmt), dict):
            out[fmt] = {k: v for k, v in out[fmt].items() if k != "key"}
            out[fmt]["href"] = f"/v1/jobs/{result.get('id', '')}/result?format={fmt}"
    return out


def result_body(result: dict[str, Any], status: str, job_output: str, fmt: str,
                outputs: OutputStore, changes: PageChanges | None = None) -> ResultBody:
    """The body of `GET /v1/jobs/ID/result?format=fmt` for a job that has ended.

    `status`: how it ended; `job_output`: the output it was sent with; `changes`: the
    client's corrected lines (tasks/lifecycle/page_views.py), which `result` carries
    already and the stored hOCR, ALTO and PDF documents take by the body's `correct`.
    """
    name = str(result.get("filename") or result.get("id"))
    answer = FORMATS[fmt]
    if fmt == "json":
        return ResultBody(json.dumps(public_result(result)).encode(), answer.media_type,
                          f"{name}{answer.suffix}")
    if status not in (JobStatus.SUCCESS, JobStatus.PARTIAL):
        raise JobUnsuccessful(dict(result.get("error") or {
            "code": "cancelled", "message": "the job was cancelled", "retryable": False}))
    output = str(result.get("output") or job_output)
    if fmt in ("text", "markdown"):
        if fmt == "markdown" and output != "markdown":
            raise FormatUnavailable(f"the job's output is {output}; send it with "
                                    "output=markdown")
        return ResultBody(str(result.get("text", "")).encode(), answer.media_type,
                          f"{name}{answer.suffix}")
    content = _document(result, fmt, outputs)
    if content is None:
        raise FormatUnavailable(f"the job's output is {output} and has no {fmt}; send it "
                                f"with output={fmt}" if output != fmt else
                                f"the job's {fmt} has expired")
    correct = partial(_corrected_document, fmt, result=result, changes=changes) \
        if changes else None
    return ResultBody(content, answer.media_type, f"{name}{answer.suffix}", correct)


def _corrected_document(fmt: str, content: bytes, *, result: dict[str, Any],
                        changes: PageChanges) -> bytes:
    """A stored hOCR, ALTO or PDF with the corrected lines of `result`'s pages."""
    from tasks.pipeline.corrected_layouts import corrected_layout  # on a correction's first use
    from tasks.pipeline.layouts import LAYOUT_OUTPUTS

    pages = {int(p.get("number", 0)): p for p in result.get("pages") or []}
    if fmt in LAYOUT_OUTPUTS:
        return corrected_layout(fmt, content, pages, changes)
    if fmt == "pdf":
        # PyMuPDF only for a corrected PDF: the API process loads it on this first use.
        from tasks.pipeline.pdf import relayered_pdf
        return relayered_pdf(content, [PageRecord.from_json(pages[n]) for n in changes])
    return content


def _document(result: dict[str, Any], fmt: str, outputs: OutputStore) -> bytes | None:
    """A produced file: stored under an output key, or inline in the result."""
    value = result.get(fmt)
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, dict) and str(value.get("key", "")).startswith(OUTPUT_PREFIX):
        return outputs.get(str(value["key"]))
    return None
