r"""The broker's channel on Redis: kombu's virtual channel, its storage in our key layout.

Runs in every process that uses the Redis broker. It holds what any channel needs,
built on the hooks kombu's virtual transport is made to be extended by (`_put`, `_get`,
`_size`, `_purge`, `_delete`, `_has_queue`, `_new_queue`, `_queue_bind`, `get_table`,
`_put_fanout`): the connection pools, the exchange bindings, the queues' lists
(tasks/broker/layout.py), broadcasts over PUB/SUB (tasks/broker/broadcasts.py, mixed
in), and which queues a channel consumes. A declare's count is one EXISTS where nothing
waits, a binding two SADDs.
The names are those stock kombu clients use (a queue's lists, `_kombu.binding.<exchange>`,
the `/<db>.<exchange>` topics), so that they and Celery clients of other services share
the queues. Publishing into lanes is tasks/broker/publishing.py's channel, built on
this one; fetching, the worker's, tasks/broker/fetching.py's.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from functools import cached_property
from typing import Any

import redis
from kombu.transport import virtual
from kombu.transport.base import to_rabbitmq_queue_arguments
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps
from kombu.utils.scheduling import cycle_by_name

from tasks.broker import binding_expiry, connections, layout
from tasks.broker.broadcasts import Broadcasts
from tasks.broker.poller import FETCH, LISTEN, socket_of

log = logging.getLogger(__name__)

HEALTH_CHECK_INTERVAL = 25


class RedisChannel(Broadcasts, virtual.Channel):
    """A channel on Redis: pools, bindings, queue lists, fanout; consuming is a subclass's."""

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
    global_keyprefix = ""
    queue_order_strategy = "round_robin"
    brpop_timeout = 1.0
    ocr_binding_min_ttl = binding_expiry.MIN_BINDING_TTL_MS  # an expiring binding's least

    from_transport_options: tuple[str, ...] = (  # type: ignore[assignment]
        *virtual.Channel.from_transport_options,
        "sep", "unacked_mutex_key",
        "unacked_mutex_expire", "visibility_timeout", "unacked_restore_limit",
        "unacked_restore_interval", "unacked_restore_throttle", "fanout_prefix",
        "fanout_patterns", "global_keyprefix", "socket_timeout", "socket_connect_timeout",
        "socket_keepalive", "socket_keepalive_options", "queue_order_strategy",
        "max_connections", "health_check_interval", "retry_on_timeout", "priority_steps",
        "client_name", "ocr_binding_min_ttl", "ocr_unheard_exchanges", "ocr_unheard_quiet",
        "ocr_unheard_always")

    # queue -> (exchange, routing key) of every fanout binding this process declared:
    # shared by the process's channels (Celery declares on one, consumes on another).
    _fanout_queues: dict[str, tuple[str, str]] = {}

    _pool: redis.ConnectionPool | None = None
    _watched_pool: redis.ConnectionPool | None = None
    _in_poll: Any = None       # the connection whose fetch reply is due
    _listening: Any = None     # the connection subscribed to this channel's broadcasts

    def __init__(self, *args: Any, **kwargs: Any) -> None:
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

    # -- connections ---------------------------------------------------------------

    def _pool_params(self) -> dict[str, Any]:
        if self.connection is None or self.connection.client is None:
            # Redis went away while this channel held unacknowledged messages, and its
            # connection was released: a connection error the close ignores (the
            # messages, still held, are restored after the visibility timeout).
            raise redis.exceptions.ConnectionError(
                "the broker connection was released; its unacknowledged messages are "
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
            self.fetch_dropped()
        if kind == LISTEN and self._listening is connection:
            self._listening = None

    def fetch_dropped(self) -> None:
        """A fetch's reply will never be read (a consuming channel's hook)."""

    def check_health(self, now: float) -> None:
        """Broadcast connections ping the server (their missing reply drops them)."""
        subclient = self.__dict__.get("subclient")
        if subclient is not None and self._listening is not None:
            subclient.check_health()

    def _disconnect_pools(self) -> None:
        for pool in (self._pool, self._watched_pool):
            if pool is not None:
                pool.disconnect()
        self._pool = self._watched_pool = None
        for name in ("client", "subclient", "commands"):
            self.__dict__.pop(name, None)

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
        process's), and most find the queue empty: none of `_holding_keys` exists.
        """
        if not self.commands.exists(*self._holding_keys(queue)):
            return 0
        return self._count(queue)

    def _holding_keys(self, queue: str) -> tuple[str, ...]:
        """Keys of which one exists wherever a message of `queue` waits: its lists."""
        return self._lists(queue)

    def _count(self, queue: str) -> int:
        """The messages waiting in `queue`'s lists."""
        with self.commands.pipeline(transaction=False) as pipe:
            for name in self._lists(queue):
                pipe.llen(name)
            return sum(int(size) for size in pipe.execute())

    def _purge(self, queue: str) -> int:
        with self.commands.pipeline() as pipe:
            for name in self._lists(queue):
                pipe.llen(name)
                pipe.delete(name)
            return sum(int(size) for size in pipe.execute()[::2])

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        """`message` to its priority step's list of `queue` (kombu's LPUSH)."""
        with self.commands.pipeline() as pipe:
            for command in self._put_commands(queue, message):
                pipe.execute_command(*command)
            pipe.execute()

    def _put_commands(self, queue: str, message: Any) -> list[list[Any]]:
        """`_put`'s commands, to run as one transaction: an LPUSH, an expiring queue's PEXPIREs."""
        name = layout.queue_list(queue, layout.message_step(message, self.priority_steps),
                                 self.sep)
        expires = self._expires.get(queue)
        return [["LPUSH", name, dumps(message)],
                *(["PEXPIRE", each, expires] for each in (self._lists(queue) if expires else ()))]

    def restore_payload(self, payload: Any, exchange: str, routing_key: str, pipe: Any,
                        leftmost: bool = False) -> None:
        """Queue `payload` back on the queues its route names, in `pipe` (a MULTI).

        Redelivered; first in line (`leftmost`: a rejected message) or last.
        """
        with contextlib.suppress(KeyError, TypeError):
            payload["headers"]["redelivered"] = True
            payload["properties"]["delivery_info"]["redelivered"] = True
        step = layout.message_step(payload, self.priority_steps)
        for queue in self._lookup(exchange, routing_key):
            name = layout.queue_list(queue, step, self.sep)
            (pipe.lpush if leftmost else pipe.rpush)(name, dumps(payload))

    # -- consuming -----------------------------------------------------------------

    def basic_consume(self, queue: str, *args: Any, **kwargs: Any) -> Any:
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
                    subclient.punsubscribe(self._topic(*self._fanout_queues[queue]))
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
            self.connection.cycle.discard(self)
            for queue in list(self._fanout_queues):
                if queue in self.auto_delete_queues:
                    with contextlib.suppress(*self.connection_errors):
                        self.queue_delete(queue)
            self._disconnect_pools()
        super().close()
