"""A fake engine whose pool child cannot publish a message while it ends a job.

Loaded by real workers as a plugin (OCR_ENGINE_PLUGINS, `failing-publish`); its text
only describes the image. Its `load` (in each pool child) makes every `send_task` of
that child raise kombu's `OperationalError` while a `JobEnder` ends a job: the broker
unreachable at that moment, as during a Sentinel failover. Each refused publish is
logged (`publish refused during an ending: <task name>`).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery
from kombu.exceptions import OperationalError

from tasks.lifecycle.job_exit import JobEnder
from tasks.settings import Settings
from tests.fake_engines import FakeEngine

log = logging.getLogger(__name__)


class FailingPublishEngine(FakeEngine):
    """A fake: `fake WxH mean=M`; no publish gets out of its child during an ending."""

    name = "failing-publish"

    @classmethod
    def load(cls, settings: Settings) -> FailingPublishEngine:
        ending = [0]
        send_task, end, finish = Celery.send_task, JobEnder.end, JobEnder._finish

        def refused(self: Celery, name: str, *args: Any, **kwargs: Any) -> Any:
            if ending[0]:
                log.warning("publish refused during an ending: %s", name)
                raise OperationalError("Error 111 connecting to 127.0.0.1. Connection "
                                       "refused.")
            return send_task(self, name, *args, **kwargs)

        def in_ending(method: Any) -> Any:
            def run(self: JobEnder, *args: Any, **kwargs: Any) -> Any:
                ending[0] += 1
                try:
                    return method(self, *args, **kwargs)
                finally:
                    ending[0] -= 1
            return run

        Celery.send_task = refused  # type: ignore[method-assign]
        JobEnder.end = in_ending(end)  # type: ignore[method-assign]
        JobEnder._finish = in_ending(finish)  # type: ignore[method-assign]
        return cls(float(os.environ.get("FAKE_PAGE_SECONDS", "0")))
