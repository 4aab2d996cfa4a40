"""Task routing (a Celery router).

Jobs that name an engine go to that engine's queue; cancels and callbacks go to the
control queue.
"""

from __future__ import annotations

from typing import Any

from worker_config import CONTROL_QUEUE, queue_for_engine

# Light tasks that must not wait behind OCR work.
CONTROL_TASKS = ("ocr.cancel", "ocr.http_callback")


def route_task(name: str, args: Any, kwargs: dict[str, Any] | None, options: Any,
               task: Any = None, **_: Any) -> dict[str, str] | None:
    """Celery `task_routes` entry; None leaves the job on the default queue `ocr`."""
    if name in CONTROL_TASKS:
        return {"queue": CONTROL_QUEUE}
    engine = (kwargs or {}).get("engine")
    if name == "ocr.document" and isinstance(engine, str) and engine:
        return {"queue": queue_for_engine(engine)}
    return None
