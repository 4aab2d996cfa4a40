"""The project's Redis transport behind Sentinel: the primary the Sentinels name, always.

Runs wherever the broker is `sentinel://` (every process that publishes or consumes).
The channel is tasks/broker/transport.py's (atomic fetch, wake-ups, dead letters, WAIT
after a publish, what a lost connection leaves settled) on redis-py's Sentinel-managed
pool, with the primary connections of tasks/state/connection.py: each socket they open
(a retried command's too) goes to the primary the Sentinels name at that moment.

The broker URL names one Sentinel; every Sentinel comes in the transport option
`ocr_sentinels` (tasks/state/connection.py), and redis-py asks them in turn.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis
from redis import sentinel

from tasks.broker.channel import Channel
from tasks.broker.connections import watched
from tasks.broker.transport import Transport
from tasks.state.connection import PrimaryConnection, PrimarySSLConnection

# Keywords of the primary's parameters that the Sentinel-managed pool sets itself.
_POOL_OWN = ("host", "port", "connection_class", "max_connections")


class SentinelChannel(Channel):
    """`Channel` on the primary that Sentinel names (asked again at each reconnection)."""

    from_transport_options = (
        *Channel.from_transport_options,
        "master_name", "min_other_sentinels", "sentinel_kwargs", "ocr_sentinels")
    ocr_sentinels: tuple[tuple[str, int], ...] = ()
    master_name = "mymaster"
    min_other_sentinels = 0
    sentinel_kwargs: dict[str, Any] | None = None

    def _make_pool(self, params: dict[str, Any],
                   on_disconnect: Callable[[Any], None] | None = None,
                   ) -> redis.ConnectionPool:
        sentinels = [(str(host), int(port)) for host, port in self.ocr_sentinels] \
            or [(params["host"], params["port"])]
        manager = sentinel.Sentinel(sentinels, min_other_sentinels=self.min_other_sentinels,
                                    sentinel_kwargs=self.sentinel_kwargs)
        managed: type = PrimaryConnection
        if issubclass(params["connection_class"], redis.SSLConnection):
            managed = PrimarySSLConnection
        if on_disconnect is not None:
            managed = watched(managed, on_disconnect)
        return sentinel.SentinelConnectionPool(
            self.master_name, manager, connection_class=managed,
            max_connections=params.get("max_connections"),
            **{k: v for k, v in params.items() if k not in _POOL_OWN})


class SentinelTransport(Transport):
    """The checking transport behind Redis Sentinel (`sentinel://` broker URLs)."""

    default_port = 26379
    Channel = SentinelChannel
