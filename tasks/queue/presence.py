"""The worker parent publishes which queues it consumes (tasks/state/liveness.py).

Runs in the worker parent only: `worker_ready` (first record, so a client sees the
worker as soon as it reads its queues), `heartbeat_sent` (every event heartbeat, 5 s,
from the consumer's own loop: a hung parent stops refreshing and drops out) and
`worker_shutdown` (the record goes at once). A failing write is logged and dropped:
the next heartbeat tries again. The record names the parent's pid; on a Redis broker,
the parent is the holder its fetches record, and its heartbeat drives the sweep of
dead holders' messages (tasks/broker/holders.py).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

import redis
from celery.signals import heartbeat_sent, worker_ready, worker_shutdown

from tasks.broker import holders
from tasks.broker.layout import LAYOUT_VERSION
from tasks.records.engines import engine_names
from tasks.state.connection import connect
from tasks.state.liveness import PRESENCE_TTL, WorkerPresence

if TYPE_CHECKING:
    from tasks.settings import Settings

log = logging.getLogger(__name__)


class Presence:
    """The worker parent's presence record: its node name and its consumer's queues."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.consumer: Any = None
        self._store: WorkerPresence | None = None
        self._sweep: holders.HolderSweep | None = None

    def store(self) -> WorkerPresence:
        if self._store is None:
            self._store = WorkerPresence(connect(self.settings.redis_target, patient=False),
                                         keep=self.settings.worker_liveness_seconds)
        return self._store

    def sweep(self) -> holders.HolderSweep | None:
        """The sweep of dead holders (a Redis broker only), built at the first heartbeat."""
        target = self.settings.broker_target
        if self._sweep is None and target is not None and self.consumer is not None:
            options = dict(self.consumer.app.conf.broker_transport_options or {})
            self._sweep = holders.HolderSweep(
                connect(target, patient=False),
                connect(self.settings.redis_target, patient=False),
                self.settings.worker_liveness_seconds, PRESENCE_TTL,
                prefix=str(options.get("global_keyprefix") or ""))
        return self._sweep

    def queues(self) -> list[str]:
        """The queues the consumer reads now (add_consumer/cancel_consumer included)."""
        task_consumer = getattr(self.consumer, "task_consumer", None)
        if task_consumer is not None:
            return [q.name for q in task_consumer.queues]
        return list(self.consumer.app.amqp.queues.consume_from)

    def ready(self, consumer: Any) -> None:
        self.consumer = consumer
        self.refresh()
        if self.settings.broker_target is not None:
            holders.set_node(consumer.hostname)  # from now on its fetches name it

    def refresh(self) -> None:
        if self.consumer is None:
            return
        redis_broker = self.settings.broker_target is not None
        try:
            self.store().publish(self.consumer.hostname, self.queues(),
                                 engines=engine_names(tuple(self.settings.engine_plugins)),
                                 pid=os.getpid(),
                                 layout=LAYOUT_VERSION if redis_broker else None)
        except redis.RedisError as exc:
            log.warning("worker presence not refreshed: %s", type(exc).__name__)
            return
        sweep = self.sweep()
        if sweep is not None:
            sweep.tick()

    def withdraw(self) -> None:
        if self.consumer is None:
            return
        try:
            self.store().withdraw(self.consumer.hostname)
        except redis.RedisError as exc:
            log.warning("worker presence not withdrawn: %s", type(exc).__name__)


_presence: Presence | None = None


def connect_presence(settings: Settings) -> Presence:
    """Connect the handlers once per process, bound to `settings`."""
    global _presence
    if _presence is not None:
        return _presence
    presence = _presence = Presence(settings)
    worker_ready.connect(lambda sender, **_: presence.ready(sender), weak=False)
    heartbeat_sent.connect(lambda **_: presence.refresh(), weak=False)
    worker_shutdown.connect(lambda **_: presence.withdraw(), weak=False)
    return presence
