"""The project's Redis transport behind Sentinel: the primary the Sentinels name, always.

Runs wherever the broker is `sentinel://` (every process that publishes or consumes).
The channel is tasks/broker/transport.py's (atomic fetch, doorbells, dead letters, WAIT
after a publish, what a lost connection leaves settled) on kombu's Sentinel-managed
connections: each new connection asks the Sentinels for the current primary.

kombu takes the Sentinels from the broker URL's `;`-separated parts, and on a failed
connection switches to the next part, re-reading the transport from that part's
scheme: the fleet would fall back to kombu's own `sentinel` transport (a `BRPOP` then a
separate record: a message popped by a worker killed in between is lost).
So the broker URL names one Sentinel only (kombu never switches) and
every Sentinel comes in the transport option `ocr_sentinels`
(tasks/state/connection.py); redis-py asks them in turn.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis
from redis import sentinel

from tasks.broker.transport import Channel, Transport


class SentinelChannel(Channel, kombu_redis.SentinelChannel):
    """`Channel` on the primary that Sentinel names (asked again at each reconnection)."""

    from_transport_options = (  # type: ignore[assignment]
        *Channel.from_transport_options,
        "master_name", "min_other_sentinels", "sentinel_kwargs", "sentinel_fanout_compat",
        "ocr_sentinels")
    connection_class = kombu_redis.SentinelChannel.connection_class
    connection_class_ssl = kombu_redis.SentinelChannel.connection_class_ssl
    ocr_sentinels: tuple[tuple[str, int], ...] = ()
    master_name = "mymaster"

    def _sentinel_managed_pool(self, asynchronous: bool = False) -> Any:
        # kombu's, with the Sentinels of `ocr_sentinels` (not the URL's parts).
        params = self._connparams(asynchronous)
        sentinels = [(str(host), int(port)) for host, port in self.ocr_sentinels] \
            or [(params["host"], params["port"])]
        extra = {k: v for k, v in params.items() if k not in ("host", "port")}
        manager = sentinel.Sentinel(
            sentinels, min_other_sentinels=getattr(self, "min_other_sentinels", 0),
            sentinel_kwargs=getattr(self, "sentinel_kwargs", None), **extra)
        if asynchronous:
            self._async_sentinel_manager = manager
        else:
            self._sentinel_manager = manager
        credentials = {k: extra[k] for k in ("username", "password") if k in extra}
        return manager.master_for(self.master_name, kombu_redis.redis.Redis,
                                  **credentials).connection_pool


class SentinelTransport(Transport):
    """The checking transport behind Redis Sentinel (`sentinel://` broker URLs)."""

    default_port = 26379  # type: ignore[assignment]
    Channel = SentinelChannel
