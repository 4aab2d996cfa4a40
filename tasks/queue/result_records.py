"""Celery's result record of a job, written as Celery writes it, in fewer commands.

Runs in worker processes. The record (`celery-task-meta-<id>`, JSON as Celery's Redis
backend encodes it) is what Celery clients read; the job's one exit
(tasks/lifecycle/job_exit.py) already makes sure one process ends a job, so the ending
writes it without Celery's read-before-write (a GET) and without a transaction: one
SETEX and its PUBLISH (for a Celery client blocked in `AsyncResult.get`). A job's
`STARTED` mark is the SETEX alone. Redis unreachable: retried as Celery retries its
own writes (`result_backend_always_retry`), then raised. `result_record` builds the
record alone, for the state store to write with a job's start or end claim
(`JobControl.at_start`, `JobControl.claim_end`), in their round trip. A cache hit's
record refers to its source's pages (`Outcome.stored`); `whole_result` reads it whole.
"""

from __future__ import annotations

from typing import Any

from celery import states

from tasks.records.jobs import SOURCE_FIELD, ResultRecord, resolved


def result_record(app: Any, job_id: str, result: Any, state: str) -> ResultRecord:
    """The job's record for `state` (`result`: a dict, or an exception for a failure)."""
    backend = app.backend
    # The fields Celery's backend writes for a task (`result_extended` adds none without
    # the request, which the service never passes): made here, without its config reads.
    meta = {"status": state, "result": backend.encode_result(result, state),
            "traceback": None, "children": backend.current_task_children(),
            "date_done": app.now().isoformat() if state in states.READY_STATES else None,
            "task_id": job_id}
    key = backend.get_key_for_task(job_id)  # bytes, as Celery's key-value backends make it
    return ResultRecord(key.decode() if isinstance(key, bytes) else str(key),
                        backend.encode(meta), int(backend.expires) if backend.expires else None)


def store_result(app: Any, job_id: str, result: Any, state: str, *,
                 publish: bool = True) -> None:
    """Store `result` (a dict, or an exception for a failure) as the job's `state`."""
    backend = app.backend
    record = result_record(app, job_id, result, state)

    def write() -> None:
        with backend.client.pipeline(transaction=False) as pipe:
            if record.ttl:
                pipe.set(record.key, record.text, ex=record.ttl)
            else:
                pipe.set(record.key, record.text)
            if publish:
                pipe.publish(record.key, record.text)
            pipe.execute()

    backend.ensure(write, ())


def whole_result(app: Any, result: dict[str, Any]) -> dict[str, Any]:
    """A stored result whole: a cache hit's pages read from its source job's record."""
    source = result.get(SOURCE_FIELD)
    if not source:
        return result
    stored = app.AsyncResult(str(source)).result
    return resolved(result, stored if isinstance(stored, dict) else None)
