"""`OcrClient.wait`'s loop: jobs' endings learnt from their notices, not by polling.

Runs in client processes (submit.py, the Python client, the HTTP API's threads): one
blocking XREAD waits on every pending job's ending notice (tasks/state/job_notices.py);
statuses are read only for a progress callback and as a rare sweep; workers' presence
is read as `OcrClient.wait` describes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from tasks.errors import JobNotFound, ScalingFromZero, TransientError
from tasks.queue.routing import from_zero_engine
from tasks.records.status import WaitStatus
from tasks.state.boundary import CONNECTION_ERRORS
from tasks.state.connection import connect
from tasks.state.job_notices import EndingWatch

if TYPE_CHECKING:
    from tasks.settings import Settings
    from tasks.state.job_state import JobProgress, JobStateReader

ProgressCallback = Callable[[str, "JobProgress"], None]
WorkersCallback = Callable[[set[str], dict[str, set[str]]], None]


class Waiter(Protocol):
    """What the loop asks of its client (`OcrClient`)."""

    settings: Settings
    states: JobStateReader
    no_worker_grace: float
    worker_recheck: float

    def results(self, job_ids: list[str]) -> dict[str, dict[str, Any]]: ...
    def live_queues(self) -> dict[str, set[str]]: ...
    def recorded_queues(self, job_ids: list[str]) -> dict[str, str]: ...
    def no_worker_record(self, job_id: str, queue: str) -> dict[str, Any]: ...
    def filename(self, job_id: str) -> str: ...


# What a look at Redis may raise while it restarts or fails over: the next look tries again.
LOOK_AGAIN: tuple[type[BaseException], ...] = (TransientError, *CONNECTION_ERRORS)
# The sweep of the statuses, for a job that ended without a notice: 1 s after the
# start, then twice as long each time, up to SWEEP_MAX s.
FIRST_SWEEP, SWEEP_MAX = 1.0, 10.0
SWEEP_READS = 500  # jobs whose statuses one round trip of a sweep reads


def not_found(job_id: str) -> JobNotFound:
    """The error of a job id with no record (`OcrClient.status`, `wait(must_exist=True)`)."""
    return JobNotFound(f"no job {job_id!r}: it was never sent, or its records expired")


def wait(client: Waiter, ids: Iterable[str], on_progress: ProgressCallback | None,
         timeout: float | None, poll: float, *, watch_workers: bool,
         on_workers: WorkersCallback | None, must_exist: bool = False,
         ) -> dict[str, dict[str, Any]]:
    """`OcrClient.wait` (its docstring says what it does)."""
    pending = list(dict.fromkeys(ids))
    results: dict[str, dict[str, Any]] = {}
    start = time.monotonic()
    deadline = None if timeout is None else start + timeout
    watch = watch_workers or on_workers is not None
    # Only jobs whose record names their queue are watched: a job another Celery
    # client sent (send_task to any queue) has no record to say where it waits. Read
    # at the first look at the workers, FIRST_SWEEP s in: a job ended by then needs none.
    queue_of: dict[str, str] | None = None
    next_check, orphaned_since, sweep = start + FIRST_SWEEP, None, FIRST_SWEEP
    next_sweep = start + sweep
    next_progress = start if on_progress is not None else None
    endings = EndingWatch(connect(client.settings.redis_target, patient=False))

    def until_next(now: float) -> float:
        """Seconds the next read may block: to the next look, progress or the deadline."""
        wakes = [next_sweep, *([next_check] if watch else []),
                 *([deadline] if deadline is not None else []),
                 *([next_progress] if next_progress is not None else [])]
        return max(0.001, min(wakes) - now)

    # The first read blocks too (a notice already written answers it at once), unless
    # progress is to be shown first.
    block = 0.0 if next_progress is not None else until_next(start)
    while pending:
        try:  # Redis restarting or failing over: the next turn looks again
            ended = endings.ended(pending, block=block)
            now = time.monotonic()
            looks = ((next_progress is not None and now >= next_progress)
                     or now >= next_sweep)
            for job_id, status in _statuses(client, pending) if looks else ():
                if must_exist and not status.known:
                    raise not_found(job_id)
                if on_progress is not None:
                    on_progress(job_id, status)
                if status.final:
                    ended.add(job_id)
            if next_progress is not None and now >= next_progress:
                next_progress = now + max(poll, 1.0)
            if now >= next_sweep:
                sweep = min(SWEEP_MAX, sweep * 2)
                next_sweep = now + sweep
            done = [j for j in pending if j in ended]
            for job_id, result in (client.results(done) if done else {}).items():
                results[job_id] = result
                pending.remove(job_id)
                if on_progress is not None:
                    on_progress(job_id, client.states.read(job_id))
            # presence records: one read, no broadcast
            live = (client.live_queues() if pending and watch
                    and time.monotonic() >= next_check else None)
            if live is not None and queue_of is None:
                queue_of = client.recorded_queues(pending)
            failed = False
        except LOOK_AGAIN:
            live, failed = None, True
        now = time.monotonic()
        if live is not None and queue_of is not None:
            queues = {job_id: queue_of[job_id] for job_id in pending if job_id in queue_of}
            if on_workers is not None:
                on_workers(set(queues.values()), live)
            # A job for a pool at zero waits for its first worker: never `no_worker`.
            orphans = {job_id: queue for job_id, queue in unserved(queues, live).items()
                       if from_zero_engine(queue, client.settings.engines_from_zero) is None}
            orphaned_since = (orphaned_since or now) if orphans else None
            if (watch_workers and orphaned_since is not None
                    and now - orphaned_since >= client.no_worker_grace):
                for job_id, queue in orphans.items():
                    results[job_id] = client.no_worker_record(job_id, queue)
                    pending.remove(job_id)
            next_check = now + (2.0 if orphans else client.worker_recheck)
        if not pending:
            break
        if deadline is not None and now >= deadline:
            for job_id in pending:
                results[job_id] = {"id": job_id, "status": WaitStatus.TIMEOUT.value,
                                   "filename": client.filename(job_id), "error": {
                    "code": "wait_timeout", "retryable": True,
                    "message": "the job had not finished when waiting stopped"}}
            break
        block = until_next(now)
        if failed:  # no blocking read to wait in: a pause before looking again
            time.sleep(min(block, 0.5))
            block = 0.0
    return results


def _statuses(client: Waiter, job_ids: list[str]) -> list[tuple[str, JobProgress]]:
    """Each job's progress, read `SWEEP_READS` jobs a round trip."""
    statuses: list[tuple[str, JobProgress]] = []
    for first in range(0, len(job_ids), SWEEP_READS):
        some = job_ids[first:first + SWEEP_READS]
        statuses.extend(zip(some, client.states.read_many(some), strict=True))
    return statuses


def scaling_from_zero(engine: str) -> ScalingFromZero:
    """What a job waiting for `engine`'s pool at zero is told (status, `submit.py`)."""
    return ScalingFromZero(f"engine {engine!r}: no worker is live yet, its pool is scaling "
                           "from zero (OCR_ENGINES_FROM_ZERO); the job stays queued")


def unserved(queues: dict[str, str], live: dict[str, set[str]]) -> dict[str, str]:
    """The jobs of `queues` (job id -> its queue) that no live worker consumes."""
    served = set().union(*live.values())
    return {job_id: queue for job_id, queue in queues.items() if queue not in served}
