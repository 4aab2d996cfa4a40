"""A recycled pool child's replacement starts within a quarter second, exit missed or not.

Celery starts a replacement when a child's process sentinel closes; where the sentinel
closes before the kernel lets the child be reaped, only the pool's periodic check
starts it (celery/celery#9588), every 5 s in Celery: a task written to the child just
before it exited waited that long (the null-engine ceiling of bench/queue_cost.py lost
3-4 s in about one round of four; bench/README.md). The worker's pool checks every
`MAINTAIN_EVERY` s.
"""

from __future__ import annotations

from celery.concurrency import asynpool

from tasks.queue.pool import MAINTAIN_EVERY, GrowthAsynPool


def test_the_pool_checks_for_exited_children_every_quarter_second() -> None:
    pool = object.__new__(GrowthAsynPool)  # the timers read no state of the pool
    ours = {getattr(fun, "__name__", ""): every for fun, every in pool.timers.items()}
    celerys = {getattr(fun, "__name__", ""): every
               for fun, every in asynpool.AsynPool.timers.fget(pool).items()}
    assert ours["maintain_pool"] == MAINTAIN_EVERY <= 0.25 < celerys["maintain_pool"]
    assert set(ours) == set(celerys)  # Celery's other timers kept
