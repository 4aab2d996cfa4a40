"""The Celery configuration derived from the settings, beside the app that uses it.

Runs in every process that builds an app: clients (send-only), the HTTP API, the
worker parent and its pool children, beat and Flower. Two classes the configuration
names live here too:

- `Scheduler`, beat's persistent scheduler (`beat_scheduler`). The Procfile keeps the
  schedule under `var/`, which only `make run` creates beforehand. Any other Procfile
  runner starts beat from a fresh checkout, so the scheduler makes the folder when it
  opens the schedule.
- `PrimarySentinelBackend`, Celery's Sentinel result backend on the primary connections
  of tasks/state/connection.py (`result_backend`, when the target is behind Sentinel).
  Celery's `SentinelBackend` opens its pool with redis-py's Sentinel-managed connection.
  Retrying a command after a failover, that connection can reconnect to the address it
  last used: the old primary, now a replica answering READONLY, until its retries run
  out. `PrimaryConnection` asks the Sentinels at every socket it opens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celery.backends.redis import SentinelBackend
from celery.beat import PersistentScheduler

from tasks.broker.channel import Hooks, register_hooks
from tasks.queue.quiet_events import UnheardEvents
from tasks.queue.routing import AMQP_MAX_PRIORITY, DEFAULT_QUEUE, PRIORITY_STEPS, priority_value
from tasks.settings import Settings
from tasks.state.connection import (
    PrimaryConnection,
    PrimarySSLConnection,
    broker_transport_options,
    celery_backend,
    celery_broker,
)

# kombu's retry of a message publish while the broker is unreachable: about 30 s of
# backoff (0.1 s, 0.6 s, ... up to 3 s), then the task retries (tasks/state/boundary.py).
# Celery's event exchange (its default, named here once): Flower's task and worker
# events, left quiet while nobody hears them (tasks/queue/quiet_events.py).
EVENT_EXCHANGE = "celeryev"

PUBLISH_RETRY_POLICY = {"max_retries": 14, "interval_start": 0.1, "interval_step": 0.5,
                        "interval_max": 3.0}
# The tasks that read one page, under the page time limits: a fanned-out page, and a page
# read again by the escalation engine.
PAGE_TASKS = ("ocr.pdf_page", "ocr.escalate_page")


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings derived from `settings` (see Celery's configuration reference).

    What a sending app needs and a worker's own; the pool size, which depends on the
    engine the worker loads, is `worker_app_config` below.
    """
    return {
        **_broker(settings),
        **_backend(settings),
        # JSON only: no pickle anywhere, for messages and results alike.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "result_expires": settings.result_ttl,
        # Not extended: that would store each job's kwargs (passwords, inputs) in Redis.
        "result_extended": False,
        "task_track_started": True,
        "task_default_queue": DEFAULT_QUEUE,
        "task_routes": ("tasks.queue.routing.route_task",),
        # At-least-once: ack after the task ran, requeue when the child died under it.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_default_priority": priority_value(settings, "normal"),
        **_broker_options(settings),
        # Reconnect forever to the broker, retry publishes and result writes through a
        # broker or Redis restart instead of losing them.
        "task_publish_retry": True,
        "task_publish_retry_policy": PUBLISH_RETRY_POLICY,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "result_backend_always_retry": True,
        "result_backend_max_retries": 30,
        "redis_retry_on_timeout": True,
        "redis_socket_keepalive": True,
        "redis_backend_health_check_interval": 30,
        # Limits are the executing worker's own: a VLM worker runs with its own env.
        "task_soft_time_limit": settings.soft_time_limit,
        "task_time_limit": settings.hard_time_limit,
        "task_annotations": {name: {
            "soft_time_limit": settings.page_soft_time_limit,
            "time_limit": settings.page_hard_time_limit} for name in PAGE_TASKS},
        "worker_max_tasks_per_child": settings.max_tasks_per_child or None,
        # Measured as growth over the child's RSS once its engine loaded (the pool
        # class adds that baseline in each child: tasks/queue/pool.py).
        "worker_max_memory_per_child": settings.max_memory_per_child_mb * 1024 or None,
        "worker_pool": "tasks.queue.pool:TaskPool",
        "worker_consumer": "tasks.queue.brokers:Consumer",  # RabbitMQ's 405 is retried
        "worker_proc_alive_timeout": settings.proc_alive_timeout,
        # Flower: a task's sent event from its sender; the workers' own task events
        # are off until Flower turns them on (its `enable_events`, every 5 s while it
        # runs): with no one watching, a task costs Redis no event PUBLISHes.
        "worker_send_task_events": False,
        "task_send_sent_event": True,
        "event_exchange": EVENT_EXCHANGE,
        "worker_hijack_root_logger": True,
        # Each worker also consumes its own direct queue `<node>.dq2`: the every-host
        # model audit sends one copy to one worker per host (maintenance_tasks.py).
        "worker_direct": True,
        # Beat: the model-directory audit (tasks/queue/maintenance_tasks.py).
        "timezone": settings.schedule_timezone,
        "beat_schedule": _beat_schedule(settings),
        "beat_scheduler": f"{__name__}:{Scheduler.__name__}",  # makes var/ for the schedule
    }


def _backend(settings: Settings) -> dict[str, Any]:
    """The result backend: the stores' Redis; behind Sentinel, on the primary connections."""
    config = celery_backend(settings.redis_target)
    if settings.redis_target.is_sentinel:
        config["result_backend"] = sentinel_backend_url(config["result_backend"])
    return config


def _broker(settings: Settings) -> dict[str, Any]:
    """The broker's URL and, on Redis, the project's transport (atomic fetch, dead letters).

    How Redis is reached (TLS, Sentinel) is tasks/state/connection.py's to say.
    """
    target = settings.broker_target
    if target is None:
        return {"broker_url": settings.broker}
    transport = ("tasks.broker.sentinel_transport:SentinelTransport" if target.is_sentinel
                 else "tasks.broker.transport:Transport")
    return {**celery_broker(target), "broker_transport": transport}


# Quorum queues (OCR_RABBITMQ_QUEUE_TYPE=quorum): every queue Celery declares is one,
# on a topic exchange, so that a countdown (a retry's backoff) waits in RabbitMQ's
# delay queues (Celery's native delayed delivery, quorum too) instead of in a worker
# that holds the message meanwhile. No x-max-priority (quorum queues refuse it): each
# priority has a queue of its own (tasks/queue/routing.py).
QUORUM = {"task_default_queue_type": "quorum", "task_create_missing_queue_type": "quorum",
          "task_default_exchange_type": "topic",
          "task_create_missing_queue_exchange_type": "topic",
          "broker_native_delayed_delivery_queue_type": "quorum"}


def _broker_options(settings: Settings) -> dict[str, Any]:
    if settings.broker_is_amqp:
        # Publisher confirms: a job is sent once RabbitMQ has taken it (on quorum
        # queues: once a majority of the nodes holds it).
        options: dict[str, Any] = {"broker_transport_options": {"confirm_publish": True}}
        if settings.quorum_queues:
            return {**options, **QUORUM}
        # Every queue Celery declares (engine queues, OCR_QUEUES) gets priorities.
        return {**options, "task_queue_max_priority": AMQP_MAX_PRIORITY}
    target = settings.broker_target
    assert target is not None  # a broker that is not RabbitMQ is Redis
    return {"broker_transport_options": {
        # Sentinel: the primary's name and the Sentinels' own password and TLS.
        **broker_transport_options(target),
        # tasks/broker/fetching.py: refused messages go to the dead-letter list.
        "ocr_max_message_bytes": settings.max_message_bytes,
        "ocr_accept_content": ("application/json",),
        "ocr_dead_letter_max": settings.dead_letter_max,
        "ocr_dead_letter_ttl": settings.dead_letter_ttl,
        # kombu's own defaults, spelled out: any stock Celery/kombu client then
        # pushes to the lists the workers read (a custom `sep` would strand its
        # messages).
        "priority_steps": PRIORITY_STEPS,
        # The worker's queue cycle turns after each message it takes (the fetch order,
        # tasks/broker/fetch_script.py): a queue's backlog holds no other queue's pages.
        "queue_order_strategy": "round_robin",
        # One value for the cluster, larger than every worker's hard limits
        # (Settings.check_worker): a running job is never delivered twice.
        "visibility_timeout": settings.visibility_timeout,
        # One worker of the fleet looks for jobs past the visibility timeout every 5 s:
        # each asks every 5 s, the first takes the look (tasks/broker/qos.py).
        # kombu's default is 10 s x a throttle of 10: a dead worker's jobs waited up to
        # 100 s more than the timeout.
        "unacked_restore_interval": 5,
        "unacked_restore_throttle": 1,
        # An event that reached no subscriber (no Flower, no `celery events`): its kind
        # is not published again by this process for a few seconds, but for a task's
        # endings and a worker's coming and going. Remote control is always published.
        # A worker's close leaves the messages of its running tasks unacked (the
        # visibility timeout restores them, never while they run), and restores the rest.
        # Code, not settings: handed over by name (a `stats` reply carries the options).
        "ocr_hooks": register_hooks(Hooks(
            fanout_gate=UnheardEvents((EVENT_EXCHANGE,), settings.events_quiet_seconds),
            running_tasks=running_task_ids)),
    }}


def running_task_ids() -> set[str]:
    """Ids of the tasks this worker's pool children run now (Celery's worker state)."""
    from celery.worker import state

    return {str(request.id) for request in tuple(state.active_requests)}


def _beat_schedule(settings: Settings) -> dict[str, Any]:
    if settings.audit_schedule is None:
        return {}
    from celery.schedules import crontab

    return {"ocr-audit-models": {
        "task": "ocr.audit_models",
        "schedule": crontab.from_string(settings.audit_schedule),
        "kwargs": {"prune": settings.prune_on_schedule, "scheduled": True},
        "options": {"queue": DEFAULT_QUEUE},
    }}


IDLE_WAIT = 10.0


def worker_app_config(settings: Settings, engine: str) -> dict[str, Any]:
    """`celery_config` plus what only a worker's app needs: its pool, by its `engine`.

    The engine class says its pool (`pool_kind`, `concurrency`, `page_time_limit`). A
    threads pool enforces no time limits: the engine bounds each request, and
    tasks/queue/thread_limits.py a page's whole read and the process's memory growth
    (it recycles). Set on the app, so `celery worker` without -P/-c uses it; a command
    line wins.
    """
    from tasks.engines import engine_class  # a worker's alone: clients load no engine

    adapter = engine_class(engine, settings)
    config = {**celery_config(settings),
              "worker_concurrency": settings.concurrency or adapter.concurrency(settings)}
    if not settings.broker_is_amqp:
        # A worker's publish short of replicas goes on: it is no pending publish (its
        # message is on the primary, and its ack, replicated after it, shows whether it
        # survived).
        # An idle worker waits on its wake-up keys IDLE_WAIT s at a time: each publish
        # pushes to them, and a message pushed without a wake-up waits at most that long.
        config["broker_transport_options"] = {**config["broker_transport_options"],
                                              "ocr_refuse_pending": False,
                                              "ocr_idle_wait": IDLE_WAIT}
    limit = adapter.page_time_limit(settings)
    if adapter.pool_kind == "threads" and settings.worker_role != "control":
        config["worker_pool"] = "tasks.queue.pool:ThreadTaskPool"
        if limit is not None:
            config["task_annotations"] = {name: {
                "soft_time_limit": limit, "time_limit": limit + 30} for name in PAGE_TASKS}
    return config


class Scheduler(PersistentScheduler):
    """`PersistentScheduler` that makes the schedule file's folder when it opens it."""

    def setup_schedule(self) -> None:
        Path(self.schedule_filename).parent.mkdir(parents=True, exist_ok=True)
        super().setup_schedule()


class PrimarySentinelBackend(SentinelBackend):
    """`SentinelBackend` whose connections (plain or TLS) follow the primary named now."""

    connection_class_ssl = PrimarySSLConnection  # what Celery sets for `rediss` options

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Read by redis-py's SentinelConnectionPool, which Celery's pool is built on.
        self.connparams.setdefault("connection_class", PrimaryConnection)


def sentinel_backend_url(url: str) -> str:
    """Celery's `result_backend` for a `sentinel://` URL: this module's class, then it."""
    return f"{PrimarySentinelBackend.__module__}:{PrimarySentinelBackend.__name__}+{url}"
