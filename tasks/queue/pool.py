"""The worker's prefork pool, with the memory recycle limit measured as growth.

Celery's `worker_max_memory_per_child` is checked by billiard in each pool child after
every task, against the child's whole resident memory. A child that holds a 4 GB model
would then be recycled after every task. This pool subclass adds, in each child, the
child's RSS once `worker_process_init` (which loads the engine) has run to that limit:
the child is recycled when it has *grown* by more than OCR_MAX_MEMORY_PER_CHILD_MB.

Selected by `worker_pool` in `celery_config()` (tasks/queue/celery_config.py).
`ThreadTaskPool` is a vlm-api worker's (its pages wait on an inference server).
`GrowthWorker.on_loop_start` runs in each pool child, after billiard's `after_fork` ran
the initializer and before the child's work loop reads `max_memory_per_child`.
"""

from __future__ import annotations

import logging
from typing import Any

from billiard.compat import mem_rss
from celery.concurrency import asynpool, prefork, thread

log = logging.getLogger(__name__)


class GrowthWorker(asynpool.Worker):
    """A pool child whose memory limit counts from its RSS after the engine loaded."""

    def on_loop_start(self, pid: int) -> None:
        limit: int = getattr(self, "max_memory_per_child", None) or 0
        if limit > 0:
            baseline = mem_rss()
            if baseline > 0:
                self.max_memory_per_child = limit + baseline
                log.info("pool child %d: memory baseline %d MB; recycled above %d MB",
                         pid, baseline // 1024, (limit + baseline) // 1024)
        super().on_loop_start(pid)


class GrowthAsynPool(asynpool.AsynPool):
    Worker = GrowthWorker


class TaskPool(prefork.TaskPool):
    """Celery's prefork pool, recycling children on memory growth."""

    Pool = GrowthAsynPool


class ThreadTaskPool(thread.TaskPool):
    """Celery's thread pool, where a cancel's `terminate` is a no-op, not an error.

    A thread cannot be killed. A cancelled job ends at once all the same
    (tasks/lifecycle/cancel.py); its running pages end with the server's answer or at
    their own clock (tasks/engines/vlm/vlm_api_engine.py `PageClock`), and their late results are
    dropped because the job has ended.
    """

    def terminate_job(self, pid: Any, signal: Any = None) -> None:
        log.info("a cancelled page's thread runs on to its answer or its time limit; "
                 "its result is dropped")
