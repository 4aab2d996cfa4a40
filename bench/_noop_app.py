"""A bare Celery app with one no-op task: the floor the queue_cost benchmark compares to.

Started by bench/queue_cost.py as `celery -A bench._noop_app worker` (prefork, 2
children) on a Redis database of its own (NOOP_REDIS_URL): Celery's and kombu's own
transport and result backend, none of the service's code.
"""

from __future__ import annotations

import os

from celery import Celery

URL = os.environ.get("NOOP_REDIS_URL", "redis://127.0.0.1:6379/0")
app = Celery("noop", broker=URL, backend=URL)
app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                worker_prefetch_multiplier=1, task_acks_late=True,
                broker_connection_retry_on_startup=True)


@app.task(name="noop.page")
def page(data: str) -> int:
    """Read nothing: the size of what it was sent (a null engine's page)."""
    return len(data)
