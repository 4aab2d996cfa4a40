"""A job's state, read in one place: where it stands, in the words every caller shows.

Used by the Python client (`OcrClient.status`, so `submit.py status` and `wait`) and the
HTTP API (a job's status and its events stream): both read the same three marks in one
round trip and turn them into a `JobProgress` here. The marks are the job's state in
Celery's result backend (the same Redis), its cancel record, and fields of its control
hash: the page count (`total`, written with each progress report, which a cancelled
job keeps), its `deadline` and whether a cancel was asked (`cancelled`): what tells
Celery's one word for two endings, REVOKED, apart (`expired_before_start`); and who
sent it and what (`client`, `filename`). The job lists (`tasks/state/job_index.py`)
read many jobs' marks in one round trip (`read_many`).

A cache hit's record refers to the job that read its pages (`Outcome.stored`): every
read here takes them from that job's record (`resolved`).

Runs in any client process; Celery's backend is passed in (its key format and codec),
nothing of Celery is imported here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import redis

from tasks.records.jobs import SOURCE_FIELD, resolved
from tasks.records.status import (
    CeleryState,
    JobStatus,
    ShownState,
    WaitStatus,
    celery_final,
    from_celery,
)
from tasks.state import lua
from tasks.state.keys import job_cancelled_key, job_key, job_summary_key

Raw = bytes | str | None
# The control hash's fields read with a job's state: how many pages it reads (its
# plan), its deadline (epoch seconds), the cancel's mark, who sent it and what, and the
# priority it runs at (tasks/state/stores.py).
TOTAL_FIELD = "total"
JOB_FIELDS = (TOTAL_FIELD, "deadline", "cancelled", "client", "filename", "priority")
# A job's raw marks: its summary, and where it has none its stored state and cancel
# record; the control hash's JOB_FIELDS.
Marks = tuple[Raw, Raw, Raw, tuple[Raw, ...]]

# The marks in one step: an ended job's summary (KEYS[1]) and, only where it has none,
# its stored state (ARGV[1]) and cancel record (KEYS[2]); fields ARGV[2..] of its control
# hash (KEYS[3]). A read bounded by the summary, however large the stored result. The
# stored state is named in ARGV: Redis asks read and write access of a script's KEYS,
# and the `client` user reads results, never writes them.
_MARKS = lua.Script("""
local summary = redis.call('GET', KEYS[1])
local meta, cancelled = false, false
if not summary then
  meta = redis.call('GET', ARGV[1])
  cancelled = redis.call('GET', KEYS[2])
end
return {summary, meta, cancelled, redis.call('HMGET', KEYS[3], unpack(ARGV, 2))}
""")


def expired_before_start(cancel_asked: object, deadline: object) -> bool:
    """Whether a job Celery revoked expired at its deadline rather than being cancelled.

    Celery says REVOKED for both. A cancel marks the job's control hash (`cancelled`)
    before anything else, so a revoked job sent with a deadline and never cancelled
    was dropped because the deadline passed before it started: the worker ends it
    FAILURE `deadline_exceeded` (docs/tasks.md), and every caller says so from the
    moment Celery marks it, `status` and `wait` alike.
    """
    return not cancel_asked and bool(deadline)


class ResultBackend(Protocol):
    """What is used of Celery's Redis result backend: its key format and codec."""

    def get_key_for_task(self, task_id: str) -> bytes | str: ...

    def decode_result(self, payload: bytes | str) -> dict[str, Any]: ...


@dataclass(frozen=True)
class JobProgress:
    """Where a job stands: its `state`, pages done/total, and the caller's `status`.

    `status` is what every caller shows (QUEUED, RUNNING, then SUCCESS, PARTIAL,
    FAILURE or CANCELLED; `tasks.records.status`); `state` is Celery's state in the
    service's words (`ShownState`: CANCELLED, never Celery's REVOKED). A cancelled job
    is CANCELLED with the pages it kept out of those it was to read. `total` is 0 until
    the job has planned its pages (`planned` says whether it has).
    """

    id: str
    state: ShownState
    done: int = 0
    total: int = 0
    cancelled: bool = False
    result: dict[str, Any] | None = None  # the stored result of a job that SUCCEEDED
    client: str = ""  # who sent it ("" for the anonymous client, or not recorded)
    filename: str = ""  # the input's name it was sent with, when recorded
    priority: str = ""  # the priority it runs at (interactive, normal, batch), when recorded
    known: bool = True  # False: no record of the job (never sent, or its records expired)

    @property
    def planned(self) -> bool:
        """Whether the job's page count is known (0 of 0 means "not yet", not "none")."""
        return self.total > 0 or self.final

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
        """The summary (or stored state and cancel record) and fields: one round trip."""
        return as_marks(_MARKS.run(self._redis, *self._mark_keys(job_id)))

    def queue_marks(self, pipe: Any, job_id: str) -> None:
        """Add the read of `marks` to a pipeline another read shares (`as_marks` its answer).

        Run it with `tasks.state.lua.execute` (a script the server lacks is loaded).
        """
        _MARKS.queue(pipe, *self._mark_keys(job_id))

    def _mark_keys(self, job_id: str) -> tuple[list[Any], list[Any]]:
        """`_MARKS`' KEYS and ARGV for `job_id`."""
        return ([job_summary_key(job_id), job_cancelled_key(job_id), job_key(job_id)],
                [self._backend.get_key_for_task(job_id), *JOB_FIELDS])

    def endings_of(self, job_ids: list[str]) -> list[tuple[dict[str, Any], dict[str, str]]]:
        """`ending` of each of `job_ids`, in order: one round trip for them all."""
        pipe = self._redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.get(self._backend.get_key_for_task(job_id))
            pipe.hgetall(job_key(job_id))
        raw = pipe.execute()
        out = []
        for meta, fields in zip(raw[::2], raw[1::2], strict=True):
            decoded = (self._backend.decode_result(meta) if meta else
                       {"status": CeleryState.PENDING.value, "result": None})
            out.append((self._whole(decoded), {_text(k): _text(v) for k, v in fields.items()}))
        return out

    def _whole(self, decoded: dict[str, Any]) -> dict[str, Any]:
        """A decoded record whole: a cache hit's pages read from its source's record."""
        value = decoded.get("result")
        if not isinstance(value, dict) or not value.get(SOURCE_FIELD):
            return decoded
        raw = self._redis.get(self._backend.get_key_for_task(str(value[SOURCE_FIELD])))
        source = self._backend.decode_result(raw).get("result") if raw else None
        return {**decoded, "result": resolved(value, source if isinstance(source, dict)
                                              else None)}

    def ended(self, job_ids: list[str]) -> list[str]:
        """Which of `job_ids` have ended: one MGET of their stored states."""
        return list(self.endings(job_ids))

    def endings(self, job_ids: list[str]) -> dict[str, dict[str, Any]]:
        """The stored states of those of `job_ids` that ended, as Celery decodes them.

        One MGET, in the order of `job_ids`; a failure's `result` is its exception.
        """
        if not job_ids:
            return {}
        raw = self._redis.mget([self._backend.get_key_for_task(i) for i in job_ids])
        out = {}
        for job_id, meta in zip(job_ids, raw, strict=True):
            if meta:
                decoded = self._backend.decode_result(meta)
                if celery_final(str(decoded.get("status"))):
                    out[job_id] = self._whole(decoded)
        return out

    def read(self, job_id: str) -> JobProgress:
        return self.progress(job_id, self.marks(job_id))

    def read_many(self, job_ids: list[str]) -> list[JobProgress]:
        """The progress of each job of `job_ids`, in order: one round trip."""
        pipe = self._redis.pipeline(transaction=False)
        for job_id in job_ids:
            self.queue_marks(pipe, job_id)
        raw = lua.execute(pipe)
        return [self.progress(job_id, as_marks(answer))
                for job_id, answer in zip(job_ids, raw, strict=True)]

    def progress(self, job_id: str, marks: Marks) -> JobProgress:
        """The job's progress from its marks (read by `marks` or `queue_marks`)."""
        summary, meta, raw_cancelled, fields = marks
        raw_total, deadline, cancel_asked, client, name, priority = fields
        planned = int(raw_total) if raw_total else 0
        sender, filename = _text(client), _text(name)
        if summary is None and meta is None and not raw_cancelled and all(
                f is None for f in fields):
            return JobProgress(job_id, ShownState.PENDING, known=False)
        runs_at = _text(priority)

        def made(state: ShownState, done: int, total: int, **more: Any) -> JobProgress:
            return JobProgress(job_id, state, done, total, **{
                "client": sender, "filename": filename, "priority": runs_at, **more})
        if summary is not None:
            return _summarized(json.loads(summary), planned, made)
        # A cancel's stored result is final even when a page that finished just after
        # it wrote PROGRESS over the job's state.
        if raw_cancelled:
            kept = json.loads(raw_cancelled)
            done = len([p for p in kept.get("pages", []) if "error" not in p])
            return made(ShownState.CANCELLED, done, max(planned, done), cancelled=True,
                        result=kept)
        if meta is None:
            return made(ShownState.PENDING, 0, planned)
        decoded = self._whole(self._backend.decode_result(meta))
        state = str(decoded.get("status", CeleryState.PENDING))
        shown = ShownState.of(state, expired_before_start(cancel_asked, deadline))
        value = decoded.get("result")
        if state == CeleryState.PROGRESS and isinstance(value, dict):
            return made(shown, int(value.get("done", 0)), int(value.get("total", 0)))
        if state == CeleryState.SUCCESS and isinstance(value, dict):
            done, total = page_counts(value)
            return made(shown, done, max(total, planned), result=value,
                        client=str(value.get("client", sender)),
                        filename=str(value.get("filename") or filename))
        return made(shown, 0, planned)


def as_marks(answer: list[Any]) -> Marks:
    """The marks of a job from its marks script's answer (`queue_marks`)."""
    summary, meta, cancelled, fields = answer
    return summary, meta, cancelled, tuple(fields)


def _summarized(summary: dict[str, Any], planned: int,
                made: Callable[..., JobProgress]) -> JobProgress:
    """An ended job's progress from its summary (`tasks.records.jobs.job_summary`)."""
    status = JobStatus.of(summary.get("status"))
    done = int(summary.get("done") or 0)
    total = max(int(summary.get("covered") or 0), planned)
    sent = {key: str(summary[key]) for key in ("client", "filename") if summary.get(key)}
    if status is JobStatus.CANCELLED:
        return made(ShownState.CANCELLED, done, max(total, done), cancelled=True,
                    result=summary, **sent)
    state = ShownState.FAILURE if status is JobStatus.FAILURE else ShownState.SUCCESS
    return made(state, done, total, result=summary, **sent)


def _text(raw: Raw) -> str:
    if raw is None:
        return ""
    return raw.decode() if isinstance(raw, bytes) else raw


def page_counts(result: dict[str, Any]) -> tuple[int, int]:
    """Pages read without error, and pages the result covers (read or failed).

    A page selection reads fewer pages than the document has: those are counted.
    """
    pages = result.get("pages", [])
    done = sum(1 for p in pages if "error" not in p)
    numbers = {p.get("number") for p in [*pages, *result.get("failed_pages", [])]}
    return done, len(numbers)
