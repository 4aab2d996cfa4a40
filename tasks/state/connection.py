"""The one owner of "which Redis": every process's Redis client, and Celery's view of it.

`connect(target)` is how any process gets a Redis client (the stores, the HTTP API, the
worker parent and children, beat, Flower, the metrics exporter, the health commands,
submit.py and ocr_admin.py), one client (one connection pool) per process, target and
patience, shared by every module of that process: a direct server (`redis://`,
`rediss://`, a fixed address that may move, as a managed Redis's endpoint does), or
the primary that Sentinel names, asked again at every reconnection, so a client
follows a failover by itself.
`PrimaryConnection` (and its TLS form) is the connection of both, the stores' pools,
the broker's and Celery's result backend's (`PrimarySentinelBackend` in
tasks/queue/celery_config.py): each socket it opens goes to the primary the Sentinels
name at that moment.
`celery_broker` and `celery_backend` give Celery and kombu the same target: URL,
verified TLS, Sentinel's primary name and password, and the timeouts and TCP keepalive
that notice a primary gone silent. Waiting for replicas, and telling a primary the
Sentinels replaced: tasks/state/replicas.py.

Runs in every process that talks to Redis. Imports no Celery.
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
import time
from typing import Any
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import (
    Sentinel,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)

from tasks.records.redis_target import RedisTarget
from tasks.state.boundary import RETRIED_ERRORS, redis_retry

# Seconds a command may wait for Redis: long enough for a loaded server, short enough
# that a primary gone silent (a dropped host) is given up and asked of Sentinel again.
SOCKET_TIMEOUT = 30.0
CONNECT_TIMEOUT = 5.0
SENTINEL_TIMEOUT = 2.0
# TCP keepalive: an idle connection to a host that vanished without a word (no RST)
# is dropped after about 10 + 3 x 5 = 25 s.
KEEPALIVE = {name: value for name, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5),
                                              ("TCP_KEEPCNT", 3)) if hasattr(socket, name)}
KEEPALIVE_OPTIONS = {getattr(socket, name): value for name, value in KEEPALIVE.items()}
# Seconds between the broker's checks of its idle connections (kombu drops a wait on
# the queues that got no answer for this long beyond its own timeout).
BROKER_HEALTH_CHECK = 10


# One client per (process, target, patience): a forked child makes its own, never
# sharing its parent's sockets; every module of a process shares one pool.
_CLIENTS: dict[tuple[int, RedisTarget, bool], redis.Redis] = {}
_CLIENTS_LOCK = threading.Lock()


def connect(target: RedisTarget, *, patient: bool = True) -> redis.Redis:
    """The client of `target` in this process (made on the first call, then reused).

    Every module asks here, so a process holds one connection pool per target and
    patience: the telemetry, the poison guard, the job services, the batch tasks and the
    endings of one worker child share its connections. `close()` on it only drops the
    pool's idle connections; the next command opens one again.
    """
    key = (os.getpid(), target, patient)
    client = _CLIENTS.get(key)
    if client is None:
        with _CLIENTS_LOCK:
            client = _CLIENTS.get(key)
            if client is None:
                for stale in [k for k in _CLIENTS if k[0] != key[0]]:
                    del _CLIENTS[stale]  # a parent's, inherited by fork: never used here
                client = _CLIENTS[key] = new_client(target, patient=patient)
    return client


def connection_pools() -> int:
    """How many connection pools `connect` made in this process (tests, benchmarks)."""
    pid = os.getpid()
    return sum(1 for k in _CLIENTS if k[0] == pid)


def fresh_session(connection: Any) -> None:
    """Open `connection`'s session (AUTH, HELLO, SELECT) with no PING before it.

    redis-py's `redis_connect_func` hook, on the connections of every pool made here
    and of the broker's (tasks/broker/connections.py). A connection checks its health
    with a PING before a command once `health_check_interval` s have passed since its
    last reply, and a new one has had none, so its handshake went after a PING: one
    more command and round trip for every connection a process opens. The handshake's
    own replies show the session alive.
    """
    connection.next_health_check = time.monotonic() + connection.health_check_interval
    connection.on_connect()


def new_client(target: RedisTarget, *, patient: bool = True) -> redis.Redis:
    """A client of `target` with a pool of its own, that reconnects on its own.

    `connect` is the usual way; a pool of its own is for a connection that blocks
    (a long blocking read would hold one of the shared pool's connections).

    `patient` (workers): a command retries with backoff through a Redis restart or a
    failover for about half a minute (`boundary.redis_retry`); the stores then raise
    `TransientError`. Otherwise (clients, the HTTP API, whose callers wait): one quick
    retry, then `TransientError` at once. Behind Sentinel every new connection asks
    the Sentinels for the current primary; through a fixed address, a server that
    answers READONLY (a replica now) is left for a new connection, as a dropped one is.
    """
    retry = redis_retry() if patient else Retry(NoBackoff(), 1,
                                                supported_errors=RETRIED_ERRORS)
    options: dict[str, Any] = {"socket_connect_timeout": CONNECT_TIMEOUT,
                               "socket_timeout": SOCKET_TIMEOUT,
                               "socket_keepalive": True,
                               "socket_keepalive_options": KEEPALIVE_OPTIONS,
                               "health_check_interval": 30, "retry": retry,
                               "redis_connect_func": fresh_session,
                               **_tls_options(target)}
    if not target.is_sentinel:
        if target.url.startswith("unix://"):
            options = {k: v for k, v in options.items() if not k.startswith("socket_keep")}
        return redis.Redis.from_url(target.url, **options)
    return sentinel_of(target).master_for(
        target.master, db=target.db, username=target.username, password=target.password,
        connection_class=PrimarySSLConnection if target.tls else PrimaryConnection,
        **options)


def _named_now(connection: PrimaryConnection) -> None:
    """Point `connection` at the primary its Sentinels name now (a primary's pool only).

    Called from `connect_check_health` (redis-py's public step that opens a socket)
    when a socket is to be opened. redis-py's retry of a failed command reconnects the
    same connection object through that step by its last address, asking no Sentinel:
    after a failover that address is the old primary, dead (refused) or back as a
    replica (READONLY), for every retry until they run out. An address `connect_to`
    was given a moment ago is taken as it is.
    """
    named, connection.named = connection.named, None
    if connection.connection_pool.is_master:
        connection.host, connection.port = named or \
            connection.connection_pool.get_master_address()


class PrimaryConnection(SentinelManagedConnection):
    """A Sentinel-named primary's connection: each socket to the one named at that moment."""

    named: tuple[str, int] | None = None  # the address `connect` just looked up

    def connect_to(self, address: tuple[str, int]) -> None:
        self.named = address
        super().connect_to(address)

    def connect_check_health(self, *args: Any, **kwargs: Any) -> None:
        if self._sock is None:  # a socket to open: to the primary named now
            _named_now(self)
        super().connect_check_health(*args, **kwargs)


class PrimarySSLConnection(PrimaryConnection, SentinelManagedSSLConnection):
    """`PrimaryConnection` over TLS."""


def sentinel_of(target: RedisTarget) -> Sentinel:
    """The Sentinels of `target` (their own password and TLS), to ask for its primary."""
    return Sentinel(list(target.sentinels), sentinel_kwargs=_sentinel_options(target))


def celery_url(target: RedisTarget) -> str:
    """`target`'s URL as Celery and kombu read it.

    Behind Sentinel each `sentinel://` part names the database and the password:
    kombu connects first with the first part only and fails over to the others,
    and Celery's backend reads the database of the first part only, so the
    `sentinel://h1;sentinel://h2/DB` form would put them on database 0.
    """
    if not target.is_sentinel:
        return target.url
    auth = ""
    if target.password:
        auth = f"{quote(target.username or '', safe='')}:{quote(target.password, safe='')}@"
    elif target.username:
        auth = f"{quote(target.username, safe='')}@"
    return ";".join(f"sentinel://{auth}{_host(host)}:{port}/{target.db}"
                    for host, port in target.sentinels)


def celery_broker(target: RedisTarget) -> dict[str, Any]:
    """Celery's broker settings for a Redis `target`: URL, TLS, Sentinel options.

    The transport options (`broker_transport_options`) are merged into
    `broker_transport_options` by the Celery configuration.
    """
    # Behind Sentinel, one Sentinel in the URL: kombu would switch to the next part of a
    # `;` list on a failed connection and take its transport from that part's scheme
    # (kombu's own); every Sentinel is in `broker_transport_options["ocr_sentinels"]`.
    url = celery_url(target).split(";")[0]
    config: dict[str, Any] = {"broker_url": url}
    if target.tls:
        config["broker_use_ssl"] = _celery_tls(target)
    return config


def broker_transport_options(target: RedisTarget) -> dict[str, Any]:
    """Kombu transport options `target` needs: Sentinel, timeouts, keepalive, WAIT.

    A command waits at most SOCKET_TIMEOUT; idle connections are probed by TCP
    keepalive and kombu's health check, so a primary that vanished silently is
    noticed and Sentinel asked again. `ocr_min_replicas` and `ocr_replica_timeout`
    are the project's transport's (tasks/broker/transport.py: WAIT after a publish).
    """
    options: dict[str, Any] = {
        "socket_timeout": SOCKET_TIMEOUT, "socket_connect_timeout": CONNECT_TIMEOUT,
        "health_check_interval": BROKER_HEALTH_CHECK,
        "ocr_min_replicas": target.min_replicas,
        "ocr_replica_timeout": target.replica_timeout}
    if not target.url.startswith("unix://"):
        options |= {"socket_keepalive": True, "socket_keepalive_options": KEEPALIVE_OPTIONS}
    if target.is_sentinel:
        options |= {"master_name": target.master,
                    "sentinel_kwargs": _sentinel_options(target),
                    "ocr_sentinels": [list(pair) for pair in target.sentinels]}
    return options


def celery_backend(target: RedisTarget) -> dict[str, Any]:
    """Celery's result-backend settings for `target` (the same Redis as the stores)."""
    config: dict[str, Any] = {"result_backend": celery_url(target),
                              "redis_socket_timeout": SOCKET_TIMEOUT,
                              "redis_socket_connect_timeout": CONNECT_TIMEOUT}
    if target.tls:
        config["redis_backend_use_ssl"] = _celery_tls(target)
    if target.is_sentinel:
        config["result_backend_transport_options"] = {
            "master_name": target.master, "sentinel_kwargs": _sentinel_options(target)}
    return config


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _tls_options(target: RedisTarget) -> dict[str, Any]:
    """redis-py's TLS options: verified, always (`rediss://`, Sentinel with TLS)."""
    if not target.tls:
        return {}
    options: dict[str, Any] = {"ssl_cert_reqs": "required", "ssl_check_hostname": True,
                               "ssl_ca_certs": target.ca_file,
                               "ssl_certfile": target.cert_file,
                               "ssl_keyfile": target.key_file}
    if target.is_sentinel:
        options["ssl"] = True  # from_url sets it for rediss://
    return options


def _celery_tls(target: RedisTarget) -> dict[str, Any]:
    """Celery's and kombu's form of the same TLS options (`broker_use_ssl`)."""
    return {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": target.ca_file,
            "ssl_certfile": target.cert_file, "ssl_keyfile": target.key_file}


def _sentinel_options(target: RedisTarget) -> dict[str, Any]:
    """How to talk to the Sentinels themselves: their password, TLS and timeouts."""
    options: dict[str, Any] = {"socket_connect_timeout": SENTINEL_TIMEOUT,
                               "socket_timeout": SENTINEL_TIMEOUT}
    if target.sentinel_password:
        options["password"] = target.sentinel_password
    return {**options, **_tls_options(target)}
