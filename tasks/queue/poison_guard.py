"""Poison-job guard: jobs that keep killing their worker child end as `worker_lost`.

Such a job is refused after OCR_MAX_DELIVERIES starts instead of looping forever.

Celery requeues a job whose child died (`task_reject_on_worker_lost`), and Redis has
no delivery counter of its own, so each start is counted in Redis under the task id.
A run that returns in any way (result, error, retry, ignore) clears its count; only
runs that died under it add up. A job cancelled while queued is not started, even by
a worker that restarted since (Celery's revoke list lives in memory). Runs in worker
pool children.
"""

from __future__ import annotations

from typing import Any

from celery import Task
from celery.exceptions import Ignore

from tasks.errors import TransientError, WorkerLost
from tasks.state.boundary import CONNECTION_ERRORS, transient
from tasks.state.keys import DELIVERY_PREFIX
from tasks.state.stores import JobControl, connect


class GuardedTask(Task):
    """Base class of the service's tasks: counts starts, refuses poison jobs."""

    abstract = True
    _guard_redis: Any = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        task_id = self.request.id
        if task_id is None or self.request.is_eager:
            return super().__call__(*args, **kwargs)
        settings = self.app.ocr_settings
        if GuardedTask._guard_redis is None:
            GuardedTask._guard_redis = connect(settings.redis_url)
        client = GuardedTask._guard_redis
        key = DELIVERY_PREFIX + task_id
        try:
            with transient("the poison guard's Redis"):
                if JobControl(client, settings.result_ttl).is_cancelled(task_id):
                    # Cancelled while queued; Celery's revoke list may be gone with a restart.
                    self.app.backend.mark_as_revoked(task_id, "cancelled")
                    raise Ignore()
                pipe = client.pipeline()
                pipe.incr(key)
                pipe.expire(key, settings.result_ttl)
                starts = int(pipe.execute()[0])
                if starts > settings.max_deliveries:
                    client.delete(key)
                    raise WorkerLost(f"the job's worker died on each of its "
                                     f"{settings.max_deliveries} runs; it is not run again")
        except TransientError as exc:
            # Outside the task body, so Celery's autoretry does not see it: retry here.
            raise self.retry(exc=exc, countdown=5) from exc
        try:
            return super().__call__(*args, **kwargs)
        finally:
            try:
                client.delete(key)
            except CONNECTION_ERRORS:
                pass  # the count expires with its TTL; this run returned, whatever it was
