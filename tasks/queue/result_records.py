"""Celery's result record of a job, written as Celery writes it, in fewer commands.

Runs in worker processes. The record (`celery-task-meta-<id>`, JSON as Celery's Redis
backend encodes it) is what Celery clients read; the job's one exit
(tasks/lifecycle/job_exit.py) already makes sure one process ends a job, so the ending
writes it without Celery's read-before-write (a GET) and without a transaction: one
SETEX and its PUBLISH (for a Celery client blocked in `AsyncResult.get`). A job's
`STARTED` mark is the SETEX alone. Redis unreachable: retried as Celery retries its
own writes (`result_backend_always_retry`), then raised.
"""

from __future__ import annotations

from typing import Any


def store_result(app: Any, job_id: str, result: Any, state: str, *,
                 publish: bool = True) -> None:
    """Store `result` (a dict, or an exception for a failure) as the job's `state`."""
    backend = app.backend
    meta = backend._get_result_meta(result=backend.encode_result(result, state), state=state,
                                    traceback=None, request=None)
    meta["task_id"] = job_id
    key, value = backend.get_key_for_task(job_id), backend.encode(meta)
    ttl = int(backend.expires) if backend.expires else None

    def write() -> None:
        with backend.client.pipeline(transaction=False) as pipe:
            if ttl:
                pipe.set(key, value, ex=ttl)
            else:
                pipe.set(key, value)
            if publish:
                pipe.publish(key, value)
            pipe.execute()

    backend.ensure(write, ())
