"""Worker signal handlers: load engines in pool children, clean up after each task.

`worker_process_init`, `task_postrun` and `worker_process_shutdown` run in pool
children; `celeryd_after_setup` runs in the worker parent and touches no engine there
(MLX evaluated before a fork deadlocks the children).
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import (
    celeryd_after_setup,
    task_postrun,
    worker_process_init,
    worker_process_shutdown,
)

from tasks import runtime
from tasks.images import configure_pillow
from worker_config import Settings, queue_for_engine

log = logging.getLogger(__name__)
_connected = False


def connect_signals(settings: Settings) -> None:
    """Connect the handlers once per process, bound to `settings`."""
    global _connected
    if _connected:
        return
    _connected = True

    def on_after_setup(sender: str, instance: Any, **_: Any) -> None:
        queue = queue_for_engine(settings.resolve_engine())
        instance.app.amqp.queues.select_add(queue)
        log.info("worker %s serves engine queue %s", sender, queue)

    def on_process_init(**_: Any) -> None:
        configure_pillow(settings)
        runtime.init_process(settings)

    def on_postrun(**_: Any) -> None:
        runtime.current(settings).after_task()

    def on_process_shutdown(**_: Any) -> None:
        runtime.shutdown_process()

    celeryd_after_setup.connect(on_after_setup, weak=False)
    worker_process_init.connect(on_process_init, weak=False)
    task_postrun.connect(on_postrun, weak=False)
    worker_process_shutdown.connect(on_process_shutdown, weak=False)
