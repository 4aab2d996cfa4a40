"""The OCR job-queue service.

`tasks.app` is the Celery app, so `celery -A tasks worker|beat|flower` works. It is
built on first access from the environment (tasks/settings), not at import, and
given the gate (tasks/admission.py:admit) that the floors below it cannot import.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        from tasks.admission import admit
        from tasks.queue.app import get_app

        app = get_app()
        app.ocr_gate = admit  # the gate, for what the queue floor sends (the golden set)
        return app
    raise AttributeError(f"module 'tasks' has no attribute {name!r}")
