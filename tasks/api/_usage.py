"""`GET /v1/usage`: the caller's own pages read, by day, and its page caps.

Runs in the `api` process. Reads the workers' page counts (tasks/state/usage.py): one
Redis round trip for the range and one for today's and this month's figures.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from tasks.api._routes import COMMON, Caller, _errors, service_of
from tasks.api._schemas import Usage, UsageDay
from tasks.api.tokens import ApiClient
from tasks.errors import BadRequest
from tasks.state.usage import PageUsage, date_range, days, engine_totals, today

router = APIRouter()
DATE = r"^\d{4}-\d{2}-\d{2}$"
# The days a range may name: a range's arithmetic (its default start, its last day's
# next) stays inside the calendar Python counts in.
FIRST_DAY, LAST_DAY = dt.date(1970, 1, 1), dt.date(9998, 12, 31)


def bounded_day(raw: str | None) -> str | None:
    """`raw` when it is a date between FIRST_DAY and LAST_DAY; BadRequest otherwise."""
    if raw is None:
        return None
    try:
        day = dt.date.fromisoformat(raw)
    except ValueError:
        raise BadRequest("dates are YYYY-MM-DD") from None
    if not FIRST_DAY <= day <= LAST_DAY:
        raise BadRequest(f"dates are between {FIRST_DAY} and {LAST_DAY}")
    return raw


def client_usage(usage: PageUsage, caller: ApiClient, start: str | None,
                 end: str | None) -> Usage:
    """The caller's pages on each day of the range (blocking: Redis); BadRequest."""
    first, last = date_range(bounded_day(start), bounded_day(end))
    by_day = usage.by_day(caller.name, first, last)
    engines = usage.engines_by_day(first, last, caller.name).get(caller.name, {})
    on_day, in_month = usage.used(caller.name)
    shown = [UsageDay(date=day.isoformat(), pages=by_day.get(day.isoformat(), 0),
                      engines=engines.get(day.isoformat(), {}))
             for day in days(first, last)]
    return Usage.model_validate({
        "client": caller.name, "from": first.isoformat(), "to": last.isoformat(),
        "days": shown, "total": sum(by_day.values()), "engines": engine_totals(engines),
        "today": on_day,
        "this_month": in_month, "pages_per_day": caller.pages_per_day or None,
        "pages_per_month": caller.pages_per_month or None,
        "engines_today": engines.get(today().isoformat(), {}),
        "engine_pages_per_day": caller.engine_pages_per_day or {}})


@router.get("/v1/usage", response_model=Usage, response_model_by_alias=True,
            summary="The client's own pages read, by day (UTC), and its page caps",
            responses=_errors(400, *COMMON))
async def get_usage(
        request: Request, caller: Caller,
        start: Annotated[str | None, Query(
            alias="from", pattern=DATE, description="first day, YYYY-MM-DD (default: 29 "
            "days before `to`)")] = None,
        end: Annotated[str | None, Query(
            alias="to", pattern=DATE, description="last day, YYYY-MM-DD (default: "
            "today)")] = None,
        ) -> Usage:
    return await run_in_threadpool(client_usage, service_of(request).usage, caller, start,
                                   end)
