"""What a queue's declare and a binding cost Redis, and what they still promise.

On a redis-server of the test's own, counted by `INFO commandstats` (a script's own
commands included) and read in order by MONITOR: a declare of an empty queue is one
EXISTS, of a busy one its exact count; a binding is two SADDs, its permanent entry
first (tasks/broker/redis_channel.py, publishing.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from kombu import Connection, Exchange, Producer, Queue

from tasks.broker import layout
from tasks.broker.transport import TRANSPORT
from tasks.records.clients import CLIENT_HEADER


def calls(r: redis.Redis) -> dict[str, int]:
    """Commands by name since the last CONFIG RESETSTAT (AUTH, PING, ... left out)."""
    skip = {"config|resetstat", "info", "ping", "hello", "client|setinfo", "select",
            "client|setname", "script|load"}
    return {name.removeprefix("cmdstat_"): int(stat["calls"])
            for name, stat in r.info("commandstats").items()
            if name.removeprefix("cmdstat_") not in skip}


@pytest.fixture
def r(lone_redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(lone_redis_url)
    yield client
    client.close()


def counted(r: redis.Redis, step: Callable[[], Any]) -> dict[str, int]:
    r.config_resetstat()
    step()
    return calls(r)


def publish(conn: Connection, queue: str, n: int, client: str = "",
            priority: int = 0) -> None:
    exchange = Exchange(queue, type="direct")
    producer = Producer(conn.default_channel)
    for i in range(n):
        producer.publish({"n": i}, exchange=exchange, routing_key=queue, priority=priority,
                         headers={CLIENT_HEADER: client} if client else {},
                         declare=[Queue(queue, exchange, routing_key=queue)],
                         serializer="json")


def test_a_declare_of_an_empty_queue_is_one_exists_and_a_busy_one_counts_exactly(
        lone_redis_url: str, r: redis.Redis) -> None:
    """queue_declare's message count, asked by every process's first publish to a queue."""
    with Connection(lone_redis_url, transport=TRANSPORT) as conn:
        channel = conn.default_channel
        channel.queue_declare("ocr-warm")  # the channel's connection made
        for queue in ("ocr-empty", "celeryev.x"):  # laned, and not
            assert counted(r, lambda q=queue: channel.queue_declare(q).message_count == 0) \
                == {"exists": 1}
        # Messages in lanes (two clients, two priorities), in the list, in another queue.
        publish(conn, "ocr-busy", 3, client="alice")
        publish(conn, "ocr-busy", 2, client="bob", priority=6)
        publish(conn, "ocr-busy", 4)
        publish(conn, "ocr-busy", 1, priority=9)
        publish(conn, "ocr-other", 5, client="carol")
        assert channel.queue_declare("ocr-busy").message_count == 10
        assert channel.queue_declare("ocr-other").message_count == 5
        # Rings hold clients (of the other queues): counted, and found empty.
        assert channel.queue_declare("ocr-empty").message_count == 0
        publish(conn, "celeryev.x", 2)
        assert channel.queue_declare("celeryev.x").message_count == 2
        assert channel.queue_declare("ocr-busy", passive=True).message_count == 10


def test_a_binding_is_two_sadds_its_permanent_entry_first(lone_redis_url: str,
                                                          r: redis.Redis) -> None:
    """No MULTI: the permanent set lists a binding before its exchange's table does.

    A sweep (ours, binding_expiry.py, or a stock kombu 5.7 client's) keeps a table entry
    listed permanent, so at no moment can one find the table's entry without it.
    """
    exchange = Exchange("ocr-bind", type="direct")
    first, second = (Queue(f"ocr-bind-{n}", exchange, routing_key="ocr-bind")
                     for n in (1, 2))
    with Connection(lone_redis_url, transport=TRANSPORT) as conn:
        channel = conn.default_channel
        channel.queue_declare("ocr-warm")
        exchange(channel).declare()  # the channel's own state: no command
        assert counted(r, lambda: first(channel).queue_bind()) == {"sadd": 2}
        with r.monitor() as monitor:
            second(channel).queue_bind()
            seen = [monitor.next_command()["command"] for _ in range(2)]
    assert [command.split(" ")[:2] for command in seen] == [
        ["SADD", f"{layout.BINDING_PERMANENT_PREFIX}ocr-bind"],
        ["SADD", f"{layout.BINDING_PREFIX}ocr-bind"]]
    for key in (layout.BINDING_PREFIX, layout.BINDING_PERMANENT_PREFIX):
        assert {m.decode().rsplit(layout.SEP, 1)[-1] for m in r.smembers(f"{key}ocr-bind")} \
            == {first.name, second.name}
