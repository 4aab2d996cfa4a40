"""Weighted fair shares between clients: lanes in the Redis broker (tasks/queue/lanes.py).

The fetch script straight on a real redis-server (exact round-robin order), then real
workers with the fake engine: a noisy neighbour, shares by weight, a fanned-out PDF's
pages in their client's lane, an anonymous message served.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
import redis

from tasks.queue.lanes import fetch_command, push_command
from tasks.state.keys import LANE_WEIGHTS_KEY, LANES_ACTIVE_KEY, lane_key, lanes_key

UNACKED = ("unacked:fair", "unacked_index:fair")


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.delete(*UNACKED, LANE_WEIGHTS_KEY)
    client.close()


def envelope(client: str, n: int) -> str:
    return json.dumps({"body": "", "headers": {"ocr_client": client, "n": n},
                       "properties": {"delivery_tag": str(uuid.uuid4()),
                                      "delivery_info": {"exchange": "", "routing_key": "q"}}})


def who(item: bytes) -> str:
    return str(json.loads(item)["headers"]["ocr_client"])


def fetch(r: redis.Redis, lists: list[str]) -> tuple[str, str] | None:
    """(list, client) of the message the fetch takes, None when nothing waits."""
    reply = r.execute_command(*fetch_command("", UNACKED, [(name, True) for name in lists],
                                             1.0, 0))
    return None if reply is None else (reply[0].decode(), who(reply[1]))


def push(r: redis.Redis, name: str, client: str, count: int) -> None:
    for n in range(count):
        r.execute_command(*push_command("", name, client, envelope(client, n)))


def test_the_fetch_serves_lanes_by_weighted_round_robin(r: redis.Redis) -> None:
    name = f"fq-{uuid.uuid4().hex[:6]}"
    r.hset(LANE_WEIGHTS_KEY, "c", 2)
    push(r, name, "a", 5)
    push(r, name, "b", 5)
    push(r, name, "c", 10)
    assert r.lrange(lanes_key(name), 0, -1) == [b"a", b"b", b"c"]
    assert r.llen(name) == 0 and r.llen(lane_key(name, "a")) == 5
    order = [fetch(r, [name])[1] for _ in range(12)]  # type: ignore[index]
    assert order == ["a", "b", "c", "c"] * 3
    # a anonymous message (a stock kombu client's, a restore) joins the ring at the end
    r.lpush(name, envelope("", 0))
    order = [fetch(r, [name])[1] for _ in range(5)]  # type: ignore[index]
    assert order == ["a", "b", "c", "c", ""]
    # a lane that empties leaves the ring at once: the others share the list
    assert [fetch(r, [name])[1] for _ in range(4)] == ["a", "b", "c", "c"]  # type: ignore[index]
    assert fetch(r, [name]) is None
    assert r.llen(lanes_key(name)) == 0 and not r.hexists(LANES_ACTIVE_KEY, name)
    assert r.zcard(UNACKED[1]) == 21  # every message recorded as unacknowledged


def test_a_higher_priority_list_goes_first_whatever_the_share(r: redis.Redis) -> None:
    name = f"fp-{uuid.uuid4().hex[:6]}"
    low = f"{name}\x06\x166"
    push(r, low, "a", 3)
    push(r, name, "b", 2)
    r.lpush(low, envelope("", 1))
    taken = [fetch(r, [name, low]) for _ in range(7)]
    assert taken == [(name, "b"), (name, "b"), (low, "a"), (low, ""), (low, "a"),
                     (low, "a"), None]


def test_a_list_without_lanes_is_served_as_before(r: redis.Redis) -> None:
    name = f"fn-{uuid.uuid4().hex[:6]}"
    for n in range(3):
        r.lpush(name, envelope("", n))
    assert [fetch(r, [name]) for _ in range(4)] == [(name, "")] * 3 + [None]
    assert not r.exists(lanes_key(name))


def test_the_depth_counts_every_lane(r: redis.Redis) -> None:
    from tasks.state.queue_depth import QueueDepth

    name = f"fd-{uuid.uuid4().hex[:6]}"
    push(r, name, "a", 3)
    push(r, f"{name}\x06\x163", "b", 2)
    r.lpush(name, envelope("", 0))
    old = json.loads(envelope("a", 9))
    old["headers"]["ocr_published"] = 1000.0
    r.rpush(lane_key(name, "a"), json.dumps(old))  # the lane's oldest, at its tail
    depth = QueueDepth(r, {})
    assert depth.waiting([name]) == {name: 7}
    assert depth.oldest_ages([name], now=1100.0)[name] == pytest.approx(100.0)
    fetch(r, [name])  # serves the ring: the anonymous message joins it
    assert depth.waiting([name]) == {name: 6}
