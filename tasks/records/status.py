"""Job status, owned here: how a job ends, what a caller sees before, and Celery's states.

The ground floor: the worker's one exit, the client (`tasks/client.py`), the HTTP API,
`submit.py` and telemetry map from these names instead of spelling them; the Node
client mirrors them in its `STATUS` table (clients/node/ocr_client.js). Pure: imported
by every process, no Celery (Celery's state names are strings in its result backend).

- `JobStatus`: how a job ended, the `status` of its result.
- `WaitStatus`: what a caller sees of a job that has not ended (the HTTP API's QUEUED
  and RUNNING; the client's PENDING and TIMEOUT).
- `CeleryState`: the task states Celery's result backend stores (and the service's
  PROGRESS), with `from_celery`, the one translation into what a caller sees.
- `ShownState`: a job's `state` as callers are shown it beside its status: Celery's
  state in the service's words, never Celery's REVOKED.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    """How a job ended: the `status` of its result."""

    SUCCESS = "SUCCESS"
    PARTIAL = "PARTIAL"      # some pages failed; the input is kept for a retry
    FAILURE = "FAILURE"      # the job failed as a whole: `error` says why
    CANCELLED = "CANCELLED"  # pages finished before the cancel are kept

    @property
    def answered(self) -> bool:
        """The job read its input (every page, or some): its result has text."""
        return self in (JobStatus.SUCCESS, JobStatus.PARTIAL)

    @classmethod
    def of(cls, value: object) -> JobStatus:
        """The status a stored result names; FAILURE for anything else (never raises)."""
        try:
            return cls(str(value))
        except ValueError:
            return cls.FAILURE


class WaitStatus(StrEnum):
    """What a caller sees of a job that has not ended (never a result's own status)."""

    QUEUED = "QUEUED"    # HTTP API: sent, waiting in its queue
    RUNNING = "RUNNING"  # HTTP API: a worker is reading it
    PENDING = "PENDING"  # client: still queued, and no live worker serves its queue
    TIMEOUT = "TIMEOUT"  # client: the wait ended before the job did; it goes on


class CeleryState(StrEnum):
    """Task states in Celery's result backend (`celery.states`), and PROGRESS."""

    PENDING = "PENDING"    # unknown to the backend: queued (or never sent)
    RECEIVED = "RECEIVED"
    STARTED = "STARTED"    # stored by `ocr.document` as it starts
    PROGRESS = "PROGRESS"  # the service's own: pages done/total while a PDF's pages run
    RETRY = "RETRY"
    SUCCESS = "SUCCESS"    # the job's result is stored (its own status says how it ended)
    FAILURE = "FAILURE"
    REVOKED = "REVOKED"    # cancelled, or expired at its deadline before it started


class ShownState(StrEnum):
    """A job's `state` as callers are shown it: Celery's state in the service's words.

    `submit.py status --json`, `OcrClient.status` and the HTTP API's job record (its
    events too) show it beside `status`. Celery's REVOKED is never shown: a cancelled
    job's state is CANCELLED, as its status says; a job Celery dropped because its
    deadline passed before it started is FAILURE, the ending the worker gives it
    (`deadline_exceeded`, docs/tasks.md).
    """

    PENDING = "PENDING"
    RECEIVED = "RECEIVED"
    STARTED = "STARTED"
    PROGRESS = "PROGRESS"
    RETRY = "RETRY"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    CANCELLED = "CANCELLED"

    @classmethod
    def of(cls, state: str, expired: bool = False) -> ShownState:
        """The shown state of Celery `state`; `expired`: REVOKED at its deadline.

        A state Celery adds is shown as STARTED: its job is running (`from_celery`).
        """
        if state == CeleryState.REVOKED:
            return cls.FAILURE if expired else cls.CANCELLED
        try:
            return cls(state)
        except ValueError:
            return cls.STARTED


def celery_final(state: str) -> bool:
    """Whether a job in Celery `state` (or shown `state`) has ended (its result can be read)."""
    return state in (CeleryState.SUCCESS, CeleryState.FAILURE, CeleryState.REVOKED,
                     ShownState.CANCELLED)


def from_celery(state: str) -> JobStatus | WaitStatus:
    """What a caller sees of a job in Celery `state` (or shown `state`): the one translation.

    PENDING and RECEIVED are QUEUED; STARTED, PROGRESS, RETRY (and any state Celery
    adds) RUNNING; FAILURE is FAILURE and REVOKED (shown: CANCELLED) CANCELLED. SUCCESS
    means a result is stored: its own `status` (SUCCESS, PARTIAL, CANCELLED or FAILURE)
    is the answer, SUCCESS here only until it is read.
    """
    if state == CeleryState.SUCCESS:
        return JobStatus.SUCCESS
    if state == CeleryState.FAILURE:
        return JobStatus.FAILURE
    if state in (CeleryState.REVOKED, ShownState.CANCELLED):
        return JobStatus.CANCELLED
    if state in (CeleryState.PENDING, CeleryState.RECEIVED):
        return WaitStatus.QUEUED
    return WaitStatus.RUNNING
