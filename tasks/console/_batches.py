"""The console's batch page: a batch's progress and its manifest as a table.

Runs in the `api` process. The batch is read through the API's own batch service
(tasks/api/_batches.py: another client's batch is 404), its manifest lines from the
batch's target (each document's latest line in the steps' parts, sorted by name as in
`manifest.jsonl`: tasks/lifecycle/batch_manifest.py), at most `MOST_LINES` of them
from the parts' first `MOST_READ` lines, and the documents still in flight from the
batch's record. A page costs the same for a batch of any size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from tasks.api.services import BatchService
from tasks.console._web import PREFIX, render, service_of, signed_in
from tasks.errors import OcrError
from tasks.lifecycle.batch_manifest import first_latest_lines
from tasks.lifecycle.fetcher import Fetcher
from tasks.records.status import WaitStatus

router = APIRouter(prefix=PREFIX, include_in_schema=False)
MOST_LINES = 2000  # manifest lines a batch page shows
MOST_READ = 5 * MOST_LINES  # the parts' lines it reads, a document's retries included


@dataclass(frozen=True)
class DocumentRow:
    name: str
    status: str
    code: str
    pages: int | None
    pages_failed: int | None
    job_id: str
    engine: str


def _row(line: dict[str, Any]) -> DocumentRow:
    def number(key: str) -> int | None:
        value = line.get(key)
        return value if isinstance(value, int) else None

    return DocumentRow(str(line.get("name") or line.get("source") or ""),
                       str(line.get("status") or ""), str(line.get("error") or ""),
                       number("pages"), number("pages_failed"), str(line.get("job_id") or ""),
                       str(line.get("engine") or ""))


def batch_rows(batches: BatchService, target: str, flight: dict[str, dict[str, Any]]
               ) -> tuple[list[DocumentRow], str]:
    """The documents in flight, then the manifest's lines; a note when it could not be read."""
    rows = [DocumentRow(str(doc.get("name") or doc.get("url") or ""), WaitStatus.RUNNING, "", None,
                        None, job_id, "") for job_id, doc in flight.items()]
    try:
        lines, more = first_latest_lines(
            Fetcher.for_client(batches.service.settings, None).target(target), MOST_READ)
    except OcrError as exc:
        return rows, f"the manifest could not be read ({exc.code}: {exc.message})"
    rows += [_row(line) for line in lines[:MOST_LINES]]
    if more or len(lines) > MOST_LINES:
        return rows, (f"the first {min(len(lines), MOST_LINES)} manifest lines are shown, "
                      f"of the first {MOST_READ} read")
    return rows, ""


@router.get("/batches/{batch_id}", response_class=HTMLResponse)
def batch(request: Request, batch_id: str,
          status: Annotated[str, Query(max_length=20)] = "",
          code: Annotated[str, Query(max_length=80)] = "") -> HTMLResponse:
    """A batch's progress and its documents, filtered by status or error code."""
    session = signed_in(request)
    batches = BatchService(service_of(request))
    try:
        info = batches.info(session.client, batch_id)
    except OcrError:  # NotFound: not this client's, or none
        return render(request, "missing.html", status_code=404, session=session,
                      what="batch")
    rows, note = batch_rows(batches, info.result_url, batches.store.flight(batch_id))
    statuses = sorted({row.status for row in rows if row.status})
    codes = sorted({row.code for row in rows if row.code})
    shown = [row for row in rows if (not status or row.status == status)
             and (not code or row.code == code)]
    total = info.documents.total
    ended = info.documents.done + info.documents.failed + info.documents.skipped
    percent = round(100 * ended / total) if total else None
    return render(request, "batch.html", session=session, batch=info, rows=shown,
                  count=len(rows), note=note, statuses=statuses, codes=codes,
                  status=status, code=code, percent=percent)
