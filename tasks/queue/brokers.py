"""What differs between the brokers: Redis (the service's transport) and RabbitMQ (amqp).

Pool children call `fresh_connections` when they start (RabbitMQ: no pooled
connection). The worker parent calls `check_worker` at start (refuses hard limits that
reach the cluster-wide visibility timeout) and `prepare_queues` once its queues are known (on
Redis it settles the broker's key layout version, `check_layout`; on RabbitMQ each
consumer asks for a delivery-ack timeout above the hard limits). The
metrics exporter reads queue lengths with `amqp_queue_lengths` (passive declares, no
management plugin). Priorities: `priority_value` (tasks/queue/routing.py). The worker's
consumer (`Consumer`) takes RabbitMQ's recoverable channel errors as a lost connection.
A worker child sends a document's page tasks through `sending_together` (on Redis, one
push a lane).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from amqp.exceptions import MessageNacked, RecoverableChannelError
from celery.utils.nodenames import worker_direct
from celery.worker.consumer import Consumer as CeleryConsumer
from kombu import Connection, Queue
from kombu.exceptions import OperationalError

from tasks.broker import stored_layout
from tasks.broker.publishing import pushes_together
from tasks.queue.routing import is_priority_queue, with_priority_queues
from tasks.records.redis_target import RedisTarget
from tasks.settings import Settings, SettingsError
from tasks.state.boundary import publishing
from tasks.state.connection import connect

log = logging.getLogger(__name__)
T = TypeVar("T")
# Waits between the sends of a message RabbitMQ refused (basic.nack): 0.25 s doubling
# to 4 s, about 30 s in all, as long as kombu retries a publish through a lost broker.
NACK_WAITS = (0.25, 0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0)
# A worker's own queue on quorum queues goes away after a day without its worker.
DIRECT_QUEUE_EXPIRES_MS = 24 * 3600 * 1000


@contextlib.contextmanager
def sending_together(app: Any, what: str) -> Iterator[Any]:
    """A producer whose sends go on one connection and, on Redis, in one push a lane.

    Nothing is sent when the block raises; a failed publish raises `TransientError`
    naming `what`.
    """
    with publishing(what), app.producer_or_acquire() as producer, \
            pushes_together(producer.channel):
        yield producer


def check_worker(settings: Settings) -> None:
    """Stop a worker whose settings clash with the cluster's (exit status 2)."""
    try:
        settings.check_worker()
    except SettingsError as exc:
        print(f"worker refused to start: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def prepare_queues(app: Any, settings: Settings, node: str) -> None:
    """On Redis, check the key layout; on RabbitMQ, give each consumer `x-consumer-timeout`.

    The consumer timeout is OCR_VISIBILITY_TIMEOUT:
    RabbitMQ (3.8 to 3.11.14: node-wide `consumer_timeout` only, 30 min by default)
    closes the channel of a consumer that holds a delivery unacknowledged longer than
    its consumer timeout; from 3.11.15 (per queue) and 3.12 (per consumer) the
    argument below sets it per consumer, older nodes ignore it (docs/operations.md, Brokers).
    On quorum queues the worker also consumes each job queue's queues of one priority,
    and its own queue (`node`'s) is a quorum queue too (`direct_queue`).
    """
    target = settings.broker_target
    if target is not None:
        check_layout(target)
        return
    if settings.quorum_queues:
        consume(app, with_priority_queues(list(app.amqp.queues.consume_from)))
        if app.conf.worker_direct:
            app.amqp.queues.select_add(direct_queue(settings, node))  # replaces Celery's
    milliseconds = settings.visibility_timeout * 1000
    for queue in app.amqp.queues.values():
        queue.consumer_arguments = {**(queue.consumer_arguments or {}),
                                    "x-consumer-timeout": milliseconds}


def check_layout(target: RedisTarget) -> None:
    """Stop a worker whose broker holds another key layout than it reads (exit status 2).

    A newer one, or layout 1 or 2 (its message names the command that moves them); the
    first worker of a new Redis stores its own (tasks/broker/stored_layout.py).
    """
    client = connect(target)
    try:
        version = stored_layout.settle(client)
    except (stored_layout.LayoutNewer, stored_layout.LayoutOld) as exc:
        print(f"worker refused to start: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    finally:
        client.close()  # its socket closed before the pool forks: no child inherits it
    log.info("broker key layout version %s", version)


def direct_queue(settings: Settings, node: str) -> Queue:
    """The queue of one worker (`<node>.dq2`, Celery's worker_direct), as this broker wants it.

    Celery declares it a durable classic queue, which lives on one RabbitMQ node: with
    that node lost its worker cannot declare it again and stops ("home node is down").
    On quorum queues it is a quorum queue too (replicated), and goes away a day after
    its worker (`x-expires`), as workers come and go with their host names. The worker
    and whoever sends to it (the every-host model audit) declare it the same way.
    """
    queue = worker_direct(node)
    if not settings.quorum_queues:
        return queue
    return Queue(queue.name, queue.exchange, queue.routing_key, queue_arguments={
        "x-queue-type": "quorum", "x-expires": DIRECT_QUEUE_EXPIRES_MS})


class Consumer(CeleryConsumer):
    """Celery's consumer, which restarts on a channel error py-amqp calls recoverable.

    A worker that lost its RabbitMQ connection declares its mailbox again
    (`<node>.celery.pidbox`, an exclusive queue). Until RabbitMQ sees the old connection
    gone, the queue is still that connection's and the declare is refused with 405
    RESOURCE_LOCKED. On a loaded machine, or when the old connection's node was killed,
    that takes long enough to meet. Celery took the refusal as unrecoverable and the
    worker exited 1; here it reconnects and declares again, as after a lost connection.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        errors: tuple[type[BaseException], ...] = self.conninfo.connection_errors
        self.connection_errors = (*errors, RecoverableChannelError)


def consume(app: Any, names: Sequence[str]) -> None:
    """Make the worker consume these queues too, declared as `-Q` declares them.

    Each as the app's queue of that name (Celery's `new_missing`: its own exchange, and
    on quorum queues the quorum type), never `select_add` of a bare name, which would
    declare a classic queue.
    """
    queues = app.amqp.queues
    for name in names:
        queues.select_add(queues[name])


def until_confirmed(send: Callable[[], T], what: str) -> T:
    """`send()` again while RabbitMQ refuses the message with a negative confirm.

    With publisher confirms a refused message is `basic.nack`: a quorum queue whose
    leader is being elected after its node was lost nacks what it cannot yet take.
    Not taken, so sending it again is safe (at worst a copy is queued twice, which a
    job's end claim makes harmless); kombu retries lost connections, not nacks. Past
    NACK_WAITS the error is raised (a publish then becomes `transient`).
    """
    for wait in (*NACK_WAITS, None):
        try:
            return send()
        except OperationalError as exc:
            if wait is None or not isinstance(exc.__cause__, MessageNacked):
                raise
            log.warning("RabbitMQ refused %s (nack): sending it again in %g s", what, wait)
            time.sleep(wait)
    raise AssertionError("unreachable")


def expiry_in_header(options: dict[str, Any]) -> dict[str, Any]:
    """On RabbitMQ a message's `expires` (a job's deadline) travels in its header only.

    Celery also turns `expires` into the AMQP `expiration` property, and RabbitMQ drops
    a message whose expiration passes while it waits, unseen: its job would never end.
    Without the property a worker receives it, Celery revokes it as expired and the job
    ends FAILURE `deadline_exceeded` (tasks/queue/parent_endings.py), as on Redis.
    """
    expires = options.get("expires")
    if expires is None:
        return options
    if isinstance(expires, (int, float)):
        expires = datetime.now(UTC) + timedelta(seconds=expires)
    at = expires.isoformat() if isinstance(expires, datetime) else str(expires)
    rest = {k: v for k, v in options.items() if k != "expires"}
    return {**rest, "headers": {**(options.get("headers") or {}), "expires": at}}


def fresh_connections(app: Any, settings: Settings) -> None:
    """On RabbitMQ, a pool child publishes on a new broker connection each time (no pool).

    A child publishes a few messages per job (pages, progress events, retries), so a
    connection each costs little there. On Redis a child keeps its pooled connection:
    the service's transport (tasks/broker/) connects a broken one again on its next
    command, and a new one a publish would cost its handshake, a script load and the
    queue's declare (about a command a page of a split PDF). Called in
    `worker_process_init`.
    """
    if settings.broker_is_amqp:
        app.conf.broker_pool_limit = 0


def amqp_queue_lengths(broker_url: str, queues: Sequence[str],
                       priority_queues: bool = False) -> dict[str, int]:
    """Messages ready in each queue (all priorities), by passive declare; 0 when absent.

    `priority_queues` (quorum queues): a job queue's length adds its queues of one
    priority (`<queue>.interactive`, `<queue>.batch`).
    """
    if priority_queues:
        each = amqp_queue_lengths(broker_url, with_priority_queues(list(queues)))
        return {q: sum(n for name, n in each.items() if name == q or (
            is_priority_queue(name) and name.rpartition(".")[0] == q)) for q in queues}
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
