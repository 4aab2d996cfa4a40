"""What an idle worker costs Redis: a few commands a second, and it still wakes at once.

A redis-server of this module's own (its command counts are the worker's alone) and a
real Procfile worker (2 children, the fake engine: queue mechanics only). Idle, the
worker waits on its queues' doorbells in long blocking reads; its heartbeats and
presence record are one write every few seconds; kombu's restore check is one read.
The goal is 3 commands/s (docs: bench/README.md, `idle_fleet`); the bound here leaves
a loaded 2-core machine its margin.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu import Connection, Exchange, Queue

from tasks.broker import layout
from tasks.broker.fetch_script import fetch_command
from tasks.broker.lanes import push_command
from tasks.broker.layout import queue_wake_key
from tasks.broker.transport import TRANSPORT
from tasks.state import lua
from tests.harness import RedisServer, Worker, fake_env, stop_all

# Commands/s an idle worker may send here (goal 3, plus a loaded machine's margin).
IDLE_BOUND = 5.0
WINDOW = 10.0


@pytest.fixture(scope="module")
def own_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("idle-redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def idle_worker(own_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[Worker]:
    log: Path = tmp_path_factory.mktemp("idle-worker") / "worker.log"
    worker = Worker(log, {"REDIS_URL": own_server.url(), "OCR_CONCURRENCY": "2",
                          **fake_env()}).start()
    yield worker
    stop_all([worker])


def calls(client: redis.Redis) -> dict[str, int]:
    return {name: int(v["calls"]) for name, v in client.info("commandstats").items()}


def fetch(r: redis.Redis, probe: bool = True, woken: bool = False) -> list[Any] | None:
    """One fetch over a worker's lists: `ocr` and `ocr-control`, every priority step."""
    lists = [(layout.queue_list(q, step), step, True, True)
             for step in layout.PRIORITY_STEPS for q in ("ocr-control", "ocr")]
    reply: list[Any] | None = lua.run(r, fetch_command(
        "", lists, time.time(), 0, probe=probe, woken=woken))
    return reply


def test_an_empty_fetch_is_one_exists_and_a_lone_clients_keeps_no_turns(
        own_server: RedisServer) -> None:
    """Lane bookkeeping costs an idle worker, or a client alone, next to nothing."""
    r = redis.Redis(port=own_server.port)
    assert fetch(r) is None  # the first run loads the script (once per process and pool)
    before = calls(r)
    assert fetch(r) is None
    spent = {k: n - before.get(k, 0) for k, n in calls(r).items() if n != before.get(k, 0)}
    assert spent == {"cmdstat_evalsha": 1, "cmdstat_exists": 1, "cmdstat_info": 1}, spent
    step = 3
    for n in range(3):
        lua.run(r, push_command("", layout.queue_list("ocr", step), "alone",
                                    envelope(n)))
    before = calls(r)
    taken = [fetch(r, probe=n == 0, woken=n > 0) for n in range(3)]
    spent = {k: n - before.get(k, 0) for k, n in calls(r).items() if n != before.get(k, 0)}
    assert all(reply is not None for reply in taken)
    # a fetch woken by a doorbell says whether it left messages (the next ring's cue)
    assert [len(reply) for reply in taken if reply] == [3, 4, 4]
    assert [reply[3] > 0 for reply in taken[1:] if reply] == [True, False]
    assert fetch(r) is None and not r.exists(layout.list_ring_key(layout.queue_list("ocr", step)))
    # no turn kept, no weight read: the lone client's path; each message's tail read once
    assert "cmdstat_hget" not in spent and "cmdstat_hset" in spent, spent
    assert spent.get("cmdstat_lindex", 0) <= 3 * 3, spent


def envelope(n: int) -> str:
    return json.dumps({"body": "", "headers": {"ocr_client": "alone", "n": n},
                       "properties": {"delivery_tag": f"tag-{n}", "delivery_info": {
                           "exchange": "ocr", "routing_key": "ocr"}}})


def test_a_fetch_that_takes_nothing_empties_its_queues_doorbells(
        own_server: RedisServer) -> None:
    """A ring left for a message taken already would end the next wait for nothing.

    A woken fetch that leaves messages rings for the next idle worker; when its own
    worker takes them, that ring outlives them. The fetch that then finds every list
    and ring empty drops its queues' rings; a fetch that takes a message, and an idle
    fetch's one EXISTS, leave them, and so does every fetch another queue's.
    """
    r = redis.Redis(port=own_server.port)
    r.flushdb()
    step = 3
    mine = [queue_wake_key(q) for q in ("ocr-control", "ocr")]
    other = queue_wake_key("ocr-other")
    for n in range(2):
        lua.run(r, push_command("", layout.queue_list("ocr", step), "alone",
                                    envelope(n), ring_queue="ocr"))
    r.lpush(mine[0], "1")
    r.lpush(other, "1")
    assert r.exists(*mine, other) == 3
    first = fetch(r, probe=False, woken=True)
    assert first is not None and first[3] > 0  # left one: its worker rings again
    assert fetch(r, probe=False) is not None
    assert r.exists(*mine, other) == 3  # each took a message: rings stay
    before = calls(r)
    assert fetch(r) is None  # idle: its one EXISTS, nothing else
    spent = {k: n - before.get(k, 0) for k, n in calls(r).items() if n != before.get(k, 0)}
    assert spent == {"cmdstat_evalsha": 1, "cmdstat_exists": 1, "cmdstat_info": 1}, spent
    assert r.exists(*mine, other) == 3
    assert fetch(r, probe=False) is None  # looked through every list and ring
    assert r.exists(*mine) == 0 and r.exists(other) == 1
    # a ring with a message waiting is never dropped: the fetch takes the message
    lua.run(r, push_command("", layout.queue_list("ocr", step), "alone",
                                envelope(2), ring_queue="ocr"))
    assert fetch(r, probe=False) is not None and r.exists(mine[1]) == 1


def test_an_idle_worker_sends_a_few_commands_a_second(own_server: RedisServer,
                                                      idle_worker: Worker) -> None:
    r = redis.Redis(port=own_server.port)
    time.sleep(6)  # past its start: first heartbeat, presence, first fetch and wait
    before = calls(r)
    time.sleep(WINDOW)
    after = calls(r)
    sent = {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)}
    sent["cmdstat_info"] = sent.get("cmdstat_info", 1) - 1  # this test's own INFO
    rate = sum(sent.values()) / WINDOW
    assert rate <= IDLE_BOUND, f"{rate:.1f} commands/s idle: {sorted(sent.items())}"
    # it waits on doorbells (BLPOP), never polls the queues' lists one by one
    assert not sent.get("cmdstat_lindex") and not sent.get("cmdstat_llen"), sent


def test_a_restored_message_rings_its_queues_doorbell(own_server: RedisServer) -> None:
    """Idle workers wait long on doorbells: a message put back rings, as a publish does."""
    r = redis.Redis(port=own_server.port)
    name = "ocr-restored"
    queue = Queue(name, Exchange(name, "direct"), name)
    with Connection(own_server.url(), transport=TRANSPORT) as conn:
        channel = conn.channel()
        queue(channel).declare()
        conn.Producer(channel).publish({"n": 1}, exchange=name, routing_key=name)
        message = queue(channel).get(no_ack=False)
        assert message is not None
        r.delete(queue_wake_key(name))  # the publish's ring, answered
        message.requeue()  # kombu's restore of an unacknowledged message
        assert r.exists(queue_wake_key(name))
        assert r.llen(name) == 1
        channel.close()
