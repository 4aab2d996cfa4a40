"""Poison-job guard: jobs that keep killing their worker child end as `worker_lost`.

Such a job is refused after OCR_MAX_DELIVERIES starts instead of looping forever.

Celery requeues a job whose child died (`task_reject_on_worker_lost`), and Redis has
no delivery counter of its own, so the starts of a message delivered again (kombu and
RabbitMQ mark it `redelivered`) are counted in Redis under the task id, the first run
(the one that died) included; a first delivery writes nothing. A run that returns in
any way (result, error, retry, ignore) clears its count; only runs that died under it
add up. A job cancelled while queued is not started, even by
a worker that restarted since (Celery's revoke list lives in memory). Runs in worker
pool children.
"""

from __future__ import annotations

from typing import Any

from celery import Task
from celery.exceptions import Ignore

from tasks.errors import TransientError, WorkerLost
from tasks.records.jobs import ResultRecord
from tasks.state.boundary import CONNECTION_ERRORS, transient
from tasks.state.connection import connect
from tasks.state.job_control import JobControl
from tasks.state.keys import delivery_key


class GuardedTask(Task):
    """Base class of the service's tasks: counts starts, refuses poison jobs.

    Subclasses decide what a refusal means for them (`refuse_cancelled`,
    `refuse_poison`); by default a cancelled task is marked revoked and a poison one
    fails with `worker_lost`.
    """

    abstract = True
    # Whether a cancel marks this task's own id (a job's); a page task's job is checked
    # by the task itself, with the job's other state.
    marks_own_cancel = True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        task_id = self.request.id
        if task_id is None or self.request.is_eager:
            return super().__call__(*args, **kwargs)
        settings = self.app.ocr_settings
        client = connect(settings.redis_target)  # the process's one client
        key = delivery_key(task_id)
        # A message delivered for the first time costs the guard nothing; one delivered
        # again (its child or host died under it) counts its starts, the first of them
        # included.
        again = bool((self.request.delivery_info or {}).get("redelivered"))
        try:
            with transient("the poison guard's Redis"):
                # A job's end claim and cancel mark, its STARTED record written and its
                # input read: one round trip.
                ended, cancelled = JobControl(client, settings.result_ttl).at_start(
                    task_id, self.started_record(task_id), self.start_input(kwargs)) \
                    if self.marks_own_cancel else (False, False)
                self.check_start(task_id, kwargs, ended)
                starts = 1
                if again and not cancelled:
                    # the run it died under, and this one: one SET (with its TTL)
                    first = client.set(key, 2, nx=True, ex=settings.result_ttl)
                    starts = 2 if first else int(client.incr(key))
                    if starts > settings.max_deliveries:
                        client.delete(key)
        except TransientError as exc:
            # Outside the task body, so the task's own retries do not see it: retry here.
            raise self.retry(exc=exc, countdown=5) from exc
        if cancelled:
            # Cancelled while queued; Celery's own revoke list may be gone with a restart.
            self.refuse_cancelled(task_id, kwargs)
        if starts > settings.max_deliveries:
            self.refuse_poison(task_id, kwargs, WorkerLost(
                f"the job's worker died on each of its {settings.max_deliveries} runs; "
                "it is not run again"))
        try:
            return super().__call__(*args, **kwargs)
        finally:
            if again:
                try:
                    client.delete(key)
                except CONNECTION_ERRORS:
                    pass  # the count expires with its TTL; this run returned, whatever it was

    def started_record(self, task_id: str) -> ResultRecord | None:
        """The task's STARTED record, written as it starts unless it ended or is cancelled.

        None (the default): nothing is written.
        """
        return None

    def start_input(self, kwargs: dict[str, Any]) -> tuple[str, int] | None:
        """The input blob to read with the task's start (its key, the most bytes read).

        Read in the start's round trip unless the task ended or is cancelled, and kept
        for the task's own read (tasks/state/sent_fields.py). None (the default): none.
        """
        return None

    def check_start(self, task_id: str, kwargs: dict[str, Any], ended: bool) -> None:
        """Hook run before anything else; raise Ignore to skip the task.

        `ended`: whether the task's id has ended (read with its cancel, where a cancel
        marks the task's own id; else False).
        """

    def refuse_cancelled(self, task_id: str, kwargs: dict[str, Any]) -> None:
        self.app.backend.mark_as_revoked(task_id, "cancelled")
        raise Ignore()

    def refuse_poison(self, task_id: str, kwargs: dict[str, Any], exc: WorkerLost) -> None:
        raise exc
