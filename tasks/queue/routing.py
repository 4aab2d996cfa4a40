"""Queues and priorities: where a message goes and in which order it is served.

`job_queue` is the one rule of where a job goes: the queue of the engine it names (or was
given by its worker, for its pages), else `ocr`. `worker_queues` is the one rule of which
job queues a worker consumes. `route_task` is Celery's router (that
rule for `ocr.document`; cancels and callbacks to the control queue, batch steps to the
batch queue); the client records the same queue beside the job, and a fanned-out PDF
sends its pages there. Runs in every process that sends or serves tasks (clients too:
nothing heavy is imported here).
"""

from __future__ import annotations

import re
from typing import Any

from tasks.settings import Settings

DEFAULT_QUEUE = "ocr"
# Light tasks (ocr.cancel; ocr.http_callback, which only fills the callback outbox): every
# worker consumes it, and the Procfile's `control` worker serves it, so a cancel never
# waits for a busy pool.
CONTROL_QUEUE = "ocr-control"
# A batch's driver steps (`ocr.batch_step`), which read the client's source and HEAD its
# documents: only the control worker consumes it, and holds each client's steps to a few
# of its threads (tasks/queue/batch_steps.py), so a slow origin never holds an OCR
# child nor the control worker's last thread.
BATCH_QUEUE = "ocr-batch-steps"
# Job priorities on the Redis transport: lower numbers are served first.
PRIORITIES = {"interactive": 0, "normal": 3, "batch": 6}
PRIORITY_STEPS = [0, 3, 6, 9]
# On RabbitMQ a higher number is served first (queues declared with x-max-priority):
# the same names, mirrored (`priority_value` picks the table of the broker).
AMQP_MAX_PRIORITY = 9
AMQP_PRIORITIES = {name: AMQP_MAX_PRIORITY - value for name, value in PRIORITIES.items()}

# Light tasks that must not wait behind OCR work, nor behind a batch's reads.
CONTROL_TASKS = ("ocr.cancel", "ocr.http_callback")
BATCH_TASKS = ("ocr.batch_step",)
# On quorum queues (OCR_RABBITMQ_QUEUE_TYPE=quorum), which keep no message priorities,
# each job queue has a queue of its own for these priorities (`<queue>.interactive`,
# `<queue>.batch`; `normal` stays in the queue itself): a worker consumes all three,
# each with its own prefetch, so a backlog of one priority never holds back another.
PRIORITY_QUEUES = ("interactive", "batch")
_PRIORITY_NAMES = {value: name for name, value in AMQP_PRIORITIES.items()}
DIRECT_SUFFIX = ".dq2"  # Celery's worker_direct queue of each node
DIRECT_EXCHANGE = "C.dq2"  # and their exchange (routing key: the node's name)
# The delay prefix of a routing key that went through RabbitMQ's native delayed delivery
# (kombu's native_delayed_delivery: 28 bits of the countdown, one word each).
_DELAY_PREFIX = re.compile(r"^(?:[01]\.){28}")


def queue_for_engine(engine: str) -> str:
    """The queue that jobs asking for `engine` go to; workers of that engine consume it."""
    return f"{DEFAULT_QUEUE}-{engine}"


def job_queue(engine: str | None) -> str:
    """Where a job (or a fanned-out PDF's pages) reading with `engine` goes; None: `ocr`.

    A worker consumes its own engine's queue, and those of the engines its language
    routing loads where it also takes jobs that name no engine (`worker_queues`).
    """
    return queue_for_engine(engine) if engine else DEFAULT_QUEUE


def engine_taken(engine: str, live: dict[str, set[str]], settings: Settings) -> str | None:
    """Who takes a job or page sent to `engine`'s queue now, or None: nobody will.

    `live`: the queues of each live worker (`WorkerPresence.live_queues`). "live": a
    live worker consumes the queue. "from_zero": none does, but the engine's pool scales
    from zero on its queue's depth (OCR_ENGINES_FROM_ZERO), so what waits there wakes it.
    """
    if any(job_queue(engine) in queues for queues in live.values()):
        return "live"
    return "from_zero" if engine in settings.engines_from_zero else None


def from_zero_engine(queue: str, from_zero: tuple[str, ...]) -> str | None:
    """The engine of `from_zero` (OCR_ENGINES_FROM_ZERO) whose job queue `queue` is."""
    return next((engine for engine in from_zero if job_queue(engine) == queue), None)


def worker_queues(told: list[str], engines: list[str], known: tuple[str, ...]) -> list[str]:
    """The job queues an OCR worker consumes, besides `ocr-control`.

    `told`: the job queues its `--queues` names (the Procfile's OCR_QUEUES). `engines`:
    its own engine, then those its language routing loads (`served_engines`).
    `known`: every engine name a job may give. Its own engine's queue is always one.
    A worker told only engines' queues takes only jobs that name an engine: it routes
    none, and consumes exactly what it is told (a GPU pool told `ocr-vlm-api` never
    takes a rapidocr job). A worker told any other queue (`ocr`) reads jobs that name
    no engine, routes them by language, and so also consumes its routed engines' queues,
    where a routed PDF sends its pages.
    """
    engine_queues = {queue_for_engine(name) for name in known}
    routes = any(queue not in engine_queues for queue in told)
    own = [queue_for_engine(name) for name in (engines if routes else engines[:1])]
    return list(dict.fromkeys([*told, *own]))


def priority_value(settings: Settings, name: str) -> int:
    """The message priority of a named priority on this broker."""
    return (AMQP_PRIORITIES if settings.broker_is_amqp else PRIORITIES)[name]


def is_priority_queue(queue: str) -> bool:
    """Whether `queue` is a job queue's queue of one priority (`ocr-x.interactive`)."""
    return queue.rpartition(".")[2] in PRIORITY_QUEUES and "." in queue


def is_job_queue(queue: str) -> bool:
    """A queue jobs, pages and their records go to: not control, steps, direct, per-priority."""
    return queue not in (CONTROL_QUEUE, BATCH_QUEUE) and not queue.endswith(DIRECT_SUFFIX) \
        and not is_priority_queue(queue)


def priority_queue(queue: str, priority: int | None) -> str:
    """On quorum queues: where a message of `priority` (RabbitMQ's number) for `queue` goes.

    `queue` itself for `normal`, for a number no named priority has, and for a queue
    that is not a job queue (control, direct, or already one priority's).
    """
    name = _PRIORITY_NAMES.get(priority) if priority is not None else None
    if name not in PRIORITY_QUEUES or not is_job_queue(queue):
        return queue
    return f"{queue}.{name}"


def with_priority_queues(queues: list[str]) -> list[str]:
    """`queues` and, for each job queue among them, its queues of each priority."""
    return list(dict.fromkeys(q for queue in queues for q in (
        [queue, *(f"{queue}.{p}" for p in PRIORITY_QUEUES)] if is_job_queue(queue)
        else [queue])))


def route_task(name: str, args: Any, kwargs: dict[str, Any] | None, options: Any,
               task: Any = None, **_: Any) -> dict[str, str] | None:
    """Celery `task_routes` entry; None leaves the job on the default queue `ocr`."""
    if name in CONTROL_TASKS:
        return {"queue": CONTROL_QUEUE}
    if name in BATCH_TASKS:
        return {"queue": BATCH_QUEUE}
    engine = (kwargs or {}).get("engine")
    if name == "ocr.document" and isinstance(engine, str) and engine:
        return {"queue": job_queue(engine)}
    return None


def quorum_destination(name: str, args: Any, kwargs: Any,
                       options: dict[str, Any]) -> dict[str, Any]:
    """A message's send options on quorum queues: its priority's queue (`priority_queue`).

    A retry names no queue but its delivery's exchange and routing key; on quorum
    queues it is sent to the queue that routing key names (the delay prefix of a
    countdown it waited out removed), so that Celery's native delayed delivery routes
    its countdown back to that queue rather than the default one.
    """
    if options.get("exchange") == DIRECT_EXCHANGE:
        return options  # a task for one worker (`<node>.dq2`): a classic queue
    options = dict(options)
    queue = options.get("queue")
    routing_key = options.get("routing_key")
    if queue is None and isinstance(routing_key, str) and routing_key:
        queue = _DELAY_PREFIX.sub("", routing_key, count=1)
        options.pop("routing_key")
        options.pop("exchange", None)
    if queue is None:
        queue = (route_task(name, args, kwargs, options) or {}).get("queue", DEFAULT_QUEUE)
    if isinstance(queue, str):
        options["queue"] = priority_queue(queue, options.get("priority"))
    return options
