"""The broker's channel: kombu's virtual channel, composed of a publisher, a fetcher and the QoS.

Runs in every process that uses the Redis broker (clients, the API, beat, workers,
Flower, the exporter). kombu's virtual transport calls the hooks it is made to be
extended by (`_put`, `_get`, `_size`, `_purge`, `_delete`, `_has_queue`, `_new_queue`,
`_queue_bind`, `get_table`, `_put_fanout`); this class keeps what every channel holds
(the connection pools, the exchange bindings, the queues' lists, which queues it
consumes) and hands the rest to its parts:

- `publisher` (tasks/broker/publishing.py): a message to its lane or list, the
  wake-up, the replicas' WAIT;
- `fetcher` (tasks/broker/fetching.py): the atomic fetch, the checks before decoding,
  the wait on wake-ups;
- `broadcasts` (tasks/broker/broadcasts.py): fanout exchanges over PUB/SUB;
- `qos` (tasks/broker/qos.py, made by kombu): unacked messages, acked and restored.

The names are those stock kombu clients use (a queue's lists, `_kombu.binding.<exchange>`,
the `/<db>.<exchange>` topics), so that they and Celery clients of other services share
the queues. A declare's count is one EXISTS where nothing waits, a binding two SADDs.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import redis
from kombu.transport import virtual
from kombu.transport.base import to_rabbitmq_queue_arguments
from kombu.utils.encoding import bytes_to_str
from kombu.utils.scheduling import cycle_by_name

from tasks.broker import binding_expiry, connections, layout
from tasks.broker.broadcasts import Broadcasts, FanoutGate, FanoutTopic
from tasks.broker.fetching import Fetcher
from tasks.broker.poller import FETCH, LISTEN, socket_of
from tasks.broker.publishing import Publisher
from tasks.broker.qos import QoS
from tasks.broker.refusals import OnRefused

log = logging.getLogger(__name__)


@dataclass
class Hooks:
    """What the queue layer hands the transport: code, not settings.

    Not transport options: Celery's remote control `stats` reply carries those as JSON,
    and a function in them leaves a worker without a reply. A channel finds its hooks
    by the name its transport option `ocr_hooks` gives (`register_hooks`).
    """

    # What a fanout publish asks first (broadcasts.FanoutGate; None: every one is sent).
    fanout_gate: FanoutGate | None = None
    # The ids of the tasks running now, which a close leaves unacked (qos.py; None:
    # none runs).
    running_tasks: Callable[[], set[str]] | None = None
    # What hears of each refused message (refusals.py).
    on_refused: OnRefused | None = None


_HOOKS: dict[str, Hooks] = {}


def register_hooks(hooks: Hooks) -> str:
    """Keep `hooks` for the channels of this process: the name for `ocr_hooks`."""
    name = f"hooks-{id(hooks):x}"
    _HOOKS[name] = hooks
    return name


def hooks_named(name: str | None) -> Hooks:
    """The hooks registered under `name` (none: empty hooks of their own)."""
    return _HOOKS.get(name or "") or Hooks()


HEALTH_CHECK_INTERVAL = 25


class Channel(virtual.Channel):
    """A channel on Redis: pools, bindings, queue lists; its publisher, fetcher and QoS."""

    QoS = QoS
    supports_fanout = True
    keyprefix_queue = layout.BINDING_PREFIX + "%s"
    keyprefix_permanent = layout.BINDING_PERMANENT_PREFIX + "%s"  # never swept
    sep = layout.SEP
    priority_steps = layout.PRIORITY_STEPS
    unacked_mutex_key = layout.UNACKED_MUTEX_KEY
    unacked_mutex_expire = 300
    unacked_restore_limit: int | None = None
    unacked_restore_interval = 10
    unacked_restore_throttle = 10
    visibility_timeout = 3600
    socket_timeout: float | None = None
    socket_connect_timeout: float | None = None
    socket_keepalive: bool | None = None
    socket_keepalive_options: dict[int, int] | None = None
    retry_on_timeout: bool | None = None
    max_connections = 10
    health_check_interval = HEALTH_CHECK_INTERVAL
    client_name: str | None = None
    fanout_prefix: bool | str = True
    fanout_patterns = True
    global_keyprefix = ""
    queue_order_strategy = "round_robin"
    brpop_timeout = 1.0
    ocr_binding_min_ttl = binding_expiry.MIN_BINDING_TTL_MS  # an expiring binding's least
    # The name of the queue layer's `Hooks` (`register_hooks`; None: no hooks).
    ocr_hooks: str | None = None
    # A publish waits for this many replicas (WAIT), at most `ocr_replica_timeout` s;
    # short of them a client's publish raises ReplicaMissing, a worker's goes on.
    ocr_min_replicas = 0
    ocr_replica_timeout = 2.0
    ocr_refuse_pending = True
    ocr_max_message_bytes = 0            # 0: no size check
    ocr_accept_content: tuple[str, ...] = ("application/json",)
    ocr_dead_letter_max = 1000
    ocr_dead_letter_ttl = 7 * 86400
    # Seconds an idle consumer waits on its wake-ups in one BLPOP (0: kombu's
    # `brpop_timeout`, 1 s; workers: tasks/queue/celery_config.py IDLE_WAIT).
    ocr_idle_wait = 0.0

    from_transport_options: tuple[str, ...] = (  # type: ignore[assignment]
        *virtual.Channel.from_transport_options,
        "sep", "unacked_mutex_key",
        "unacked_mutex_expire", "visibility_timeout", "unacked_restore_limit",
        "unacked_restore_interval", "unacked_restore_throttle", "fanout_prefix",
        "fanout_patterns", "global_keyprefix", "socket_timeout", "socket_connect_timeout",
        "socket_keepalive", "socket_keepalive_options", "queue_order_strategy",
        "max_connections", "health_check_interval", "retry_on_timeout", "priority_steps",
        "client_name", "ocr_binding_min_ttl", "ocr_hooks", "ocr_min_replicas",
        "ocr_replica_timeout", "ocr_refuse_pending", "ocr_max_message_bytes", "ocr_accept_content",
        "ocr_dead_letter_max", "ocr_dead_letter_ttl", "ocr_idle_wait")

    # queue -> (exchange, routing key) of every fanout binding this process declared:
    # shared by the process's channels (Celery declares on one, consumes on another).
    _fanout_queues: dict[str, tuple[str, str]] = {}

    _pool: redis.ConnectionPool | None = None
    _watched_pool: redis.ConnectionPool | None = None
    _in_poll: Any = None       # the connection whose fetch reply is due
    _listening: Any = None     # the connection subscribed to this channel's broadcasts
    keyprefix_fanout = "/{db}."

    @property
    def ocr_fanout_gate(self) -> FanoutGate | None:
        """What a fanout publish asks first (the queue layer's hooks)."""
        return hooks_named(self.ocr_hooks).fanout_gate

    @property
    def ocr_running_tasks(self) -> Callable[[], set[str]] | None:
        """The ids of the tasks running now (the queue layer's hooks)."""
        return hooks_named(self.ocr_hooks).running_tasks

    @property
    def ocr_on_refused(self) -> OnRefused | None:
        """What hears of each refused message (the queue layer's hooks)."""
        return hooks_named(self.ocr_hooks).on_refused

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.publisher = Publisher(self)
        self.fetcher = Fetcher(self)
        self.broadcasts = Broadcasts(self)
        super().__init__(*args, **kwargs)
        if self.global_keyprefix:
            raise connections.BrokerOptionRefused(
                "global_keyprefix is not taken by this transport: give each service its "
                "own Redis database or ACL user instead")
        self.active_fanout_queues: set[str] = set()
        self.auto_delete_queues: set[str] = set()
        self._fanout_to_queue: dict[str, str] = {}
        self._expires: dict[str, int] = {}
        self._queue_cycle = cycle_by_name(self.queue_order_strategy)()
        if isinstance(self.fanout_prefix, str):
            self.keyprefix_fanout = self.fanout_prefix
        elif not self.fanout_prefix:
            self.keyprefix_fanout = ""
        self.brpop_timeout = float(getattr(self.connection, "brpop_timeout", 1.0))
        try:
            self.commands.ping()
        except Exception:
            self._disconnect_pools()
            raise
        self.connection.cycle.add(self)
        self.connection_errors = self.connection.connection_errors
        if self.ocr_idle_wait:
            # the health check allows a wait `brpop_timeout` plus its interval
            self.brpop_timeout = float(self.ocr_idle_wait)
        self.fetcher.settle()

    # -- connections ---------------------------------------------------------------

    def _pool_params(self) -> dict[str, Any]:
        if self.connection is None or self.connection.client is None:
            # Redis went away while this channel held unacked messages, and its
            # connection was released: a connection error the close ignores (the
            # messages, still unacked, are restored after the visibility timeout).
            raise redis.exceptions.ConnectionError(
                "the broker connection was released; its unacked messages are "
                "restored after the visibility timeout")
        params = connections.pool_params(self.connection.client, self,
                                         self.connection.default_port)
        self.keyprefix_fanout = self.keyprefix_fanout.format(db=params["db"])
        return params

    def _make_pool(self, params: dict[str, Any],
                   on_disconnect: Callable[[Any], None] | None = None,
                   ) -> redis.ConnectionPool:
        """A pool for `params` (Sentinel's channel asks the Sentinels instead)."""
        return connections.make_pool(params, on_disconnect)

    @property
    def pool(self) -> redis.ConnectionPool:
        if self._pool is None:
            self._pool = self._make_pool(self._pool_params())
        return self._pool

    @property
    def watched_pool(self) -> redis.ConnectionPool:
        """The pool of the connections the poller watches (fetches, broadcasts)."""
        if self._watched_pool is None:
            self._watched_pool = self._make_pool(self._pool_params(),
                                                 self.connection.cycle.forget)
        return self._watched_pool

    @cached_property
    def commands(self) -> redis.Redis:
        """The client for commands that answer at once (publishes, acks, restores)."""
        return redis.Redis(connection_pool=self.pool)

    @contextlib.contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        yield client if client is not None else self.commands

    @cached_property
    def client(self) -> redis.Redis:
        """The client of this channel's fetches: one connection, watched by the poller."""
        return redis.Redis(connection_pool=self.watched_pool, single_connection_client=True)

    @cached_property
    def subclient(self) -> Any:
        """The PUB/SUB client of this channel's broadcasts."""
        return redis.Redis(connection_pool=self.watched_pool).pubsub()

    def fetch_connection(self) -> Any:
        return self.client.connection

    def listen_connection(self) -> Any:
        return self.subclient.connection

    def fetching(self) -> bool:
        return bool(self._in_poll) and self._in_poll is self.client.connection

    def listening(self) -> bool:
        connection = self.subclient.connection
        return self._listening is not None and self._listening is connection \
            and socket_of(connection) is not None

    def connection_dropped(self, kind: str, connection: Any) -> None:
        """The poller dropped `connection` (closed, or found dead)."""
        if kind == FETCH and self._in_poll is connection:
            self._in_poll = None
            self.fetcher.dropped()
        if kind == LISTEN and self._listening is connection:
            self._listening = None

    def check_health(self, now: float) -> None:
        """Broadcast connections ping the server; an overdue fetch is dropped."""
        subclient = self.__dict__.get("subclient")
        if subclient is not None and self._listening is not None:
            subclient.check_health()
        self.fetcher.check_health(now)

    def _disconnect_pools(self) -> None:
        for pool in (self._pool, self._watched_pool):
            if pool is not None:
                pool.disconnect()
        self._pool = self._watched_pool = None
        for name in ("client", "subclient", "commands"):
            self.__dict__.pop(name, None)

    # -- the parts' doors: the poller's, the QoS's and the queue layer's -----------

    def fetch_start(self, timeout: float | None = None) -> None:
        self.fetcher.start(timeout)

    def fetch_read(self, **options: Any) -> bool:
        return self.fetcher.read(**options)

    def fetch_follows(self) -> bool:
        return self.fetcher.follows()

    def subscribe(self) -> None:
        self.broadcasts.subscribe()

    def receive(self) -> bool:
        return self.broadcasts.receive()

    def fanout_topic(self, exchange: str, routing_key: str) -> FanoutTopic:
        return self.broadcasts.topic(exchange, routing_key)

    def broadcast(self, exchange: str, routing_key: str, message: Any) -> None:
        """A kombu envelope made by the caller, published as `_put_fanout` publishes."""
        self.broadcasts.put(exchange, message, routing_key)

    def together(self) -> contextlib.AbstractContextManager[None]:
        return self.publisher.together()

    def restore_payload(self, payload: Any, exchange: str, routing_key: str, pipe: Any,
                        leftmost: bool = False) -> None:
        self.publisher.restore(payload, exchange, routing_key, pipe, leftmost)

    # -- queues and bindings (kombu's virtual hooks) -------------------------------

    def _lists(self, queue: str) -> tuple[str, ...]:
        return layout.queue_lists(queue, tuple(self.priority_steps), self.sep)

    def _new_queue(self, queue: str, auto_delete: bool = False, **kwargs: Any) -> None:
        if auto_delete:
            self.auto_delete_queues.add(queue)
        expires = (kwargs.get("arguments") or {}).get("x-expires")
        if expires:
            self._expires[queue] = int(expires)
        else:
            self._expires.pop(queue, None)

    def prepare_queue_arguments(self, arguments: Any, **kwargs: Any) -> Any:
        """`Queue(expires=...)` as x-expires, and the like (as kombu's Redis channel)."""
        return to_rabbitmq_queue_arguments(arguments, **kwargs)

    def _queue_bind(self, exchange: str, routing_key: str, pattern: str,
                    queue: str) -> None:
        if self.typeof(exchange).type == "fanout":
            self._fanout_queues[queue] = (exchange, (routing_key or "").replace("#", "*"))
        member = binding_expiry.member(self.sep, routing_key, pattern, queue)
        if queue in self._expires:  # swept once its consumers stop (binding_expiry.py)
            binding_expiry.bind(self, exchange, member, queue)
            return
        # Two commands, no MULTI: listed permanent first, so that no sweep (ours or a
        # stock kombu's) ever finds the table's entry without it.
        with self.commands.pipeline(transaction=False) as pipe:
            pipe.sadd(self.keyprefix_permanent % exchange, member)
            pipe.sadd(self.keyprefix_queue % exchange, member)
            pipe.execute()

    def get_table(self, exchange: str) -> list[tuple[str, ...]]:
        members = self.commands.smembers(self.keyprefix_queue % exchange)
        return [tuple(bytes_to_str(member).split(self.sep)) for member in members or ()]

    def _delete(self, queue: str, exchange: str, routing_key: str, pattern: str,
                *args: Any, **kwargs: Any) -> None:
        self.auto_delete_queues.discard(queue)
        member = binding_expiry.member(self.sep, routing_key, pattern, queue)
        with self.conn_or_acquire(kwargs.get("client")) as client, client.pipeline() as pipe:
            pipe.srem(self.keyprefix_queue % exchange, member)
            pipe.srem(self.keyprefix_permanent % exchange, member)
            pipe.delete(*self._lists(queue))
            pipe.execute()

    def _has_queue(self, queue: str, **kwargs: Any) -> bool:
        return bool(self.commands.exists(*self._lists(queue)))

    def _size(self, queue: str) -> int:
        """queue_declare's message count: one EXISTS where nothing waits, else counted.

        Every declare of a queue asks it (a publisher's first publish to it, each
        process's), and most find the queue empty: none of its lists or rings exists.
        """
        if not self.commands.exists(*self.publisher.holding_keys(queue)):
            return 0
        return self.publisher.count(queue)

    def _purge(self, queue: str) -> int:
        with self.commands.pipeline() as pipe:
            for name in self._lists(queue):
                pipe.llen(name)
                pipe.delete(name)
            return sum(int(size) for size in pipe.execute()[::2])

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        self.publisher.put(queue, message)

    def _put_fanout(self, exchange: str, message: Any, routing_key: str,
                    **kwargs: Any) -> None:
        self.broadcasts.put(exchange, message, routing_key)

    def _get(self, queue: str, timeout: float | None = None) -> dict[str, Any]:
        return self.fetcher.get(queue)

    # -- consuming -----------------------------------------------------------------

    def basic_consume(self, queue: str, *args: Any, **kwargs: Any) -> Any:
        self.fetcher.no_ack[queue] = bool(kwargs.get("no_ack", args[0] if args else False))
        self.fetcher.reach()
        if queue in self._fanout_queues:
            exchange, _ = self._fanout_queues[queue]
            self.active_fanout_queues.add(queue)
            self._fanout_to_queue[exchange] = queue
        tag = super().basic_consume(queue, *args, **kwargs)
        self._queue_cycle.update(self.active_queues)
        return tag

    def basic_cancel(self, consumer_tag: str) -> Any:
        # A cancel while the poller reads waits for the read's end (a message read
        # for a cancelled consumer would have no callback).
        cycle = getattr(self.connection, "cycle", None)
        if cycle is not None and cycle.in_read:
            cycle.after_read.append(lambda: self._cancel(consumer_tag))
            return None
        return self._cancel(consumer_tag)

    def _cancel(self, consumer_tag: str) -> Any:
        queue = self._tag_to_queue.get(consumer_tag)
        if queue in self.active_fanout_queues:
            self.active_fanout_queues.discard(queue)
            subclient = self.__dict__.get("subclient")
            if subclient is not None and self._listening is not None:
                with contextlib.suppress(*self.connection_errors):
                    subclient.punsubscribe(
                        self.broadcasts.topic_name(*self._fanout_queues[queue]))
            self._fanout_to_queue.pop(self._fanout_queues[queue][0], None)
        result = super().basic_cancel(consumer_tag)
        self._queue_cycle.update(self.active_queues)
        return result

    @property
    def active_queues(self) -> list[str]:
        """The queues this channel consumes, fanout queues left out."""
        return list(dict.fromkeys(queue for queue in self._active_queues
                                  if queue not in self.active_fanout_queues))

    def close(self) -> None:
        if not self.closed:
            self.fetcher.close()
            self.connection.cycle.discard(self)
            for queue in list(self._fanout_queues):
                if queue in self.auto_delete_queues:
                    with contextlib.suppress(*self.connection_errors):
                        self.queue_delete(queue)
            self._disconnect_pools()
        super().close()
