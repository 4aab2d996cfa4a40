"""The worker parent publishes which queues it consumes (tasks/state/liveness.py).

Runs in the worker parent only: `worker_ready` (first record, so a client sees the
worker as soon as it reads its queues), `heartbeat_sent` (every event heartbeat, 5 s,
from the consumer's own loop: a hung parent stops refreshing and drops out) and
`worker_shutdown` (the record goes at once). A failing write is logged and dropped:
the next heartbeat tries again. The record names the parent's pid; on a Redis broker,
the parent is the holder its fetches record, and its heartbeat drives the sweep of
dead holders' messages (tasks/broker/holders.py) and, at start, whether the node name
is free (`check_name_free`: two workers under one name would overwrite each other's
record every heartbeat). A worker started without `--hostname` is named from
WORKER_NAME at start (`node_name`), not by the shell that runs its command line.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import redis
from celery.signals import heartbeat_sent, worker_ready, worker_shutdown
from celery.utils.nodenames import default_nodename, host_format

from tasks.broker import holders, lanes
from tasks.broker.layout import LAYOUT_VERSION
from tasks.engines import engine_class
from tasks.metrics.queue_depth import QueueDepth
from tasks.queue.routing import queue_for_engine
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
        self._depth: QueueDepth | None = None
        self.client: redis.Redis | None = None  # the store's (REDIS_URL), with `store`
        self._languages: dict[str, list[str] | None] | None = None

    def store(self) -> WorkerPresence:
        if self._store is None:
            self.client = connect(self.settings.redis_target, patient=False)
            self._store = WorkerPresence(self.client, keep=self.settings.worker_liveness_seconds)
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

    def languages(self, queues: list[str]) -> dict[str, list[str] | None]:
        """The codes each engine this worker runs reads: its own and those it routes to.

        Read once (tessdata's files are listed, no engine is loaded): the gate refuses
        a job in a language no live worker reads.
        """
        if self._languages is None:
            own = self.consumer.app.ocr_engine
            names = [name for name in engine_names(tuple(self.settings.engine_plugins))
                     if name == own or queue_for_engine(name) in queues]
            self._languages = {name: engine_class(name, self.settings)
                               .languages(self.settings) for name in names}
        return self._languages

    def ready(self, consumer: Any) -> None:
        self.consumer = consumer
        self.refresh()
        if self.settings.broker_target is not None:
            holders.set_node(consumer.hostname)  # from now on its fetches name it

    def refresh(self) -> None:
        if self.consumer is None:
            return
        redis_broker = self.settings.broker_target is not None
        queues = self.queues()
        try:
            self.store().publish(self.consumer.hostname, queues,
                                 engines=engine_names(tuple(self.settings.engine_plugins)),
                                 pid=os.getpid(), host=socket.gethostname(),
                                 layout=LAYOUT_VERSION if redis_broker else None,
                                 languages=self.languages(queues))
        except redis.RedisError as exc:
            log.warning("worker presence not refreshed: %s", type(exc).__name__)
            return
        sweep = self.sweep()
        if sweep is not None:
            sweep.tick()
            if sweep.took:  # this interval's sweeper: it also looks at the queues' ages
                self.record_oldest()

    def record_oldest(self) -> None:
        """Store when the oldest message waiting in each live worker's queue was sent."""
        target, live = self.settings.broker_target, self.store()
        if target is None or self.client is None:
            return
        if self._depth is None:
            options = dict(self.consumer.app.conf.broker_transport_options or {})
            self._depth = QueueDepth(connect(target, patient=False), options)
        try:
            served = {q for queues in live.live_queues().values() for q in queues}
            self._depth.record_oldest(
                self.client, sorted(q for q in served | set(self.queues())
                                            if lanes.laned(q)), self.settings.result_ttl)
        except redis.RedisError as exc:
            log.warning("queues' oldest messages not looked at: %s", type(exc).__name__)

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


def node_name(given: str, env: Mapping[str, str]) -> str:
    """The worker's node name: `given`, or `<WORKER_NAME>@<host>` where none was given.

    None given is Celery's default, `celery@<host>` (the Procfile's line gives none):
    WORKER_NAME is read from the worker's own environment, so `WORKER_NAME=x LINE` run
    from a shell names it `x@<host>`; unset, `cpu@<host>`.
    """
    if given != default_nodename(None):
        return given
    return host_format(f"{env.get('WORKER_NAME') or 'cpu'}@%h")


def name_holder(record: Mapping[str, Any] | None, pid: int, host: str,
                alive: Callable[[int], bool]) -> Mapping[str, Any] | None:
    """The live presence record of another worker under this node name, or None.

    `record`: the name's record while live (`WorkerPresence.live_record`). It is this
    worker's own when it names this `pid` on this `host` (a container restarted in
    place), and a crashed one's when its pid on this host is dead (`alive`).
    """
    if record is None:
        return None
    held = record.get("pid")
    on_host = record.get("host") in (None, host)
    if held == pid and on_host or on_host and isinstance(held, int) and not alive(held):
        return None
    return record


def pid_alive(pid: int) -> bool:
    """Whether a process of that id runs on this host (signal 0: nothing is sent)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True


def check_name_free(settings: Settings, node: str) -> None:
    """Stop a worker whose node name a live worker holds (exit status 2, one line).

    Redis not answering: the worker starts (it waits for Redis as it would anyway).
    """
    try:
        record = WorkerPresence(connect(settings.redis_target, patient=False)).live_record(node)
    except redis.RedisError as exc:
        log.warning("node name %s not checked: %s", node, type(exc).__name__)
        return
    holder = name_holder(record, os.getpid(), socket.gethostname(), pid_alive)
    if holder is None:
        return
    print(f"worker refused to start: node name {node} is taken by a live worker (pid "
          f"{holder.get('pid', '?')} on host {holder.get('host', '?')}); give this one "
          "another WORKER_NAME", file=sys.stderr, flush=True)
    raise SystemExit(2)
