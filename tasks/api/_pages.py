"""`/v1/jobs/{id}/pages/{n}`: a finished job's pages, their images, and line corrections.

Runs in the `api` process. For the job's own client only (another client's job, or an
unknown job, page or line, is 404 `not_found`, as jobs are). The page's lines and the
corrections are built by tasks/lifecycle/page_views.py from the stored result and
the client's corrections (tasks/state/corrections.py); the page image is the preview
the worker kept while it read the page (tasks/state/previews.py), never rendered again.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from tasks.api._errors import NotFound
from tasks.api._heavy import (
    HEAVY_RESULT_BYTES,
    HeavyWork,
    heavy_of,
    read_stored,
    stored_result_bytes,
)
from tasks.api._routes import COMMON, Caller, _errors, service_of
from tasks.api._service import JobService
from tasks.api.tokens import ApiClient
from tasks.lifecycle import page_views
from tasks.records.formats import MIN_PREVIEW_WIDTH, PREVIEW_LONG_SIDE, PREVIEW_MEDIA_TYPE
from tasks.state.corrections import MAX_TEXT, Corrections

router = APIRouter()
T = TypeVar("T")
# ended jobs' decoded results kept for their pages, in bytes stored (EndedResults)
RESULTS_KEPT_BYTES = 8_000_000
PageNumber = Annotated[int, Path(ge=1, le=1_000_000, description="the page (1-based)")]
LineId = Annotated[str, Path(max_length=40, pattern=r"^p\d+-l\d+$",
                             description="a line's `id` from the page's JSON")]


class LineText(BaseModel):
    """A line's corrected text."""

    model_config = ConfigDict(extra="forbid")
    text: str = Field(max_length=MAX_TEXT, description="the line as it should read")


class EndedResults:
    """The results of the last few ended jobs the page calls read, kept decoded.

    A job's result does not change once it has ended, and a page view would otherwise
    decode the whole result for each page. Only results up to `HEAVY_RESULT_BYTES`
    stored are kept, `RESULTS_KEPT_BYTES` of them at most; a bigger one is decoded for
    each view, as heavy work (`read_stored`), so the process's memory stays bounded
    however large the results are. The owner is checked on every call (the job's
    summary is read). Touched by the event loop alone.
    """

    def __init__(self, budget: int = RESULTS_KEPT_BYTES) -> None:
        self._kept: OrderedDict[str, tuple[dict[str, Any], int]] = OrderedDict()
        self._budget = budget
        self._bytes = 0

    async def get(self, service: JobService, heavy: HeavyWork, caller: ApiClient,
                  job_id: str) -> dict[str, Any]:
        """NotFound (another client's job, or none) or NotFinished."""
        _, summary = await run_in_threadpool(service.summary, caller, job_id)
        kept = self._kept.get(job_id)
        if kept is not None:
            self._kept.move_to_end(job_id)
            return kept[0]
        result = await read_stored(heavy, caller.name, summary, service.stored, job_id)
        stored = stored_result_bytes(summary)
        if stored <= HEAVY_RESULT_BYTES and job_id not in self._kept:
            self._kept[job_id] = (result, stored)
            self._bytes += stored
            while self._bytes > self._budget:
                self._bytes -= self._kept.popitem(last=False)[1][1]
        return result


_ended = EndedResults()


async def ended_result(request: Request, caller: ApiClient, job_id: str) -> dict[str, Any]:
    """The client's own ended job's result, decoded for the process's page reads.

    NotFound (another client's job, or none) or NotFinished.
    """
    return await _ended.get(service_of(request), heavy_of(request), caller, job_id)


def _corrections(service: JobService, caller: ApiClient) -> Corrections:
    return Corrections(service.redis, caller.name)


def _missing(exc: page_views.Missing) -> NotFound:
    return NotFound(str(exc))


@router.get("/v1/jobs/{job_id}/pages/{number}",
            summary="A page's lines: text, box, confidence, words; corrections applied",
            responses=_errors(404, 409, *COMMON))
async def get_page(request: Request, job_id: str, number: PageNumber,
                   caller: Caller) -> dict[str, Any]:
    service = service_of(request)
    result = await ended_result(request, caller, job_id)
    return await run_in_threadpool(_viewed, page_views.page_view, result, number,
                                   _corrections(service, caller))


def _viewed(view: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`view(*args, **kwargs)` of a page (blocking: the client's corrections in Redis)."""
    try:
        return view(*args, **kwargs)
    except page_views.Missing as exc:
        raise _missing(exc) from None


@router.get("/v1/jobs/{job_id}/pages/{number}/image", response_class=Response,
            summary="The page as the engine read it (turned upright), WebP",
            responses={200: {"description": "the page image", "content": {
                PREVIEW_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}}},
                **_errors(404, 409, *COMMON)})
async def get_page_image(request: Request, job_id: str, number: PageNumber, caller: Caller,
                         width: int | None = Query(
                             None, ge=MIN_PREVIEW_WIDTH, le=PREVIEW_LONG_SIDE,
                             description="pixels wide: a smaller copy")) -> Response:
    service = service_of(request)
    result = await ended_result(request, caller, job_id)

    def stored() -> bytes:
        _viewed(page_views.result_page, result, number)
        data = service.previews.get(job_id, number)
        if data is None:
            raise NotFound(f"page {number} has no image (a text-layer, blank or failed "
                           "page, or previews are off: OCR_PAGE_PREVIEWS)")
        return data

    data = await run_in_threadpool(stored)
    if width is not None:
        # Pillow only for a smaller copy: the API process loads it on this first use.
        from tasks.pipeline.previews import smaller_preview
        data = await run_in_threadpool(smaller_preview, data, width)
    return Response(data, media_type=PREVIEW_MEDIA_TYPE, headers={"Cache-Control": "private"})


@router.get("/v1/jobs/{job_id}/pages/{number}/lines/{line}",
            summary="A line with the kept versions of its correction",
            responses=_errors(404, 409, *COMMON))
async def get_line(request: Request, job_id: str, number: PageNumber, line: LineId,
                   caller: Caller) -> dict[str, Any]:
    service = service_of(request)
    result = await ended_result(request, caller, job_id)
    return await run_in_threadpool(_viewed, page_views.line_history, result, number, line,
                                   _corrections(service, caller))


@router.put("/v1/jobs/{job_id}/pages/{number}/lines/{line}",
            summary="Correct a line (kept for this document's later jobs too)",
            responses=_errors(400, 404, 409, *COMMON))
async def put_line(request: Request, job_id: str, number: PageNumber, line: LineId,
                   body: LineText, caller: Caller) -> dict[str, Any]:
    return await _correct(request, job_id, number, line, body.text, caller)


@router.delete("/v1/jobs/{job_id}/pages/{number}/lines/{line}",
               summary="Revert a line to the engine's text (its history stays)",
               responses=_errors(404, 409, *COMMON))
async def delete_line(request: Request, job_id: str, number: PageNumber, line: LineId,
                      caller: Caller) -> dict[str, Any]:
    return await _correct(request, job_id, number, line, None, caller)


async def _correct(request: Request, job_id: str, number: int, line: str, text: str | None,
                   caller: ApiClient) -> dict[str, Any]:
    service = service_of(request)
    result = await ended_result(request, caller, job_id)
    return await run_in_threadpool(
        lambda: _viewed(page_views.correct_line, result, job_id, number, line, text,
                        caller.name, _corrections(service, caller),
                        versions=service.settings.correction_versions,
                        limit=service.max_bytes(caller)))
