"""The broker's Redis connection pools, made from a kombu connection's parts.

Runs in every process that uses the Redis broker (clients, the API, beat, workers,
Flower, the exporter): a channel (tasks/broker/channel.py) makes one pool for its
commands and one for the connections its poller watches, whose `disconnect` tells the
poller (tasks/broker/poller.py) to forget the socket. Behind Sentinel the pool is one of
redis-py's Sentinel-managed pools (tasks/broker/sentinel_transport.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis

from tasks.state.connection import fresh_session

DEFAULT_PORT = 6379


class BrokerOptionRefused(ValueError):
    """A broker URL or transport option this transport does not take (a process's start)."""

    code = "broker_option_refused"
    retryable = False

    def __init__(self, reason: str) -> None:
        super().__init__(f"{self.code}: {reason}")


def database(virtual_host: Any) -> int:
    """The Redis database a kombu virtual host names (`/`, `''`, `0`, `/3`, ...)."""
    if isinstance(virtual_host, int):
        return virtual_host
    text = str(virtual_host or "").lstrip("/")
    if not text:
        return 0
    try:
        return int(text)
    except ValueError:
        raise BrokerOptionRefused(
            f"the Redis database is a number, not {text!r}") from None


def pool_params(conninfo: Any, channel: Any, default_port: int = DEFAULT_PORT,
                ) -> dict[str, Any]:
    """redis-py connection keywords for kombu connection `conninfo`, `channel`'s options.

    `conninfo`: the kombu `Connection` (host, port, credentials, virtual host, TLS);
    `channel`: the options (`socket_timeout`, `health_check_interval`, ...).
    """
    if "://" in str(conninfo.hostname or ""):
        raise BrokerOptionRefused(
            "a broker host that is itself a URL (a unix socket) is "
            "not taken; name a host and port")
    params: dict[str, Any] = {
        "host": conninfo.hostname or "127.0.0.1",
        "port": conninfo.port or default_port,
        "db": database(conninfo.virtual_host),
        "username": conninfo.userid,
        "password": conninfo.password,
        "max_connections": channel.max_connections,
        "socket_timeout": channel.socket_timeout,
        "socket_connect_timeout": channel.socket_connect_timeout,
        "socket_keepalive": channel.socket_keepalive,
        "socket_keepalive_options": channel.socket_keepalive_options,
        "health_check_interval": channel.health_check_interval,
        "retry_on_timeout": channel.retry_on_timeout,
        "client_name": channel.client_name,
        "connection_class": redis.Connection,
        "redis_connect_func": fresh_session,
    }
    if conninfo.ssl:
        if isinstance(conninfo.ssl, dict):
            params.update(conninfo.ssl)
        params["connection_class"] = redis.SSLConnection
    return params


def watched(connection_class: Any, on_disconnect: Callable[[Any], None]) -> type:
    """`connection_class` that keeps its socket and tells `on_disconnect` it goes.

    The poller's connections: their socket is watched by the event loop (`ocr_socket`,
    kept from the `_connect` that redis-py's own SSL and Unix-socket connections
    override), and a socket closed under the loop is dropped from it before its
    descriptor can be reused.
    """

    def _connect(self: Any) -> Any:
        self.ocr_socket = connection_class._connect(self)
        return self.ocr_socket

    def disconnect(self: Any, *args: Any, **kwargs: Any) -> None:
        on_disconnect(self)
        self.ocr_socket = None
        connection_class.disconnect(self, *args, **kwargs)

    return type(f"Watched{connection_class.__name__}", (connection_class,),
                {"_connect": _connect, "disconnect": disconnect, "ocr_socket": None})


def make_pool(params: dict[str, Any],
              on_disconnect: Callable[[Any], None] | None = None) -> redis.ConnectionPool:
    """A connection pool from `pool_params` (a redis:// or rediss:// broker).

    With `on_disconnect`, its connections are `watched`.
    """
    if on_disconnect is not None:
        params = {**params, "connection_class": watched(params["connection_class"],
                                                        on_disconnect)}
    return redis.ConnectionPool(**params)
