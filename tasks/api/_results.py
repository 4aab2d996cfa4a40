"""A finished job's result in one format, as the HTTP API answers it.

Runs in the `api` process. The media type and file name of each format come from the
table of formats (tasks/records/formats.py); a produced file (searchable PDF, hOCR,
ALTO) is read from its output key or from the result itself. Clients never see storage
keys: `public_result` drops the input blob and output keys and links each stored file.
Each format is drawn by the one reader (tasks/lifecycle/result_reader.py), the
client's corrected lines in it; the stored hOCR, ALTO and PDF take them as heavy work.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from tasks.api._errors import FormatUnavailable, JobUnsuccessful
from tasks.api._schemas import Links
from tasks.lifecycle.result_reader import Reading, stored_document, without_keys
from tasks.records.formats import FORMATS, STORED_FORMATS
from tasks.records.status import JobStatus
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
    """A result as API clients see it: no storage keys, each stored file linked."""
    out = without_keys(result)
    for fmt in STORED_FORMATS:
        if isinstance(out.get(fmt), dict):
            out[fmt]["href"] = f"/v1/jobs/{result.get('id', '')}/result?format={fmt}"
    return out


def result_body(reading: Reading, status: str, job_output: str, fmt: str,
                outputs: OutputStore) -> ResultBody:
    """The body of `GET /v1/jobs/ID/result?format=fmt` for a job that has ended.

    `reading`: its result as read (tasks/lifecycle/result_reader.py); `status`: how it
    ended; `job_output`: the output it was sent with. A stored hOCR, ALTO or PDF
    takes the reading's corrected lines by the body's `correct`.
    """
    result = reading.result
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
        return ResultBody(reading.content(fmt, None), answer.media_type,
                          f"{name}{answer.suffix}")
    content = stored_document(result, fmt, outputs)
    if content is None:
        raise FormatUnavailable(f"the job's output is {output} and has no {fmt}; send it "
                                f"with output={fmt}" if output != fmt else
                                f"the job's {fmt} has expired")
    correct = partial(reading.document, fmt) if reading.changes else None
    return ResultBody(content, answer.media_type, f"{name}{answer.suffix}", correct)
