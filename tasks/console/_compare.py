"""Compare: a page read again by another engine, and both readings side by side.

Runs in the `api` process. "Read this page again" sends the page's preview (the image
the first engine read, tasks/state/previews.py) as a new job of the same client through
the API's own submit, so the gate (tasks/admission.py) admits it as any job: its
engine, the client's quotas and page caps. The comparison pairs the two readings' lines
(difflib over the lines, then over each changed pair's words) into rows of segments
that the template marks as inserted or deleted text; no markup is built here.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tasks.admission import live_engines
from tasks.api.services import JobOptions, JobService
from tasks.api.tokens import ApiClient
from tasks.errors import BadRequest
from tasks.lifecycle import page_views
from tasks.state.corrections import Corrections


def offered_engines(service: JobService) -> tuple[str, ...]:
    """The engines "Read again with" offers: those a live OCR worker runs now.

    The gate's own reading of the workers' presence (`live_engines`); an engine no
    live worker runs would leave the new job queued (`engine_unavailable` once others
    are live).
    """
    return tuple(live_engines(service.client.live_queues()))


@dataclass(frozen=True)
class Segment:
    kind: str  # "same", "del" (only in the first reading) or "ins" (only in the second)
    text: str


@dataclass(frozen=True)
class Row:
    left: list[Segment]
    right: list[Segment]
    same: bool


def _words(left: str, right: str) -> tuple[list[Segment], list[Segment]]:
    a, b = left.split(), right.split()
    lefts: list[Segment] = []
    rights: list[Segment] = []
    for op, i0, i1, j0, j1 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op == "equal":
            lefts.append(Segment("same", " ".join(a[i0:i1])))
            rights.append(Segment("same", " ".join(b[j0:j1])))
            continue
        if i1 > i0:
            lefts.append(Segment("del", " ".join(a[i0:i1])))
        if j1 > j0:
            rights.append(Segment("ins", " ".join(b[j0:j1])))
    return lefts, rights


def compare(left: Sequence[str], right: Sequence[str]) -> list[Row]:
    """Rows of the two readings' lines: equal lines as they are, changed ones word by word."""
    rows: list[Row] = []
    matcher = difflib.SequenceMatcher(None, list(left), list(right), autojunk=False)
    for op, i0, i1, j0, j1 in matcher.get_opcodes():
        if op == "equal":
            rows += [Row([Segment("same", text)], [Segment("same", text)], True)
                     for text in left[i0:i1]]
            continue
        for k in range(max(i1 - i0, j1 - j0)):
            a = left[i0 + k] if i0 + k < i1 else ""
            b = right[j0 + k] if j0 + k < j1 else ""
            lefts, rights = _words(a, b)
            rows.append(Row(lefts, rights, False))
    return rows


def page_of(service: JobService, caller: ApiClient, job_id: str,
            number: int) -> dict[str, Any]:
    """Page `number` of the client's own finished job, its corrections applied.

    NotFound (another client's job, or none), NotFinished, or `page_views.Missing`.
    """
    result = service.finished(caller, job_id)[2]
    return page_views.page_view(result, number, Corrections(service.redis, caller.name))


def read_again(service: JobService, caller: ApiClient, job_id: str, number: int,
               engine: str, filename: str) -> str:
    """Send page `number`'s image as a new job read by `engine`; the new job's id."""
    offered = offered_engines(service)
    if engine not in offered:
        raise BadRequest(f"choose an engine among {', '.join(offered)}; no live worker "
                         f"runs {engine!r}" if offered else "no live worker reads pages now")
    page_of(service, caller, job_id, number)  # the client's own job, with that page
    image = service.previews.get(job_id, number)
    if image is None:
        raise page_views.Missing(f"page {number} has no image to read again")
    name = f"{filename or job_id}, page {number}"[:200]
    upload = service.new_upload()
    try:
        service.check_room(caller, len(image))
        service.append(caller, upload, image)
    except BaseException:
        service.discard(caller, upload)
        raise
    options = JobOptions.model_validate({"engine": engine, "filename": name})
    return service.submit(caller, options, upload, name).id
