"""The project's Redis transport: our own, on kombu's virtual transport.

Runs in every process that uses the Redis broker: kombu makes it for each broker
connection (Celery's `broker_transport`, tasks/queue/celery_config.py). It makes the
channels of tasks/broker/channel.py (each composed of a publisher, a fetcher and the
QoS) and drives them with its poller (tasks/broker/poller.py): in
a worker from Celery's event loop (`register_with_event_loop`), elsewhere from kombu's
`drain_events`. Behind Sentinel: tasks/broker/sentinel_transport.py.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

import redis
import redis.exceptions
from kombu.exceptions import InconsistencyError
from kombu.transport import TRANSPORT_ALIASES, virtual

from tasks.broker.channel import Channel
from tasks.broker.connections import DEFAULT_PORT
from tasks.broker.poller import Poller

TRANSPORT = "tasks.broker.transport:Transport"


class Transport(virtual.Transport):
    """The project's Redis transport: kombu's virtual transport, with our `Channel`.

    READONLY is a lost connection: the server became a replica, and kombu connects
    again, and retries a publish on the new primary.
    """

    Channel = Channel
    polling_interval = None  # type: ignore[assignment]  # `Poller.get` waits on the sockets; no sleep between polls
    brpop_timeout = 1.0
    default_port = DEFAULT_PORT  # type: ignore[assignment]
    driver_type = "redis"
    driver_name = "redis"
    implements = virtual.Transport.implements.extend(
        asynchronous=True, exchange_type=frozenset(["direct", "topic", "fanout"]))
    connection_errors = (  # type: ignore[assignment]
                         *virtual.Transport.connection_errors, InconsistencyError,
                         socket.error, OSError, redis.exceptions.ConnectionError,
                         redis.exceptions.BusyLoadingError,
                         redis.exceptions.AuthenticationError,
                         redis.exceptions.TimeoutError, redis.exceptions.ReadOnlyError)
    channel_errors = (  # type: ignore[assignment]
                      *virtual.Transport.channel_errors, redis.exceptions.DataError,
                      redis.exceptions.InvalidResponse, redis.exceptions.ResponseError)
    # The thread of the worker's event loop, whose channels' fetches carry their
    # acknowledgements (None: no loop, every acknowledgement goes alone).
    loop_thread: int | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.poller = Poller()
        self.cycle = self.poller  # type: ignore[assignment]  # kombu's name for it

    def driver_version(self) -> str:
        return str(redis.__version__)

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        self.loop_thread = threading.get_ident()
        options = connection.client.transport_options
        self.poller.register(
            loop, float(options.get("unacked_restore_interval")
                        or Channel.unacked_restore_interval),
            float(options.get("health_check_interval") or Channel.health_check_interval))


# The transport's own names, as a broker URL's scheme (`ocr-redis://host:6379/0`).
NAMES = {"ocr-redis": TRANSPORT,
         "ocr-sentinel": "tasks.broker.sentinel_transport:SentinelTransport"}


def register_names() -> None:
    """Make `NAMES` known to kombu in this process (its documented transport aliases)."""
    TRANSPORT_ALIASES.update(NAMES)
