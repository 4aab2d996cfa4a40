"""Worker signal handlers: load engines in pool children, clean up after each task.

`worker_process_init`, `task_prerun`, `task_postrun` and `worker_process_shutdown` run
in pool children; `celeryd_init` (settings check) and `celeryd_after_setup` run in the
worker parent and touch no engine there when the pool forks (MLX evaluated before a
fork deadlocks the children). Each child also gets a `release.ChildKeeper`: engine
release on request or when idle, and the Redis registration of its loaded models.

A thread pool (a vlm-api worker: tasks/queue/celery_config.py) has no children and no
`worker_process_init`: `celeryd_after_setup` makes the worker process's one engine
registry, `threaded`, and the task signals run in the pool's threads. Its engine holds
no model (the inference server does), so it has no keeper.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from celery import states
from celery.app import trace
from celery.concurrency import prefork
from celery.signals import (
    celeryd_after_setup,
    celeryd_init,
    task_postrun,
    task_prerun,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)

from tasks import tracing
from tasks.engines import release, resident
from tasks.engines.lang_routing import served_engines
from tasks.lifecycle import fetcher
from tasks.models.registry import ModelRegistry
from tasks.pipeline.images import configure_pillow
from tasks.pipeline.pdf import empty_store
from tasks.queue import brokers, presence, thread_limits
from tasks.queue.callback_sender import start_sender
from tasks.queue.routing import (
    BATCH_QUEUE,
    CONTROL_QUEUE,
    is_job_queue,
    queue_for_engine,
    worker_queues,
)
from tasks.settings import Settings
from tasks.state.connection import connect

if TYPE_CHECKING:
    from tasks.queue.ocr_celery import OcrCelery

log = logging.getLogger(__name__)
_connected = False
_keeper: release.ChildKeeper | None = None


def drop_traceback(exc: Any) -> None:
    """Cut an ignored task's exception from its traceback (pool child, `task_postrun`).

    Celery's tracer keeps the `Ignore` it caught, whose traceback holds the tracer's own
    frame, which holds the exception: a cycle only the cyclic collector frees, so the
    frames of every fanned-out PDF job piled up in the child (~0.55 MB a job in the
    soak) until a full collection that a growing heap makes rarer. Celery has already
    copied what it reports of the traceback.
    """
    if isinstance(exc, BaseException):
        exc.__traceback__ = None


def service_name(settings: Settings) -> str:
    """The `service.name` of a worker's traces (unless OTEL_SERVICE_NAME names one)."""
    return "ocr-control" if settings.worker_role == "control" else "ocr-worker"


def forks(worker: Any) -> bool:
    """Whether the worker's pool runs tasks in forked children (prefork), not threads."""
    pool = getattr(worker, "pool_cls", None)
    return isinstance(pool, type) and issubclass(pool, prefork.TaskPool)


def connect_signals(app: OcrCelery, settings: Settings) -> None:
    """Connect the handlers once per process, bound to the worker's app and `settings`."""
    global _connected
    if _connected:
        return
    _connected = True

    def on_init(sender: str, instance: Any, **_: Any) -> None:
        brokers.check_worker(settings)
        node = presence.node_name(sender, os.environ)
        if node != sender:  # named before Celery builds its queues and consumer
            instance.hostname = node
            trace.setup_worker_optimizations(instance.app, node)
        presence.check_name_free(settings, node)

    def on_after_setup(sender: str, instance: Any, **_: Any) -> None:
        release.node_name = sender
        if not forks(instance):  # a prefork pool's children start their own
            tracing.start(service_name(settings), httpx=True)
        if settings.worker_role == "control":
            # batch steps are served here alone, never by an OCR worker's pool
            brokers.consume(instance.app, [BATCH_QUEUE])
            log.info("worker %s is a control worker: no engine, queues %s and %s", sender,
                     CONTROL_QUEUE, BATCH_QUEUE)
        else:
            told = [q for q in instance.app.amqp.queues.consume_from if is_job_queue(q)]
            served = served_engines(app.ocr_engine, settings)
            queues = worker_queues(told, served, settings.all_engine_names())
            brokers.consume(instance.app, [*queues, CONTROL_QUEUE])
            routed = [q for q in map(queue_for_engine, served[1:]) if q in queues]
            log.info("worker %s serves engine queue %s%s; its job queues: %s", sender,
                     queue_for_engine(app.ocr_engine),
                     f" and {', '.join(routed)} (its language routing)" if routed else "",
                     ", ".join(queues))
            if not forks(instance):
                configure_pillow(settings)
                # The worker process is the one that reads: its registry, and a keeper
                # that registers its models (no idle release: nothing held to free,
                # and no signal into Celery's own main thread).
                keeper = keep_models(0)
                keeper.start(resident.init_process(settings, app.ocr_engine,
                                                   on_load=keeper.on_load, threaded=True))
                thread_limits.set_baseline()  # memory growth counts from here
                log.info("worker %s reads with engine %s in a pool of %s threads", sender,
                         app.ocr_engine, instance.concurrency)
        fetcher.preload(settings)  # before a prefork pool's children are forked
        brokers.prepare_queues(instance.app, settings, sender)

    def keep_models(idle_seconds: float) -> release.ChildKeeper:
        global _keeper
        models = ModelRegistry(connect(settings.redis_target), settings.model_heartbeat_seconds)
        _keeper = release.ChildKeeper(models, settings.model_dir, idle_seconds,
                                      settings.model_heartbeat_seconds, settings.model)
        return _keeper

    def on_ready(sender: Any = None, **_: Any) -> None:
        if settings.worker_role == "control":  # the callback outbox's sender, once up
            start_sender(sender.app, settings, str(sender.hostname))

    def on_process_init(**_: Any) -> None:
        brokers.fresh_connections(app, settings)
        tracing.start(service_name(settings), httpx=True)  # after the fork, never before
        configure_pillow(settings)
        keeper = keep_models(settings.idle_unload_seconds)
        keeper.install()
        keeper.start(resident.init_process(settings, app.ocr_engine,
                                           on_load=keeper.on_load))

    def on_prerun(**_: Any) -> None:
        if _keeper is not None:
            _keeper.task_started()

    def on_postrun(state: str | None = None, retval: Any = None, **_: Any) -> None:
        if state == states.IGNORED:
            drop_traceback(retval)
        empty_store()
        engines = resident.existing()
        if engines is not None:  # a control worker loads no engine
            engines.after_task()
        if _keeper is not None:
            _keeper.record_use()
            _keeper.task_finished()
        if engines is not None and engines.threaded:  # a thread pool's recycling
            thread_limits.after_task(settings.max_memory_per_child_mb,
                                     app.conf.worker_concurrency or 1)

    def on_worker_shutdown(**_: Any) -> None:
        if resident.existing() is not None and _keeper is not None:  # a thread pool's
            on_process_shutdown()
        tracing.shutdown()  # a thread pool's (a prefork parent traces nothing)

    def on_process_shutdown(**_: Any) -> None:
        resident.shutdown_process()
        if _keeper is not None:
            _keeper.stop()
        tracing.shutdown()  # its spans exported before the process goes

    celeryd_init.connect(on_init, weak=False)
    celeryd_after_setup.connect(on_after_setup, weak=False)
    worker_ready.connect(on_ready, weak=False)
    worker_process_init.connect(on_process_init, weak=False)
    task_prerun.connect(on_prerun, weak=False)
    task_postrun.connect(on_postrun, weak=False)
    worker_process_shutdown.connect(on_process_shutdown, weak=False)
    worker_shutdown.connect(on_worker_shutdown, weak=False)
