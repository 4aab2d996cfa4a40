"""Construction of the Celery app from the settings.

Runs in every process that talks to the queue: clients, worker parent and children,
beat and Flower.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from celery import Celery

from tasks.queue.display import job_kwargs_repr
from worker_config import Settings, celery_config

TASK_MODULES = ("tasks.queue.document_tasks", "tasks.queue.maintenance_tasks")


class OcrCelery(Celery):
    """The Celery app, carrying the service settings it was built from."""

    ocr_settings: Settings

    def send_task(self, name: str, args: Any = None, kwargs: Any = None,
                  **options: Any) -> Any:
        """Celery's `send_task`; jobs are shown (logs, Flower) without payload or password."""
        if name == "ocr.document" and isinstance(kwargs, Mapping):
            options["kwargsrepr"] = job_kwargs_repr(kwargs)
        return super().send_task(name, args, kwargs, **options)


def create_app(settings: Settings) -> OcrCelery:
    """A configured app; worker-side signal handlers are connected here."""
    app = OcrCelery("ocr", include=list(TASK_MODULES), set_as_current=True)
    app.ocr_settings = settings
    app.conf.update(celery_config(settings))
    # The remote-control command must be registered in the worker and in the
    # `celery control` command line alike, so it is imported with the app.
    import tasks.queue.control  # noqa: F401
    from tasks.queue.signals import connect_signals

    connect_signals(settings)
    from tasks.queue.telemetry import connect_telemetry

    connect_telemetry(settings)  # after connect_signals: its handlers run first
    from tasks.queue.endings import connect_parent_endings

    connect_parent_endings(app)
    from tasks.queue.transport import connect_refusals

    connect_refusals(app)
    from tasks.queue._log_privacy import hide_task_results

    hide_task_results()
    return app


_app: OcrCelery | None = None


def get_app() -> OcrCelery:
    """The process's app, built from the environment on first use."""
    global _app
    if _app is None:
        _app = create_app(Settings.from_env())
    return _app
