"""The transport's own poller and channel, on a redis-server of the test's own.

The transport is built on kombu's virtual transport (tasks/broker/transport.py): its
poller (tasks/broker/poller.py) sends each channel's fetch and watches the socket, its
channel keeps the queues' lists, bindings and PUB/SUB broadcasts
(tasks/broker/channel.py). These tests drive it as a client or Flower does,
through kombu's `drain_events`, and as Celery's event loop does, through kombu's Hub;
the worker's whole path is in the queue's other tests.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from typing import Any

import pytest
import redis
from kombu import Connection, Consumer, Exchange, Producer, Queue
from kombu.asynchronous import Hub

from tasks.broker import binding_expiry, layout, stored_layout
from tasks.broker.connections import BrokerOptionRefused
from tasks.broker.transport import TRANSPORT
from tests.harness import eventually
from tests.held_records import held_count


def direct(name: str) -> Queue:
    return Queue(name, Exchange(name, type="direct"), routing_key=name)


def test_a_message_and_a_broadcast_reach_their_consumers_through_drain_events(
        lone_redis_url: str) -> None:
    queue = direct(f"poller-{uuid.uuid4().hex[:6]}")
    fanout = Queue(f"bc-{uuid.uuid4().hex[:6]}", Exchange("poller-bc", type="fanout"),
                   auto_delete=True)
    got: list[Any] = []
    with Connection(lone_redis_url, transport=TRANSPORT) as conn:
        Producer(conn.default_channel).publish({"n": 1}, exchange=queue.exchange,
                                               routing_key=queue.routing_key,
                                               declare=[queue], serializer="json")
        with Consumer(conn.channel(), [queue], accept=["json"],
                      callbacks=[lambda body, message: (got.append(body), message.ack())]):
            conn.drain_events(timeout=5)
        with Consumer(conn.channel(), [fanout], accept=["json"], no_ack=True,
                      callbacks=[lambda body, message: got.append(body)]):
            with pytest.raises(TimeoutError):
                conn.drain_events(timeout=0.3)  # subscribed; nothing published yet
            Producer(conn.channel()).publish({"b": 2}, exchange=fanout.exchange,
                                             routing_key="", serializer="json")
            conn.drain_events(timeout=5)
    assert got == [{"n": 1}, {"b": 2}]
    r = redis.Redis.from_url(lone_redis_url)
    assert held_count(r) == 0  # acknowledged
    assert not r.exists(*stored_layout.FIXED_KEYS)  # nothing of layouts 1 and 2
    r.close()


def test_the_event_loop_drives_the_fetch_and_a_silent_fetch_is_dropped(
        lone_redis_url: str) -> None:
    """Celery's loop (kombu's Hub): a fetch on every turn; a reply overdue drops its socket.

    A fetch carries a server-side timeout, so a socket silent past it and a health
    interval is dead (half-open): the poller forgets it, and the next turn's fetch
    goes out on a new connection and still takes the message.
    """
    queue = direct(f"loop-{uuid.uuid4().hex[:6]}")
    got: list[Any] = []
    hub = Hub()
    with Connection(lone_redis_url, transport=TRANSPORT) as conn:
        conn.default_channel.queue_declare(queue.name)
        channel = conn.channel()
        consumer = Consumer(channel, [queue], accept=["json"],
                            callbacks=[lambda body, message: (got.append(body),
                                                              message.ack())])
        consumer.consume()
        conn.transport.register_with_event_loop(conn.connection, hub)
        loop = hub.create_loop()
        for _ in range(5):  # idle: the fetch found nothing, then its doorbell wait
            next(loop)
        eventually(lambda: (next(loop), channel.fetching())[1], timeout=10,
                   what="a fetch in flight")
        first = channel.fetch_connection()
        channel.check_health(time.monotonic() + 3600)  # its reply long overdue
        assert not channel.fetching()
        assert all(known[2] is not first for known in conn.transport.poller.readers.values())
        Producer(conn.default_channel).publish({"n": 7}, exchange=queue.exchange,
                                               routing_key=queue.routing_key,
                                               declare=[queue], serializer="json")
        eventually(lambda: next(loop) or got, timeout=10,
                   what="the message taken through the new connection")
        assert got == [{"n": 7}]
        consumer.cancel()
        hub.close()


def test_a_global_key_prefix_is_refused_with_a_code(lone_redis_url: str) -> None:
    with Connection(lone_redis_url, transport=TRANSPORT,
                    transport_options={"global_keyprefix": "svc:"}) as conn, \
            pytest.raises(BrokerOptionRefused, match="broker_option_refused"):
        conn.default_channel  # noqa: B018  # the channel is made on first use


@pytest.mark.parametrize("kind", ["fanout", "topic"])
def test_the_binding_of_an_expired_queue_is_swept_and_a_permanent_one_stays(
        lone_redis_url: str, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """An event consumer that died (a Flower's `celeryev.<uuid>`) leaves no binding.

    A queue with x-expires is bound with a deadline its consumer raises while it
    consumes (tasks/broker/binding_expiry.py); once the deadline passes, a sweep by a
    process that consumes an expiring queue takes the binding out of the exchange's
    table. A queue without x-expires (the service's) is bound for good.
    """
    monkeypatch.setattr(binding_expiry, "SWEEP_INTERVAL", 0.2)
    options = {"ocr_binding_min_ttl": 0}  # a binding's TTL: twice its x-expires, 1 s
    exchange = Exchange(f"ev-{uuid.uuid4().hex[:6]}", type=kind)
    dead, live, kept = (Queue(f"{name}-{uuid.uuid4().hex[:6]}", exchange, routing_key="#",
                              expires=None if name == "kept" else 0.5)
                        for name in ("dead", "live", "kept"))
    r = redis.Redis.from_url(lone_redis_url, decode_responses=True)
    table = f"_kombu.binding.{exchange.name}"

    def bound() -> set[str]:
        return {member.rsplit(layout.SEP, 1)[-1] for member in r.smembers(table)}

    with Connection(lone_redis_url, transport=TRANSPORT, transport_options=options) as conn:
        kept(conn.default_channel).declare()
        # Its consumer dies: it never deletes the queue, nor refreshes the binding again.
        with Consumer(conn.channel(), [dead], accept=["json"], no_ack=True), \
                pytest.raises(TimeoutError):
            conn.drain_events(timeout=0.2)
    assert bound() == {dead.name, kept.name}
    assert {m.rsplit(layout.SEP, 1)[-1]
            for m in r.smembers(f"_kombu.binding_permanent.{exchange.name}")} == {kept.name}
    with Connection(lone_redis_url, transport=TRANSPORT, transport_options=options) as conn, \
            Consumer(conn.channel(), [live], accept=["json"], no_ack=True):

        def swept() -> bool:
            with contextlib.suppress(TimeoutError):
                conn.drain_events(timeout=0.2)
            return dead.name not in bound()

        eventually(swept, timeout=10, what=f"the sweep of {dead.name}'s binding")
        time.sleep(1.2)  # past the live one's TTL: its consumer keeps it
        with contextlib.suppress(TimeoutError):
            conn.drain_events(timeout=0.5)
        assert bound() == {live.name, kept.name}
    assert r.zcard(layout.BINDING_EXPIRY_KEY) == 1  # the live one's, until it is due
    r.close()
