"""What differs between the brokers: Redis (kombu's redis transport) and RabbitMQ (amqp).

Pool children call `fresh_connections` when they start. The worker parent calls
`check_worker` at start (refuses hard limits that reach the
cluster-wide visibility timeout) and `prepare_queues` once its queues are known (on
RabbitMQ each consumer asks for a delivery-ack timeout above the hard limits). The
metrics exporter reads queue lengths with `amqp_queue_lengths` (passive declares, no
management plugin). Priorities: `priority_value` (tasks/queue/routing.py).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from kombu import Connection

from tasks.settings import Settings, SettingsError


def check_worker(settings: Settings) -> None:
    """Stop a worker whose settings clash with the cluster's (exit status 2)."""
    try:
        settings.check_worker()
    except SettingsError as exc:
        print(f"worker refused to start: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def prepare_queues(app: Any, settings: Settings) -> None:
    """On RabbitMQ, give each consumer `x-consumer-timeout` = OCR_VISIBILITY_TIMEOUT.

    RabbitMQ (3.8 to 3.11.14: node-wide `consumer_timeout` only, 30 min by default)
    closes the channel of a consumer that holds a delivery unacknowledged longer than
    its consumer timeout; from 3.11.15 (per queue) and 3.12 (per consumer) the
    argument below sets it per consumer, older nodes ignore it (docs/operations.md, Brokers).
    """
    if not settings.broker_is_amqp:
        return
    milliseconds = settings.visibility_timeout * 1000
    for queue in app.amqp.queues.values():
        queue.consumer_arguments = {**(queue.consumer_arguments or {}),
                                    "x-consumer-timeout": milliseconds}


def fresh_connections(app: Any) -> None:
    """A pool child publishes on a new broker connection each time (no pool).

    With kombu 5.7's redis transport, a pooled connection that lived through a broker
    restart can hand out a closed channel (AttributeError on every later publish from
    that child). A child publishes a few messages per job (pages, progress events,
    retries), so a connection each costs little. Called in `worker_process_init`.
    """
    app.conf.broker_pool_limit = 0


def amqp_queue_lengths(broker_url: str, queues: Sequence[str]) -> dict[str, int]:
    """Messages ready in each queue (all priorities), by passive declare; 0 when absent."""
    lengths: dict[str, int] = {}
    with Connection(broker_url, connect_timeout=5) as conn:
        channel = conn.channel()
        try:
            for name in queues:
                try:
                    ok = channel.queue_declare(queue=name, passive=True)
                except conn.channel_errors:
                    # 404 NOT_FOUND closes the channel: nobody declared the queue yet.
                    lengths[name] = 0
                    channel = conn.channel()
                    continue
                lengths[name] = int(ok.message_count)
        finally:
            channel.close()
    return lengths
