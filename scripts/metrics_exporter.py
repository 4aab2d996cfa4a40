#!/usr/bin/env python3
"""Procfile `metrics` process: the service's own Prometheus metrics, read from Redis.

Serves `/metrics` on METRICS_ADDRESS:METRICS_PORT (default 127.0.0.1:9808): counters
and per-child gauges that every worker on every host records in Redis
(tasks/state/metrics.py), and the length of each queue: `ocr`, every engine queue, and those
named in OCR_QUEUES (comma separated, as for workers); from RabbitMQ when BROKER_URL
is an amqp:// URL (passive queue declares, no management plugin). Flower's own `/metrics` (task
and worker events) is served by Flower. One exporter per Redis is enough; run more
for redundancy, they read the same keys.

Beside them the fleet's health (tasks/metrics/fleet_metrics.py): Redis up and its memory,
each queue's oldest waiting message, live workers per queue, dead letters, and when
KEDA last asked for each figure.

Also the figure KEDA scales each worker pool on (tasks/metrics/queue_depth.py), as JSON
for KEDA's `metrics-api` trigger: `GET /v1/queues/ocr,ocr-tesseract/depth` answers
`{"queue": "ocr,ocr-tesseract", "queues": [...], "waiting": W, "running": R,
"value": W + R}` for the queues named (one, or several comma separated: a pool's
queues), read from the Redis broker at each request. On RabbitMQ it answers 501
(KEDA's `rabbitmq` trigger reads RabbitMQ itself); a bad queue name 400; Redis down 503.
"""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import sys
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import redis
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from tasks.broker.reads import priority_suffixes
from tasks.metrics.fleet_metrics import DepthReads, FleetCollector
from tasks.metrics.golden_metrics import GoldenCollector
from tasks.metrics.metrics_collector import RedisCollector
from tasks.metrics.queue_depth import QueueDepth
from tasks.queue.brokers import amqp_queue_lengths
from tasks.queue.celery_config import celery_config
from tasks.queue.routing import DEFAULT_QUEUE, queue_for_engine
from tasks.settings import Settings, SettingsError
from tasks.state.connection import connect

# /v1/queues/<queue>[,<queue>...]/depth; queue names as the API accepts them.
DEPTH_PATH = re.compile(r"^/v1/queues/([^/]{1,2000})/depth$")
QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")
MAX_QUEUES = 32
WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


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
    transport = celery_config(settings)["broker_transport_options"]
    # The queues are the broker's: on RabbitMQ read by passive declares at each scrape,
    # on Redis from the broker's lists (BROKER_URL may name another Redis than REDIS_URL).
    # Not patient: a scrape answers at once when Redis is away (`ocr_redis_up` 0).
    store = connect(settings.redis_target, patient=False)
    broker_target = settings.broker_target
    broker = None if broker_target is None or settings.broker == settings.redis_url \
        else connect(broker_target, patient=False)
    depth = (None if settings.broker_is_amqp else
             QueueDepth(broker if broker is not None else store, transport))
    lengths = (functools.partial(amqp_queue_lengths, settings.broker,
                                 priority_queues=settings.quorum_queues)
               if depth is None else depth.waiting)
    reads = DepthReads()
    registry.register(RedisCollector(store, queues, priority_suffixes(transport), lengths))
    registry.register(FleetCollector(store, queues, depth, broker, reads))
    registry.register(GoldenCollector(store))
    app = with_depth(make_wsgi_app(registry), depth, reads)
    try:
        server = make_server(address, port, app, ThreadingWSGIServer,
                             handler_class=QuietHandler)
    except OSError as exc:  # the port is taken (EADDRINUSE), or the address is not ours
        print(f"metrics: cannot listen on {address}:{port} ({exc.strerror}); set "
              "METRICS_PORT (or METRICS_ADDRESS) to move it", flush=True)
        return 1
    print(f"metrics: serving http://{address}:{port}/metrics", flush=True)
    # SIGTERM ends it at once: as a container's first process Python would otherwise
    # ignore the signal (no default action for PID 1) until the runtime's SIGKILL.
    signal.signal(signal.SIGTERM, _stop)
    try:
        server.serve_forever()
    except SystemExit:
        print("metrics: stopped", flush=True)
    finally:
        server.server_close()
    return 0


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(0)


def with_depth(metrics: WsgiApp, depth: QueueDepth | None,
               reads: DepthReads | None = None) -> WsgiApp:
    """`metrics` (Prometheus), with the queue-depth JSON route in front of it.

    Each figure answered is noted in `reads` (`ocr_queue_depth_read_timestamp_seconds`:
    an alert when KEDA stops asking).
    """

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        found = DEPTH_PATH.match(environ.get("PATH_INFO", ""))
        if not found:
            return metrics(environ, start_response)
        status, body = depth_answer(depth, found.group(1), environ.get("REQUEST_METHOD"))
        if reads is not None and status.startswith("200"):
            reads.read(body["queues"])
        data = json.dumps(body).encode()
        start_response(status, [("Content-Type", "application/json"),
                                ("Content-Length", str(len(data))),
                                ("Cache-Control", "no-store")])
        return [data]

    return app


def depth_answer(depth: QueueDepth | None, names: str,
                 method: str | None) -> tuple[str, dict[str, Any]]:
    """HTTP status and JSON body of `/v1/queues/<names>/depth`."""
    if method not in ("GET", "HEAD"):
        return "405 Method Not Allowed", _error("bad_request", "only GET")
    queues = names.split(",")
    if len(queues) > MAX_QUEUES or not all(QUEUE_NAME.match(q) for q in queues):
        return "400 Bad Request", _error(
            "bad_request", f"queue names are 1-200 of A-Z a-z 0-9 _ . : -, at most "
                           f"{MAX_QUEUES}, comma separated")
    if depth is None:
        return "501 Not Implemented", _error(
            "bad_request", "the broker is RabbitMQ: scale on KEDA's rabbitmq trigger "
                           "(protocol http counts ready and unacknowledged messages)")
    try:
        return "200 OK", depth.depth(queues).as_json()
    except redis.RedisError as exc:
        return "503 Service Unavailable", _error(
            "transient", f"the broker's Redis is unreachable ({type(exc).__name__})",
            retryable=True)


def _error(code: str, message: str, retryable: bool = False) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "retryable": retryable}}


if __name__ == "__main__":
    sys.exit(main())
