"""The Celery app Flower runs (`celery -A scripts.flower_app flower`, scripts/run_flower.py).

The service's app, built from the environment on first access (as `tasks.app` is), and
Flower's broker view reading the queues through the project's connection factory
(tasks/queue/flower_view.py), so it works behind Sentinel and follows a failover.
Imported from the repository root by the `celery` command, which keeps that root on
the import path only while it imports this module: what it needs is imported here.
"""

from __future__ import annotations

from typing import Any

from tasks.queue.app import get_app
from tasks.queue.flower_view import install


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        app = get_app()
        install(app.ocr_settings, dict(app.conf.broker_transport_options or {}))
        return app
    raise AttributeError(f"module 'scripts.flower_app' has no attribute {name!r}")
