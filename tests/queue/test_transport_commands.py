"""What a queue's declare costs Redis, and what it still promises.

On a redis-server of the test's own, counted by `INFO commandstats` (a script's own
commands included): a declare of an empty queue is one EXISTS, of a busy one its exact
count (tasks/broker/redis_channel.py, publishing.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from kombu import Connection, Exchange, Producer, Queue

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
