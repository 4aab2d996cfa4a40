#!/usr/bin/env python3
"""Procfile `metrics` process: the service's own Prometheus metrics, read from Redis.

Serves `/metrics` on METRICS_ADDRESS:METRICS_PORT (default 127.0.0.1:9808): counters
and per-child gauges that every worker on every host records in Redis
(tasks/state/metrics.py), and the length of each queue: `ocr`, every engine queue, and those
named in OCR_QUEUES (comma separated, as for workers); from RabbitMQ when BROKER_URL
is an amqp:// URL (passive queue declares, no management plugin). Flower's own `/metrics` (task
and worker events) is served by Flower. One exporter per Redis is enough; run more
for redundancy, they read the same keys.
"""

from __future__ import annotations

import functools
import os
import sys
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from tasks.queue.brokers import amqp_queue_lengths
from tasks.queue.celery_config import celery_config
from tasks.queue.routing import DEFAULT_QUEUE, queue_for_engine
from tasks.settings import Settings, SettingsError
from tasks.state.metrics import RedisCollector, priority_suffixes
from tasks.state.stores import connect


class QuietHandler(WSGIRequestHandler):
    """No access log line per scrape."""

    def log_message(self, format: str, *args: object) -> None:
        return


def main() -> int:
    try:
        settings = Settings.from_env()
        port = int(os.environ.get("METRICS_PORT", "9808"))
    except (SettingsError, ValueError) as exc:
        print(f"metrics: {exc}", flush=True)
        return 2
    address = os.environ.get("METRICS_ADDRESS", "127.0.0.1")
    extra = [q.strip() for q in os.environ.get("OCR_QUEUES", "").split(",") if q.strip()]
    queues = list(dict.fromkeys([DEFAULT_QUEUE, *map(queue_for_engine,
                                                     settings.all_engine_names()), *extra]))
    registry = CollectorRegistry(auto_describe=False)
    suffixes = priority_suffixes(celery_config(settings)["broker_transport_options"])
    # On RabbitMQ the queues are the broker's: read by passive declares at each scrape.
    lengths = (functools.partial(amqp_queue_lengths, settings.broker)
               if settings.broker_is_amqp else None)
    registry.register(RedisCollector(connect(settings.redis_url), queues, suffixes, lengths))
    server = make_server(address, port, make_wsgi_app(registry), ThreadingWSGIServer,
                         handler_class=QuietHandler)
    print(f"metrics: serving http://{address}:{port}/metrics", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
