"""`GET /v1/jobs`: the caller's own jobs, newest first, filtered by status and time.

Runs in the `api` process. Reads the caller's index (`tasks/state/job_index.py`:
every job sent under its token's name) a batch at a time, one Redis round trip per
batch for the jobs' records and state marks (an ended job's summary, never its
result: `JobStateReader`); only jobs whose API record names the
caller are shown, as `GET /v1/jobs/{id}` would 404 the others. A job submit.py or
`OcrClient` sent under client NAME is read as NAME's (`ApiJobs.decode`): the token
named NAME lists it. Each job shown is the
same record `GET /v1/jobs/{id}` answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from tasks.api._routes import COMMON, Caller, _errors, service_of
from tasks.api._schemas import JobList
from tasks.api._service import JobService
from tasks.api.tokens import ApiClient
from tasks.errors import BadRequest
from tasks.records.status import JobStatus, WaitStatus
from tasks.state import lua
from tasks.state.api_jobs import RECORD_READS
from tasks.state.job_index import Cursor
from tasks.state.job_state import JobProgress, as_marks

STATUSES = (WaitStatus.QUEUED, WaitStatus.RUNNING, *JobStatus)
MAX_LIMIT = 100

router = APIRouter()


def parse_statuses(values: Sequence[str] | None) -> frozenset[str] | None:
    """`status` given once or more, each one or several comma separated; None: any."""
    if not values:
        return None
    chosen = {part.strip().upper() for value in values for part in value.split(",")
              if part.strip()}
    unknown = sorted(chosen - set(STATUSES))
    if unknown:
        raise BadRequest(f"unknown status {', '.join(unknown)}; choose among "
                         f"{', '.join(STATUSES)}")
    return frozenset(chosen) or None


def list_jobs(service: JobService, caller: ApiClient, statuses: frozenset[str] | None,
              since: float | None, until: float | None, limit: int,
              cursor: str | None) -> JobList:
    """A page of the caller's jobs (blocking: Redis)."""
    after = None if cursor is None else Cursor.decode(cursor)
    states = service.client.states

    def describe(batch: Sequence[tuple[str, float]]) -> list[Any]:
        pipe = service.redis.pipeline(transaction=False)
        for job_id, _ in batch:
            service.jobs.queue_record(pipe, job_id)
            states.queue_marks(pipe, job_id)
        raw = lua.execute(pipe)
        found: list[tuple[str, dict[str, str], Any, JobProgress] | None] = []
        step = RECORD_READS + 1  # the record's reads, then the marks
        for i, (job_id, _) in enumerate(batch):
            at = step * i
            record = service.jobs.decode(*raw[at:at + RECORD_READS])
            marks = as_marks(raw[at + RECORD_READS])
            found.append((job_id, record, marks, states.progress(job_id, marks))
                         if record.get("owner") == caller.name else None)
        return found

    page = service.client.index.page(
        caller.name, since, until, after, limit, describe,
        lambda found: statuses is None or found[3].status in statuses)
    jobs = [service.shown(job_id, record, marks) for job_id, record, marks, _ in page.items]
    return JobList(jobs=jobs, next_cursor=None if page.next is None else page.next.encode())


@router.get("/v1/jobs", response_model=JobList,
            summary="The client's own jobs, newest first (filters: status, time; paged)",
            responses=_errors(400, *COMMON))
async def get_jobs(
        request: Request, caller: Caller,
        status: Annotated[list[str] | None, Query(
            max_length=10, description="only jobs in these statuses (QUEUED, RUNNING, "
            "SUCCESS, PARTIAL, FAILURE, CANCELLED): repeat it, or comma separate")] = None,
        since: Annotated[float | None, Query(
            ge=0, lt=1e11, description="only jobs sent at or after (seconds since the "
            "epoch)")] = None,
        until: Annotated[float | None, Query(
            ge=0, lt=1e11, description="only jobs sent at or before (seconds since the "
            "epoch)")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="most jobs a page "
                                    "holds")] = 20,
        cursor: Annotated[str | None, Query(
            max_length=400, description="the `next_cursor` of the page before")] = None,
        ) -> JobList:
    statuses = parse_statuses(status)
    return await run_in_threadpool(list_jobs, service_of(request), caller, statuses, since,
                                   until, limit, cursor)
