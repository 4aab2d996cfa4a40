"""The one retry policy of the queue's tasks: how many times, and how long between tries.

Runs wherever a task runs (worker pool children, the control worker). Job, page and
chunk tasks retry a retryable error (`OcrError.retryable`) with `retry_later`; the HTTP
callback task retries a failed POST with `retry_in` on the same backoff, for a time
(`OCR_CALLBACK_RETRY_SECONDS`: a receiver may be down for a while) rather than 5 times.

Exponential backoff (2 s doubling, 60 s cap) with "equal jitter": half of each step is
waited for sure, the other half is random. Full jitter could spend all five retries
within a few seconds, shorter than a broker or an inference server takes to come back;
this way they span at least 31 s.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from tasks.errors import PrimaryReplaced
from tasks.queue.message_headers import carried

if TYPE_CHECKING:
    from celery import Task
    from kombu import Producer

    from tasks.settings import Settings

MAX_RETRIES = 5
RETRY_BACKOFF = 2
RETRY_BACKOFF_MAX = 60


def backoff_step(retries: int) -> float:
    """The backoff step before retry number `retries + 1` (before jitter)."""
    return float(min(RETRY_BACKOFF_MAX, RETRY_BACKOFF * 2**retries))


def countdown(retries: int) -> float:
    """Seconds to wait before retry number `retries + 1`: half the step, plus up to half."""
    step = backoff_step(retries)
    return step / 2 + random.uniform(0, step / 2)


def retry_in(task: Task, exc: BaseException, most: int = MAX_RETRIES,
             producer: Producer | None = None) -> None:
    """Retry `task` after the policy's countdown; returns when its `most` retries are used.

    `producer`: the retry goes out through it (else through one of the app's pool).
    """
    retries = task.request.retries
    if retries >= most:
        return
    # Celery's retry keeps no custom header: the job's client (its lane) is carried on.
    through = {} if producer is None else {"producer": producer}
    raise task.retry(exc=exc, countdown=countdown(retries), max_retries=most,
                     headers=carried(task.request), **through)


def retry_later(task: Task, exc: BaseException) -> None:
    """Retry a job, page or chunk task for a retryable error; returns when retries are used up.

    After writes a Redis failover took (`PrimaryReplaced`), the retry goes out on a new
    broker connection, which asks the Sentinels for the primary: the pool's may still
    be on the replaced one, which would take the retry and throw it away with the rest.
    """
    most = max_retries(task.app.ocr_settings, task.app.ocr_engine)
    if not isinstance(exc, PrimaryReplaced):
        retry_in(task, exc, most)
        return
    with task.app.connection_for_write() as connection:  # connects only to publish
        retry_in(task, exc, most, producer=connection.Producer())


def max_retries(settings: Settings, engine: str) -> int:
    """MAX_RETRIES, or as many as fit in the engine's `retry_seconds` where it has one."""
    from tasks.engines import engine_class  # a worker's alone: clients load no engine

    seconds = engine_class(engine, settings).retry_seconds(settings)
    return MAX_RETRIES if seconds is None else retries_within(seconds)


def retries_within(seconds: float) -> int:
    """How many retries the backoff fits in `seconds` (each step at its mean, 3/4)."""
    spent, retries = 0.0, 0
    while True:
        spent += 0.75 * backoff_step(retries)
        if spent > seconds:
            return retries
        retries += 1
