"""Held records on a real Redis: one write a fetch, one an ack; swept and restored.

A message a worker took is held in one record (tasks/broker/unacked.py) in the hash of the
list it was taken from: the fetch writes it with one HSET and the acknowledgement drops
it with one HDEL (INFO commandstats on a redis-server of the test's own). The sweep of
dead holders and the visibility timeout put them back. (Layouts 1 and 2's records:
tests/queue/test_broker_migration.py.)
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Connection, Consumer, Exchange, Queue

from tasks.broker import unacked
from tasks.broker.fetch_script import fetch_command
from tasks.broker.holders import HolderSweep
from tasks.broker.lanes import push_command
from tasks.broker.layout import (
    HELD_LISTS_KEY,
    UNACKED_MUTEX_KEY,
    list_held_key,
    list_lane_key,
    list_ring_key,
)
from tasks.state import lua
from tasks.state.keys import WORKERS_KEY

WINDOW, TTL = 6.0, 30.0


@pytest.fixture
def r(lone_redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(lone_redis_url)
    yield client
    client.close()


def message(client: str, n: int) -> str:
    return json.dumps({"body": "", "headers": {"ocr_client": client, "n": n},
                       "properties": {"delivery_tag": str(uuid.uuid4())}})


def push(r: redis.Redis, queue: str, client: str, n: int) -> None:
    lua.run(r, push_command("", queue, client, message(client, n)))


def fetch(r: redis.Redis, queue: str, now: float, holder: str = "",
             acks: tuple[tuple[str, str], ...] = ()) -> str:
    """A fetch of this release.

    Its list is named in the set of lists with held records, as a worker's consume
    names it.
    """
    r.sadd(HELD_LISTS_KEY, queue)
    reply = lua.run(r, fetch_command("", [(queue, 0, True, True)], now, 0,
                                         probe=False, holder=holder, acks=acks))
    return str(reply[2].decode()) if reply else ""


def transport(url: str, options: dict[str, Any]) -> Connection:
    """A connection of this project's transport to `url` with its `options`."""
    return Connection(url, transport="tasks.broker.transport:Transport",
                      transport_options=options)


def alive(r: redis.Redis, node: str, pid: int) -> None:
    """`node`'s presence record, refreshed now, naming `pid`."""
    r.hset(WORKERS_KEY, node, json.dumps({"queues": ["ocr"], "pid": pid,
                                          "expires": time.time() + TTL}))


def n_of(raw: bytes) -> int:
    return int(json.loads(raw)["headers"]["n"])


def test_a_fetch_holds_with_one_write_and_an_ack_drops_with_one(r: redis.Redis) -> None:
    for n in range(3):  # one left: the client's ring entries are not dropped
        push(r, "ocr", "alice", n)
    held_in = list_held_key("ocr")
    r.sadd(HELD_LISTS_KEY, "ocr")
    r.config_resetstat()
    tag = fetch(r, "ocr", time.time(), holder="w@h|1")
    calls = {k.removeprefix("cmdstat_"): v["calls"] for k, v in r.info("commandstats").items()}
    assert calls.get("hset") == 1 and "zadd" not in calls, calls
    found = unacked.parse(r.hget(held_in, tag))
    assert found is not None and (found.holder, found.src, found.ring, found.client) == (
        "w@h|1", list_lane_key("ocr", "alice"), list_ring_key("ocr"), "alice")
    assert json.loads(found.record)[1:] == ["", "ocr"]
    # the acknowledgement rides on the next fetch: one HDEL
    r.config_resetstat()
    second = fetch(r, "ocr", time.time(), holder="w@h|1", acks=((held_in, tag),))
    calls = {k.removeprefix("cmdstat_"): v["calls"] for k, v in r.info("commandstats").items()}
    assert calls.get("hdel") == 1 and "zrem" not in calls, calls
    assert r.hkeys(held_in) == [second.encode()]


def test_an_ack_alone_is_one_command(lone_redis_url: str) -> None:
    """A message taken by basic_get (held by `QoS.append`, one HSET), acknowledged: one HDEL."""
    queue = Queue("acked", Exchange("acked", type="direct"), routing_key="acked")
    r = redis.Redis.from_url(lone_redis_url)
    with Connection(lone_redis_url, transport="tasks.broker.transport:Transport") as conn:
        channel = conn.channel()
        conn.Producer(channel).publish({"n": 1}, exchange=queue.exchange, routing_key="acked",
                                       declare=[queue], serializer="json")
        got = queue(channel).get(no_ack=False)
        assert got is not None and r.hlen(list_held_key("acked")) == 1
        r.config_resetstat()
        got.ack()
        calls = {k.removeprefix("cmdstat_"): v["calls"]
                 for k, v in r.info("commandstats").items()}
        calls.pop("config|resetstat", None)
        assert calls == {"hdel": 1}, calls
        assert r.hlen(list_held_key("acked")) == 0
    r.close()


def test_a_dead_holder_s_messages_are_swept_back(r: redis.Redis) -> None:
    """A holder dead (its node's record names another pid): its messages back at the front.

    Each back in the lane it was taken from, its client in the ring again; a live
    holder's and a record without holder are left.
    """
    for n in range(4):
        push(r, "ocr", "alice", n)
    now = time.time()
    dead = fetch(r, "ocr", now, holder="new@h|8")
    kept = fetch(r, "ocr", now, holder="live@h|9")
    unheld = fetch(r, "ocr", now)
    gone = fetch(r, "ocr", now, holder="new@h|8")
    assert r.llen(list_lane_key("ocr", "alice")) == 0
    assert not r.exists(list_ring_key("ocr"))  # the lone client left
    alive(r, "new@h", 80)  # restarted: another pid
    alive(r, "live@h", 9)
    back = HolderSweep(r, r, WINDOW, TTL).sweep(now)
    assert sorted(back) == sorted([dead, gone])
    # each back at the end taken first of the lane it was taken from
    assert sorted(n_of(m) for m in r.lrange(list_lane_key("ocr", "alice"), 0, -1)) == [0, 3]
    assert r.lrange(list_ring_key("ocr"), 0, -1) == [b"alice"]
    assert r.hget(list_ring_key("ocr") + ":count", "alice") == b"2"
    assert sorted(r.hkeys(list_held_key("ocr"))) == sorted([kept.encode(), unheld.encode()])


def test_a_holder_of_no_node_counts_as_dead_after_the_window(r: redis.Redis) -> None:
    for n in range(2):
        push(r, "ocr", "bob", n)
    now = time.time()
    old = fetch(r, "ocr", now - 2 * WINDOW, holder="gone@h|1")
    fresh = fetch(r, "ocr", now, holder="gone@h|1")
    assert HolderSweep(r, r, WINDOW, TTL).sweep(now) == [old]
    assert r.hkeys(list_held_key("ocr")) == [fresh.encode()]


def test_a_message_past_the_visibility_timeout_is_restored(lone_redis_url: str) -> None:
    name = "visible"
    queue = Queue(name, Exchange(name, type="direct"), routing_key=name)
    r = redis.Redis.from_url(lone_redis_url)
    options = {"visibility_timeout": 60}
    with transport(lone_redis_url, options) as conn:
        channel = conn.channel()
        for n in range(2):
            conn.Producer(channel).publish({"n": n}, exchange=queue.exchange, routing_key=name,
                                           declare=[queue], serializer="json")
        late = fetch(r, name, time.time() - 120, holder="w@h|1")
        recent = fetch(r, name, time.time(), holder="w@h|1")
        assert r.llen(name) == 0
        with Consumer(channel, [queue], no_ack=False, accept=["json"]):
            channel.qos.restore_visible()
        assert r.llen(name) == 1
        restored = json.loads(r.lindex(name, 0))
        assert json.loads(base64.b64decode(restored["body"])) == {"n": 0}
        assert restored["headers"]["redelivered"] is True
        assert r.hkeys(list_held_key(name)) == [recent.encode()]
        assert late != recent
    r.close()


def test_one_worker_of_the_fleet_looks_for_visible_messages_an_interval(
        lone_redis_url: str) -> None:
    """The look reads every held record's head: the fleet's workers take turns.

    Two workers' channels ask within one interval: the first looks, the second costs an
    EXISTS and the mutex's script (its SET and GET); once the interval is over, the
    next ask looks again and restores what is past the timeout.
    """
    name = "visible-turns"
    queue = Queue(name, Exchange(name, type="direct"), routing_key=name)
    r = redis.Redis.from_url(lone_redis_url)
    options = {"visibility_timeout": 60, "unacked_restore_interval": 1,
               "unacked_restore_throttle": 1}
    with transport(lone_redis_url, options) as one, \
            transport(lone_redis_url, options) as two:
        first, second = one.channel(), two.channel()
        for n in range(2):
            one.Producer(first).publish({"n": n}, exchange=queue.exchange,
                                        routing_key=name, declare=[queue], serializer="json")
        fetch(r, name, time.time(), holder="w@h|1")  # held, not past the timeout
        with Consumer(first, [queue], no_ack=False, accept=["json"]), \
                Consumer(second, [queue], no_ack=False, accept=["json"]):
            r.config_resetstat()
            first.qos.restore_visible()
            assert r.info("commandstats")["cmdstat_evalsha"]["calls"] == 2  # mutex, look
            second.qos.restore_visible()  # its first: the lists with held records read
            r.config_resetstat()
            second.qos.restore_visible()
            assert {k.removeprefix("cmdstat_"): v["calls"]
                    for k, v in r.info("commandstats").items()
                    if k not in ("cmdstat_config|resetstat",  # and a pool's first load
                                 "cmdstat_script|load")} == {"exists": 1, "evalsha": 1,
                                                            "set": 1, "get": 1}
            late = fetch(r, name, time.time() - 120, holder="w@h|1")
            time.sleep(1.0)
            second.qos.restore_visible()
        assert r.hget(list_held_key(name), late) is None and r.llen(name) == 1
    r.close()


def test_a_shorter_visibility_timeout_looks_within_a_longer_ones_interval(
        lone_redis_url: str) -> None:
    """A look with a longer timeout does not cover a shorter one's: that one looks too."""
    name = "visible-shorter"
    queue = Queue(name, Exchange(name, type="direct"), routing_key=name)
    r = redis.Redis.from_url(lone_redis_url)
    common = {"unacked_restore_interval": 5, "unacked_restore_throttle": 1}
    with transport(lone_redis_url, {**common, "visibility_timeout": 900}) as long, \
            transport(lone_redis_url, {**common, "visibility_timeout": 60}) as short:
        patient, eager = long.channel(), short.channel()
        long.Producer(patient).publish({"n": 0}, exchange=queue.exchange, routing_key=name,
                                       declare=[queue], serializer="json")
        fetch(r, name, time.time() - 120, holder="w@h|1")  # past 60 s, not 900 s
        with Consumer(patient, [queue], no_ack=False, accept=["json"]), \
                Consumer(eager, [queue], no_ack=False, accept=["json"]):
            patient.qos.restore_visible()
            assert r.llen(name) == 0 and r.exists(UNACKED_MUTEX_KEY)
            eager.qos.restore_visible()
        assert r.llen(name) == 1 and not r.hlen(list_held_key(name))
    r.close()


def test_a_failed_look_gives_the_interval_back(lone_redis_url: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A look cut short (its connection lost) leaves the next ask free to look at once."""
    name = "visible-failed"
    queue = Queue(name, Exchange(name, type="direct"), routing_key=name)
    r = redis.Redis.from_url(lone_redis_url)
    options = {"visibility_timeout": 60, "unacked_restore_interval": 5,
               "unacked_restore_throttle": 1}
    with transport(lone_redis_url, options) as conn:
        channel = conn.channel()
        conn.Producer(channel).publish({"n": 0}, exchange=queue.exchange, routing_key=name,
                                       declare=[queue], serializer="json")
        fetch(r, name, time.time() - 120, holder="w@h|1")
        with Consumer(channel, [queue], no_ack=False, accept=["json"]):
            def cut(*args: Any, **kwargs: Any) -> Any:
                raise redis.ConnectionError("connection lost under the look")

            with monkeypatch.context() as patch:
                patch.setattr(unacked.VISIBLE, "run", cut)
                with pytest.raises(redis.ConnectionError):
                    channel.qos.restore_visible()
            assert not r.exists(UNACKED_MUTEX_KEY)
            channel.qos.restore_visible()
        assert r.llen(name) == 1 and not r.hlen(list_held_key(name))
    r.close()


def test_a_warm_stop_s_running_messages_are_left_to_the_visibility_timeout(
        r: redis.Redis) -> None:
    """UNHOLD (a warm stop's running tasks): the holder dropped, the record kept, unswept."""
    push(r, "ocr", "carol", 0)
    now = time.time()
    tag = fetch(r, "ocr", now, holder="stopping@h|5")
    held_in = list_held_key("ocr")
    before = unacked.parse(r.hget(held_in, tag))
    assert unacked.UNHOLD.run(r, [held_in], [tag, "no-such-tag"]) == 1
    after = unacked.parse(r.hget(held_in, tag))
    assert before is not None and after is not None
    assert after == unacked.UnackedRecord(before.taken, "", before.src, before.ring, before.client,
                                       before.record)
    assert HolderSweep(r, r, WINDOW, TTL).sweep(now + 10 * WINDOW) == []
    assert r.hkeys(held_in) == [tag.encode()]


def test_a_fetch_connected_anew_names_its_lists_again(lone_redis_url: str) -> None:
    """A server reached anew (a failover's promoted replica) may lack a list's name.

    The fetch names a list in the set of lists with held records the first time it
    holds a message of it; after its connection connects again, it names it again, so
    the sweep and the visibility look never miss a record held on the new server.
    """
    name = "named-again"
    queue = Queue(name, Exchange(name, type="direct"), routing_key=name)
    r = redis.Redis.from_url(lone_redis_url)
    taken: list[Any] = []
    with transport(lone_redis_url, {}) as conn:
        channel = conn.channel()

        def publish(n: int) -> None:
            conn.Producer(channel).publish({"n": n}, exchange=queue.exchange, routing_key=name,
                                           declare=[queue], serializer="json")

        publish(0)
        with Consumer(channel, [queue], no_ack=False, accept=["json"],
                      callbacks=[lambda body, message: taken.append(message)]):
            conn.drain_events(timeout=5)
            assert len(taken) == 1 and r.smembers(HELD_LISTS_KEY) == {name.encode()}
            r.delete(HELD_LISTS_KEY)  # the set as a promoted replica may lack it
            channel.fetch_connection().disconnect()
            publish(1)
            conn.drain_events(timeout=5)
            assert len(taken) == 2 and r.smembers(HELD_LISTS_KEY) == {name.encode()}
            for message in taken:
                message.ack()
    r.close()
