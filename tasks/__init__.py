"""The OCR job-queue service.

`tasks.app` is the Celery app, so `celery -A tasks worker|beat|flower` works. It is
built on first access from the environment (tasks/settings), not at import.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        from tasks.queue.app import get_app

        return get_app()
    raise AttributeError(f"module 'tasks' has no attribute {name!r}")
