"""Queues and priorities: where a message goes and in which order it is served.

`job_queue` is the one rule of where a job goes: the queue of the engine it names (or was
given by its worker, for its pages), else `ocr`. `route_task` is Celery's router (that
rule for `ocr.document`; cancels and callbacks to the control queue); the client records
the same queue beside the job, and a fanned-out PDF sends its pages there. Runs in every
process that sends or serves tasks (clients too: nothing heavy is imported here).
"""

from __future__ import annotations

from typing import Any

from tasks.settings import Settings

DEFAULT_QUEUE = "ocr"
# Light tasks (ocr.cancel, HTTP callbacks without a job queue): every worker consumes it, and the
# Procfile's `control` worker serves only it, so a cancel never waits for a busy pool.
CONTROL_QUEUE = "ocr-control"
# Job priorities on the Redis transport: lower numbers are served first.
PRIORITIES = {"interactive": 0, "normal": 3, "batch": 6}
PRIORITY_STEPS = [0, 3, 6, 9]
# On RabbitMQ a higher number is served first (queues declared with x-max-priority):
# the same names, mirrored (`priority_value` picks the table of the broker).
AMQP_MAX_PRIORITY = 9
AMQP_PRIORITIES = {name: AMQP_MAX_PRIORITY - value for name, value in PRIORITIES.items()}

# Light tasks that must not wait behind OCR work.
CONTROL_TASKS = ("ocr.cancel", "ocr.http_callback")


def queue_for_engine(engine: str) -> str:
    """The queue that jobs asking for `engine` go to; workers of that engine consume it."""
    return f"{DEFAULT_QUEUE}-{engine}"


def job_queue(engine: str | None) -> str:
    """Where a job (or a fanned-out PDF's pages) reading with `engine` goes; None: `ocr`.

    Every worker that can run an engine consumes its queue: its own engine's, and those
    its language routing loads (`tasks.engines.lang_routing.served_engines`).
    """
    return queue_for_engine(engine) if engine else DEFAULT_QUEUE


def priority_value(settings: Settings, name: str) -> int:
    """The message priority of a named priority on this broker."""
    return (AMQP_PRIORITIES if settings.broker_is_amqp else PRIORITIES)[name]


def route_task(name: str, args: Any, kwargs: dict[str, Any] | None, options: Any,
               task: Any = None, **_: Any) -> dict[str, str] | None:
    """Celery `task_routes` entry; None leaves the job on the default queue `ocr`."""
    if name in CONTROL_TASKS:
        return {"queue": CONTROL_QUEUE}
    engine = (kwargs or {}).get("engine")
    if name == "ocr.document" and isinstance(engine, str) and engine:
        return {"queue": job_queue(engine)}
    return None
