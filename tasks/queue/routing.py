"""Task routing: jobs that name an engine go to that engine's queue (Celery router)."""

from __future__ import annotations

from typing import Any

from worker_config import queue_for_engine


def route_task(name: str, args: Any, kwargs: dict[str, Any] | None, options: Any,
               task: Any = None, **_: Any) -> dict[str, str] | None:
    """Celery `task_routes` entry; None leaves the job on the default queue `ocr`."""
    engine = (kwargs or {}).get("engine")
    if name == "ocr.document" and isinstance(engine, str) and engine:
        return {"queue": queue_for_engine(engine)}
    return None
