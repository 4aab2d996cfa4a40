"""Compare: a page read again by another engine, and both readings side by side.

Runs in the `api` process. "Read this page again" sends the page's preview (the image
the first engine read, tasks/state/previews.py) as a new job of the same client through
the API's own submit, so the gate (tasks/admission.py) admits it as any job: its
engine, the client's quotas and page caps. The comparison pairs the two readings' lines
(difflib over the lines, then over each changed pair's words) into rows of segments
that the template marks as inserted or deleted text; no markup is built here.

difflib's matcher costs up to the product of the two sides' lengths, so a compare is
bounded (`Bounds`): each reading's lines and characters before it starts, and its time
by a deadline that the matcher checks before each of its steps. It runs as the API's
heavy work (tasks/api/_heavy.py): a few at once, each in a worker thread.
"""

from __future__ import annotations

import difflib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from tasks.admission import live_engines
from tasks.api.services import (
    FINAL_STATUSES,
    CompareTooLarge,
    HeavyWork,
    JobOptions,
    JobService,
    NotFinished,
    ended_result,
)
from tasks.api.tokens import ApiClient
from tasks.console._web import service_of
from tasks.errors import BadRequest
from tasks.lifecycle import page_views
from tasks.records.status import JobStatus
from tasks.settings import Settings
from tasks.state.corrections import Corrections

# A changed pair of lines longer than this (the product of their word counts) is shown
# whole, deleted and inserted, without a word-by-word diff.
MAX_WORD_PAIRS = 250_000


def offered_engines(service: JobService) -> tuple[str, ...]:
    """The engines "Read again with" offers: the live ones, then those from zero.

    Those a live OCR worker runs now, then those whose pool scales from zero
    (OCR_ENGINES_FROM_ZERO), which the gate admits. The gate's own reading of the
    workers' presence (`live_engines`); another engine no live worker runs would leave
    the new job queued (`engine_unavailable` once others are live).
    """
    return tuple(dict.fromkeys([*live_engines(service.client.live_queues()),
                                *service.settings.engines_from_zero]))


@dataclass(frozen=True)
class Segment:
    kind: str  # "same", "del" (only in the first reading) or "ins" (only in the second)
    text: str


@dataclass(frozen=True)
class Row:
    left: list[Segment]
    right: list[Segment]
    same: bool


class _Matcher(difflib.SequenceMatcher[str]):
    """difflib's matcher that gives up at `deadline` (time.monotonic()).

    The matcher's cost is in its search for the longest match, once for each block it
    finds: the deadline is checked before each search.
    """

    def __init__(self, a: Sequence[str], b: Sequence[str], deadline: float) -> None:
        self._deadline = deadline
        super().__init__(None, a, b, autojunk=False)

    def find_longest_match(self, alo: int = 0, ahi: int | None = None, blo: int = 0,
                           bhi: int | None = None) -> difflib.Match:
        if time.monotonic() > self._deadline:
            raise CompareTooLarge("the compare took longer than OCR_COMPARE_TIMEOUT")
        return super().find_longest_match(alo, ahi, blo, bhi)


def _words(left: str, right: str, deadline: float) -> tuple[list[Segment], list[Segment]]:
    a, b = left.split(), right.split()
    if len(a) * len(b) > MAX_WORD_PAIRS:
        return ([Segment("del", left)] if a else []), ([Segment("ins", right)] if b else [])
    lefts: list[Segment] = []
    rights: list[Segment] = []
    for op, i0, i1, j0, j1 in _Matcher(a, b, deadline).get_opcodes():
        if op == "equal":
            lefts.append(Segment("same", " ".join(a[i0:i1])))
            rights.append(Segment("same", " ".join(b[j0:j1])))
            continue
        if i1 > i0:
            lefts.append(Segment("del", " ".join(a[i0:i1])))
        if j1 > j0:
            rights.append(Segment("ins", " ".join(b[j0:j1])))
    return lefts, rights


def compare(left: Sequence[str], right: Sequence[str],
            deadline: float = math.inf) -> list[Row]:
    """Rows of the two readings' lines: equal lines as they are, changed ones word by word.

    CompareTooLarge once `deadline` (time.monotonic()) has passed.
    """
    rows: list[Row] = []
    matcher = _Matcher(list(left), list(right), deadline)
    for op, i0, i1, j0, j1 in matcher.get_opcodes():
        if op == "equal":
            rows += [Row([Segment("same", text)], [Segment("same", text)], True)
                     for text in left[i0:i1]]
            continue
        for k in range(max(i1 - i0, j1 - j0)):
            a = left[i0 + k] if i0 + k < i1 else ""
            b = right[j0 + k] if j0 + k < j1 else ""
            lefts, rights = _words(a, b, deadline)
            rows.append(Row(lefts, rights, False))
    return rows


@dataclass(frozen=True)
class Bounds:
    """What one compare may take (OCR_COMPARE_*)."""

    max_lines: int
    max_chars: int
    timeout: float

    @classmethod
    def of(cls, settings: Settings) -> Bounds:
        return cls(settings.compare_max_lines, settings.compare_max_chars,
                   settings.compare_timeout)

    def check(self, *readings: Sequence[str]) -> None:
        """CompareTooLarge when a reading has more lines or characters than allowed."""
        for reading in readings:
            if len(reading) > self.max_lines:
                raise CompareTooLarge(
                    f"a reading has {len(reading)} lines; a compare takes at most "
                    f"{self.max_lines} (OCR_COMPARE_MAX_LINES)")
            chars = sum(len(line) for line in reading)
            if chars > self.max_chars:
                raise CompareTooLarge(
                    f"a reading has {chars} characters; a compare takes at most "
                    f"{self.max_chars} (OCR_COMPARE_MAX_CHARS)")

    def compare(self, left: Sequence[str], right: Sequence[str]) -> list[Row]:
        """`compare` within these bounds; its time counts from now."""
        self.check(left, right)
        return compare(left, right, time.monotonic() + self.timeout)


async def compared_rows(bounds: Bounds, heavy: HeavyWork, client: str,
                        left: Sequence[str], right: Sequence[str]) -> list[Row]:
    """The compare's rows, made in one of `client`'s heavy turns.

    CompareTooLarge past a bound (before its turn when by size), Busy without a turn.
    """
    bounds.check(left, right)
    return await heavy.run(client, bounds.compare, left, right)


async def page_of(request: Request, caller: ApiClient, job_id: str,
                  number: int) -> dict[str, Any]:
    """Page `number` of the client's own finished job, its corrections applied.

    NotFound (another client's job, or none), NotFinished, or `page_views.Missing`.
    The job's result is read as every page read reads it (`ended_result`).
    """
    result = await ended_result(request, caller, job_id)
    return await run_in_threadpool(page_views.page_view, result, number,
                                   Corrections(service_of(request).redis, caller.name))


@dataclass(frozen=True)
class SecondReading:
    """The page read again: its job's id, status and error, and its page once it ended."""

    id: str
    status: str
    error: dict[str, Any] | None
    page: dict[str, Any] | None

    @property
    def waiting(self) -> bool:
        return self.status not in FINAL_STATUSES


async def second_reading(request: Request, caller: ApiClient, job_id: str) -> SecondReading:
    """The job that read the page again, as it stands (NotFound when not the client's).

    An ended job's result is read as every page read reads it (`ended_result`); a job
    still running is read from its state, which is small.
    """
    service = service_of(request)
    try:
        result = await ended_result(request, caller, job_id)
    except NotFinished:
        info = await run_in_threadpool(service.status, caller, job_id)
        if info.status in FINAL_STATUSES:  # it ended meanwhile
            return await second_reading(request, caller, job_id)
        return SecondReading(job_id, info.status,
                             None if info.error is None else info.error.model_dump(), None)
    status = JobStatus.of(result.get("status"))
    page = None
    if status in (JobStatus.SUCCESS, JobStatus.PARTIAL):
        page = await run_in_threadpool(page_views.page_view, result, 1,
                                       Corrections(service.redis, caller.name))
    return SecondReading(job_id, status, result.get("error"), page)


async def read_again(request: Request, caller: ApiClient, job_id: str, number: int,
                     engine: str, filename: str) -> str:
    """Send page `number`'s image as a new job read by `engine`; the new job's id."""
    service = service_of(request)
    offered = await run_in_threadpool(offered_engines, service)
    if engine not in offered:
        raise BadRequest(f"choose an engine among {', '.join(offered)}; no live worker "
                         f"runs {engine!r}" if offered else "no live worker reads pages now")
    await page_of(request, caller, job_id, number)  # the client's own job, with that page
    return await run_in_threadpool(_send_page, service, caller, job_id, number, engine,
                                   filename)


def _send_page(service: JobService, caller: ApiClient, job_id: str, number: int,
               engine: str, filename: str) -> str:
    """The page's image sent as a new job (blocking: Redis)."""
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
