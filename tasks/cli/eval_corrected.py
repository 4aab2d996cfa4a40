"""`submit.py eval --corrected CLIENT`: engines scored on the pages a person corrected.

Runs in submit.py (a user's machine). The pages client CLIENT corrected in the console
or through `PUT /v1/jobs/{id}/pages/{n}/lines/{line}` (tasks/state/corrections.py:
`corrected_pages`) are ground truth: each page's full text with every correction. The
engine that read a page is scored on its own reading, from its job's stored result
(corrections are applied when a result is shown, never stored into it); each engine of
`--engine a,b` reads the page again from its preview (the image that engine saw) as a
new job, and is scored the same way. A page whose job's result or preview has expired
is left out, and a line on stderr says how many were.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

from tasks.cli.output import PROG
from tasks.client import OcrClient
from tasks.errors import OcrError
from tasks.lifecycle.eval_sets import EvalDocument
from tasks.records.status import JobStatus
from tasks.state.connection import connect
from tasks.state.corrections import CorrectedPage, corrected_pages
from tasks.state.previews import PreviewStore

__all__ = ["CorrectedRead", "corrected_reads"]


class CorrectedRead:
    """A corrected page as an evaluation document, and the engine's own text of it."""

    def __init__(self, page: CorrectedPage, filename: str, engine_text: str,
                 preview: bytes | None) -> None:
        self.page = page
        self.document = EvalDocument(f"{filename} p{page.number}", f"job {page.job_id}",
                                     [page.text])
        self.engine = page.engine or "unknown"
        self.engine_text = engine_text
        self.preview = preview


def corrected_reads(client: OcrClient, owner: str) -> Iterator[CorrectedRead]:
    """Each page `owner` corrected whose job's result is still kept, in page order."""
    redis_client = connect(client.settings.redis_target)
    previews = PreviewStore(redis_client, client.settings.result_ttl)
    expired = 0
    for page in corrected_pages(redis_client, owner):
        result = _result(client, page.job_id)
        text = _page_text(result, page.number)
        if text is None:
            expired += 1
            continue
        yield CorrectedRead(page, str(result.get("filename") or page.job_id), text,
                            previews.get(page.job_id, page.number))
    if expired:
        print(f"{PROG}: {expired} corrected pages left out: their jobs' results expired",
              file=sys.stderr)


def _result(client: OcrClient, job_id: str) -> dict[str, Any]:
    try:
        return client.result(job_id, original=True)  # the engine's own reading
    except OcrError:  # expired, or never finished
        return {}


def _page_text(result: dict[str, Any], number: int) -> str | None:
    """The engine's own text of page `number` in a stored result; None when not there."""
    if JobStatus.of(result.get("status")) not in (JobStatus.SUCCESS, JobStatus.PARTIAL):
        return None
    for shown in result.get("pages") or []:
        if shown.get("number") == number:
            return str(shown.get("text") or "")
    return None
