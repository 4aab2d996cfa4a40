"""The console's pages: sign in and out, the jobs list, a job's pages, the usage chart.

Runs in the `api` process. Each view is a plain function (FastAPI runs it in a worker
thread: every call here blocks on Redis) that reads through the API's own service
(tasks/api/), so the console shows exactly what the JSON API answers the same client,
and another client's job is a 404 here as there. The compare is the one coroutine: it
waits for its turn among the API's heavy work without holding a thread.

The usage chart's bars are laid out here, on the server, in pure arithmetic. The
template turns each `Bar` into an SVG rectangle and its label, so the chart needs no
script.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Form, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from tasks.api.services import (
    STATUSES,
    Busy,
    CompareTooLarge,
    NotFound,
    Unauthorized,
    client_usage,
    ended_result,
    heavy_of,
    http_status,
    list_jobs,
    parse_statuses,
)
from tasks.api.sessions import COOKIE, SESSION_SECONDS, CsrfFailed, Session
from tasks.console._compare import (
    Bounds,
    Row,
    SecondReading,
    compared_rows,
    offered_engines,
    page_of,
    read_again,
    second_reading,
)
from tasks.console._web import (
    PREFIX,
    render,
    same_origin,
    service_of,
    sessions_of,
    signed_in,
)
from tasks.errors import BadRequest, OcrError
from tasks.lifecycle import page_views
from tasks.records.status import JobStatus

router = APIRouter(prefix=PREFIX, include_in_schema=False)
LOW_CONFIDENCE = 0.8  # a line below this is uncertain: coloured, and the `n` key's stop


@router.get("")
def index(request: Request) -> Response:
    signed_in(request)
    return RedirectResponse(f"{PREFIX}/jobs", status_code=303)


@router.get("/signin", response_class=HTMLResponse)
def sign_in_form(request: Request) -> HTMLResponse:
    return render(request, "signin.html", error="")


@router.post("/signin")
def sign_in(request: Request, token: Annotated[str, Form(max_length=300)] = "") -> Response:
    """An API token exchanged for a session cookie (HttpOnly, SameSite=Strict)."""
    if not same_origin(request, required=True):  # a sign-in forged by another site
        raise CsrfFailed("a sign-in is taken only from this site's own form (its Origin)")
    service = service_of(request)
    try:
        caller = service.access.authenticate(f"Bearer {token.strip()}")
    except Unauthorized:
        return render(request, "signin.html", status_code=401,
                      error="That token is unknown or revoked.")
    service.access.count_request(caller)
    response = RedirectResponse(f"{PREFIX}/jobs", status_code=303)
    response.set_cookie(COOKIE, sessions_of(request).start(caller), max_age=SESSION_SECONDS,
                        path="/", httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
    return response


@router.post("/signout")
def sign_out(request: Request, csrf: Annotated[str, Form(max_length=100)] = "") -> Response:
    session = signed_in(request)
    session.check_csrf(csrf)
    sessions_of(request).end(request.cookies.get(COOKIE))
    response = RedirectResponse(f"{PREFIX}/signin", status_code=303)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response


def _day_start(raw: str | None, end: bool = False) -> float | None:
    """A YYYY-MM-DD date (UTC) as seconds since the epoch: its start, or its end."""
    if not raw:
        return None
    try:
        day = dt.datetime.combine(dt.date.fromisoformat(raw), dt.time(), dt.UTC)
        return (day + dt.timedelta(days=1)).timestamp() - 0.001 if end else day.timestamp()
    except (ValueError, OverflowError):  # not a date, or past the calendar's last day
        raise BadRequest("dates are YYYY-MM-DD, up to 9999-12-30") from None


@router.get("/jobs")
def jobs(request: Request,
         status: Annotated[str, Query(max_length=20)] = "",
         since: Annotated[str, Query(alias="from", max_length=10)] = "",
         until: Annotated[str, Query(alias="to", max_length=10)] = "",
         batch: Annotated[str, Query(max_length=64)] = "",
         cursor: Annotated[str | None, Query(max_length=400)] = None) -> Response:
    """The client's own jobs, newest first, 50 a page, filtered by status and days.

    A batch's jobs are its page's (its manifest and the documents in flight).
    """
    session = signed_in(request)
    if batch.strip():
        return RedirectResponse(f"{PREFIX}/batches/{quote(batch.strip(), safe='')}",
                                status_code=303)
    try:
        listed = list_jobs(service_of(request), session.client, parse_statuses(
            [status] if status else None), _day_start(since), _day_start(until, end=True),
            50, cursor)
    except BadRequest as exc:  # a date, status or cursor the list cannot take
        return _refused(request, session, exc)
    return render(request, "jobs.html", session=session, jobs=listed.jobs,
                  next_cursor=listed.next_cursor, statuses=STATUSES, status=status,
                  since=since, until=until, shown_time=_shown_time)


def _shown_time(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job(request: Request, job_id: str) -> HTMLResponse:
    """A job's pages: each image with its line boxes, and its lines beside it."""
    session = signed_in(request)
    try:
        info = service_of(request).status(session.client, job_id)
    except NotFound:
        return render(request, "missing.html", status_code=404, session=session,
                      what="job")
    pages: list[int] = []
    warnings: list[dict[str, Any]] = []
    escalations: dict[int, dict[str, Any]] = {}
    if info.status in (JobStatus.SUCCESS, JobStatus.PARTIAL):
        summary = service_of(request).summary(session.client, job_id)[1]
        pages = [int(number) for number in summary.get("read_pages") or []]
        warnings = list(summary.get("warnings") or [])
        escalations = {int(number): marked for number, marked
                       in (summary.get("escalations") or {}).items()}
    return render(request, "job.html", session=session, job=info, pages=pages,
                  warnings=warnings, escalations=escalations, low=LOW_CONFIDENCE,
                  shown_time=_shown_time, engines=offered_engines(service_of(request)),
                  from_zero=service_of(request).settings.engines_from_zero)


@router.get("/jobs/{job_id}/pages/{number}/escalation", response_class=HTMLResponse)
async def escalation(request: Request, job_id: str,
                     number: Annotated[int, Path(ge=1)]) -> HTMLResponse:
    """An escalated page's two readings: the first engine's and the one it keeps.

    The first reading's text is the page's `escalation.first_text`; the compare is
    bounded and run as `compared` runs its own.
    """
    read = await _escalated_page(request, job_id, number)
    if isinstance(read, HTMLResponse):
        return read
    session, page = read
    marked = page["escalation"]
    rows: list[Row] = []
    if marked.get("first_text") is not None:
        try:
            rows = await compared_rows(
                Bounds.of(service_of(request).settings), heavy_of(request),
                session.client.name, str(marked["first_text"]).splitlines(),
                str(page.get("text") or "").splitlines())
        except (CompareTooLarge, Busy) as exc:
            return await run_in_threadpool(_refused, request, session, exc)
    return await run_in_threadpool(partial(
        render, request, "escalation.html", session=session, job_id=job_id, number=number,
        page=page, escalation=marked, rows=rows))


async def _escalated_page(request: Request, job_id: str, number: int
                          ) -> HTMLResponse | tuple[Session, dict[str, Any]]:
    """The signed-in client's escalated page `number` of `job_id`."""
    session = await run_in_threadpool(signed_in, request)
    try:
        result = await ended_result(request, session.client, job_id)
    except OcrError as exc:
        return await run_in_threadpool(_refused, request, session, exc)
    for page in result.get("pages") or []:
        if int(page["number"]) == number and page.get("escalation"):
            return session, page
    return await run_in_threadpool(partial(render, request, "missing.html", status_code=404,
                                           session=session, what="escalated page"))


@router.post("/jobs/{job_id}/pages/{number}/compare")
async def read_page_again(request: Request, job_id: str, number: Annotated[int, Path(ge=1)],
                          engine: Annotated[str, Form(max_length=40)] = "",
                          csrf: Annotated[str, Form(max_length=100)] = "") -> Response:
    """The page read again by `engine` as a new job; then the comparison's page."""
    session = await run_in_threadpool(signed_in, request)
    session.check_csrf(csrf)
    if not same_origin(request):
        raise CsrfFailed()
    service = service_of(request)
    try:
        info = await run_in_threadpool(service.status, session.client, job_id)
        other = await read_again(request, session.client, job_id, number, engine,
                                 info.filename)
    except (OcrError, page_views.Missing) as exc:
        return await run_in_threadpool(_refused, request, session, exc)
    return RedirectResponse(f"{PREFIX}/jobs/{job_id}/pages/{number}/compare/{other}",
                            status_code=303)


@router.get("/jobs/{job_id}/pages/{number}/compare/{other_id}", response_class=HTMLResponse)
async def compared(request: Request, job_id: str, number: Annotated[int, Path(ge=1)],
                   other_id: str) -> HTMLResponse:
    """Both readings of the page side by side, the differences marked.

    The reads and the rendering run in worker threads, the compare as the API's heavy
    work (tasks/api/_heavy.py), bounded (`Bounds`): past a bound, a coded refusal.
    """
    read = await _readings(request, job_id, number, other_id)
    if isinstance(read, HTMLResponse):
        return read
    session, first, other = read
    rows: list[Row] = []
    if other.page is not None:
        try:
            rows = await compared_rows(
                Bounds.of(service_of(request).settings), heavy_of(request),
                session.client.name, [line["text"] for line in first["lines"]],
                [line["text"] for line in other.page["lines"]])
        except (CompareTooLarge, Busy) as exc:
            return await run_in_threadpool(_refused, request, session, exc)
    return await run_in_threadpool(partial(
        render, request, "compare.html", session=session, job_id=job_id, number=number,
        other=other, first=first, second=other.page, rows=rows, waiting=other.waiting))


async def _readings(request: Request, job_id: str, number: int, other_id: str
                    ) -> HTMLResponse | tuple[Session, dict[str, Any], SecondReading]:
    """The page's first reading and the job that read it again."""
    session = await run_in_threadpool(signed_in, request)
    try:
        return (session, await page_of(request, session.client, job_id, number),
                await second_reading(request, session.client, other_id))
    except (OcrError, page_views.Missing) as exc:
        return await run_in_threadpool(_refused, request, session, exc)


def _refused(request: Request, session: Session, exc: Exception) -> HTMLResponse:
    """An error as a console page, with the API's status, code and headers."""
    if isinstance(exc, page_views.Missing):
        exc = NotFound(str(exc))
    assert isinstance(exc, OcrError)
    page = render(request, "refused.html", status_code=http_status(exc), session=session,
                  code=exc.code, message=exc.message)
    page.headers.update(getattr(exc, "headers", None) or {})
    return page


@router.get("/usage", response_class=HTMLResponse)
def usage(request: Request) -> HTMLResponse:
    """The client's pages a day over the last 30 days, as a bar chart."""
    session = signed_in(request)
    shown = client_usage(service_of(request).usage, session.client, None, None)
    return render(request, "usage.html", session=session, usage=shown,
                  chart=bars([(day.date, day.pages) for day in shown.days]))


WIDTH, HEIGHT = 720, 220  # the usage chart's drawing area, in SVG units
BOTTOM = 30  # room under the bars for the day labels


@dataclass(frozen=True)
class Bar:
    label: str
    value: int
    x: float
    y: float
    width: float
    height: float


@dataclass(frozen=True)
class Chart:
    bars: list[Bar]
    width: int
    height: int
    most: int  # the tallest bar's value: the scale
    baseline: float


def bars(values: Sequence[tuple[str, int]]) -> Chart:
    """One bar per (label, value), scaled so the largest value fills the height."""
    most = max((value for _, value in values), default=0)
    room = HEIGHT - BOTTOM
    step = WIDTH / max(1, len(values))
    shown = [Bar(label, value, round(i * step + step * 0.1, 2),
                 round(room - (room * value / most if most else 0), 2),
                 round(step * 0.8, 2), round(room * value / most if most else 0, 2))
             for i, (label, value) in enumerate(values)]
    return Chart(shown, WIDTH, HEIGHT, most, room)
