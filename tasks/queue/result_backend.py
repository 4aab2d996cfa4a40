"""Celery's Sentinel result backend on the primary connections of tasks/state/connection.py.

Runs in every process whose app stores or reads results behind Sentinel (the workers,
the HTTP API, clients, Flower). Celery's `SentinelBackend` opens its pool with
redis-py's Sentinel-managed connection, which, retrying a command after a failover,
can reconnect to the address it last used (the old primary, now a replica answering
READONLY) until its retries run out; `PrimaryConnection` asks the Sentinels at every
socket it opens. `celery_config` names this class in `result_backend` when the target
is behind Sentinel (`sentinel_backend_url`).
"""

from __future__ import annotations

from typing import Any

from celery.backends.redis import SentinelBackend

from tasks.state.connection import PrimaryConnection, PrimarySSLConnection


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
