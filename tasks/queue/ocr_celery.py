"""The service's Celery app class: Celery carrying the settings it was built from.

Used in every process with an app (tasks/queue/app.py builds them); tasks and signal
handlers read `app.ocr_settings`, and `app.ocr_engine`: the engine a worker built from
this app loads, resolved once when the app is built (in the worker parent, before its
children fork: a recycled child loads the engine its parent chose).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from celery import Celery

from tasks.queue.display import job_kwargs_repr
from tasks.settings import Settings


class OcrCelery(Celery):
    """The Celery app, carrying the service settings it was built from."""

    ocr_settings: Settings
    ocr_engine: str

    def send_task(self, name: str, args: Any = None, kwargs: Any = None,
                  **options: Any) -> Any:
        """Celery's `send_task`; jobs are shown (logs, Flower) without payload or password."""
        # A page task of an encrypted URL input carries its password: masked too.
        if isinstance(kwargs, Mapping) and (name == "ocr.document" or "password" in kwargs):
            options["kwargsrepr"] = job_kwargs_repr(kwargs)
        return super().send_task(name, args, kwargs, **options)
