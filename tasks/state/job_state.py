"""A job's state, read in one place: where it stands, in the words every caller shows.

Used by the Python client (`OcrClient.status`, so `submit.py status` and `wait`) and the
HTTP API (a job's status and its events stream): both read the same three marks in one
round trip and turn them into a `JobProgress` here. The marks are the job's state in
Celery's result backend (the same Redis), its cancel record, and the page count of its
control hash (`total`, written with each progress report), which a cancelled job keeps.

Runs in any client process; Celery's backend is passed in (its key format and codec),
nothing of Celery is imported here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

import redis

from tasks.records.status import CeleryState, JobStatus, WaitStatus, celery_final, from_celery
from tasks.state.keys import job_cancelled_key, job_key

# The control hash's field that holds how many pages a job reads (its plan).
TOTAL_FIELD = "total"
# A job's raw marks: stored state, cancel record, planned page count.
Marks = tuple[bytes | str | None, bytes | str | None, bytes | str | None]


class ResultBackend(Protocol):
    """What is used of Celery's Redis result backend: its key format and codec."""

    def get_key_for_task(self, task_id: str) -> bytes | str: ...

    def decode_result(self, payload: bytes | str) -> dict[str, Any]: ...


@dataclass(frozen=True)
class JobProgress:
    """Where a job stands: Celery `state`, pages done/total, and the caller's `status`.

    `status` is what every caller shows (QUEUED, RUNNING, then SUCCESS, PARTIAL,
    FAILURE or CANCELLED; `tasks.records.status`); `state` is Celery's own word. A
    cancelled job is CANCELLED with the pages it kept out of those it was to read.
    """

    id: str
    state: str
    done: int = 0
    total: int = 0
    cancelled: bool = False
    result: dict[str, Any] | None = None  # the stored result of a job that SUCCEEDED

    @property
    def final(self) -> bool:
        return self.cancelled or celery_final(self.state)

    @property
    def status(self) -> JobStatus | WaitStatus:
        if self.cancelled:
            return JobStatus.CANCELLED
        if self.state == CeleryState.SUCCESS and self.result is not None:
            return JobStatus.of(self.result.get("status"))
        return from_celery(self.state)


class JobStateReader:
    """Reads a job's marks (one round trip) and makes its `JobProgress`."""

    def __init__(self, client: redis.Redis, backend: ResultBackend) -> None:
        self._redis = client
        self._backend = backend

    def marks(self, job_id: str) -> Marks:
        """The stored state, cancel record and planned page count: one round trip."""
        pipe = self._redis.pipeline(transaction=False)
        self.queue_marks(pipe, job_id)
        meta, cancelled, total = pipe.execute()
        return meta, cancelled, total

    def queue_marks(self, pipe: Any, job_id: str) -> None:
        """Add the three reads of `marks` to a pipeline another read shares."""
        pipe.get(self._backend.get_key_for_task(job_id))
        pipe.get(job_cancelled_key(job_id))
        pipe.hget(job_key(job_id), TOTAL_FIELD)

    def ended(self, job_ids: list[str]) -> list[str]:
        """Which of `job_ids` have ended: one MGET of their stored states."""
        if not job_ids:
            return []
        raw = self._redis.mget([self._backend.get_key_for_task(i) for i in job_ids])
        return [job_id for job_id, meta in zip(job_ids, raw, strict=True)
                if meta and celery_final(str(self._backend.decode_result(meta).get("status")))]

    def read(self, job_id: str) -> JobProgress:
        return self.progress(job_id, self.marks(job_id))

    def progress(self, job_id: str, marks: Marks) -> JobProgress:
        """The job's progress from its marks (read by `marks` or `queue_marks`)."""
        meta, raw_cancelled, raw_total = marks
        planned = int(raw_total) if raw_total else 0
        # A cancel's stored result is final even when a page that finished just after
        # it wrote PROGRESS over the job's state.
        if raw_cancelled:
            kept = json.loads(raw_cancelled)
            done = len([p for p in kept.get("pages", []) if "error" not in p])
            return JobProgress(job_id, CeleryState.REVOKED, done, max(planned, done),
                               cancelled=True, result=kept)
        if meta is None:
            return JobProgress(job_id, CeleryState.PENDING, 0, planned)
        decoded = self._backend.decode_result(meta)
        state = str(decoded.get("status", CeleryState.PENDING))
        value = decoded.get("result")
        if state == CeleryState.PROGRESS and isinstance(value, dict):
            return JobProgress(job_id, state, int(value.get("done", 0)),
                               int(value.get("total", 0)))
        if state == CeleryState.SUCCESS and isinstance(value, dict):
            done, total = page_counts(value)
            return JobProgress(job_id, state, done, max(total, planned), result=value)
        return JobProgress(job_id, state, 0, planned)


def page_counts(result: dict[str, Any]) -> tuple[int, int]:
    """Pages read without error, and pages the result covers (read or failed).

    A page selection reads fewer pages than the document has: those are counted.
    """
    pages = result.get("pages", [])
    done = sum(1 for p in pages if "error" not in p)
    numbers = {p.get("number") for p in [*pages, *result.get("failed_pages", [])]}
    return done, len(numbers)
