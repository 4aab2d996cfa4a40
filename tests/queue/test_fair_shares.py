"""Weighted fair shares between clients: lanes in the Redis broker (tasks/broker/lanes.py).

The fetch script straight on a real redis-server (exact round-robin order), then real
workers with the fake engine: a noisy neighbour, shares by weight, a fanned-out PDF's
pages in their client's lane, an anonymous message served.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from tasks.broker.fetch_script import fetch_command
from tasks.broker.lanes import push_command
from tasks.broker.layout import (
    LANE_WEIGHTS_KEY,
    list_held_key,
    list_lane_key,
    list_ring_key,
    queue_wake_key,
)
from tasks.client import OcrClient
from tasks.state import lua
from tests.harness import (
    FAST_PAGES,
    Worker,
    eventually,
    fake_env,
    make_client,
)
from tests.image_fixtures import png
from tests.pdf_fixtures import image_pdf, plain_pages


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.delete(LANE_WEIGHTS_KEY)
    client.close()


def envelope(client: str, n: int) -> str:
    return json.dumps({"body": "", "headers": {"ocr_client": client, "n": n},
                       "properties": {"delivery_tag": str(uuid.uuid4()),
                                      "delivery_info": {"exchange": "", "routing_key": "q"}}})


def who(item: bytes) -> str:
    return str(json.loads(item)["headers"]["ocr_client"])


class Broker:
    """The lanes' scripts under a key prefix of their own (kombu's global prefix)."""

    def __init__(self, r: redis.Redis) -> None:
        self.r = r
        self.prefix = f"t{uuid.uuid4().hex[:8]}:"

    def key(self, name: str) -> str:
        return self.prefix + name

    def ring(self, name: str) -> str:
        return list_ring_key(self.key(name))

    def lane(self, name: str, client: str) -> str:
        return list_lane_key(self.key(name), client)

    def push(self, name: str, client: str, count: int) -> None:
        for n in range(count):
            lua.run(self.r, push_command(self.prefix, name, client, envelope(client, n)))

    def plain(self, name: str, n: int = 0) -> None:
        self.r.lpush(self.key(name), envelope("", n))

    def fetch(self, lists: list[tuple[str, int]]) -> tuple[str, str] | None:
        """(list, client) of the message the fetch takes, None when nothing waits."""
        reply = lua.run(self.r, fetch_command(
            self.prefix, [(name, step, True, True) for name, step in lists], 1.0, 0))
        return None if reply is None else (reply[0].decode()[len(self.prefix):],
                                           who(reply[1]))


@pytest.fixture
def broker(r: redis.Redis) -> Iterator[Broker]:
    made = Broker(r)
    yield made
    for key in [*r.scan_iter(f"{made.prefix}*"), *r.scan_iter(f"{{{made.prefix}*")]:
        r.delete(key)


def test_the_fetch_serves_clients_by_weighted_round_robin(broker: Broker) -> None:
    broker.r.hset(LANE_WEIGHTS_KEY, "c", 2)
    broker.push("q", "a", 5)
    broker.push("q", "b", 5)
    broker.push("q", "c", 10)
    assert broker.r.lrange(broker.ring("q"), 0, -1) == [b"a", b"b", b"c"]
    assert broker.r.llen(broker.key("q")) == 0
    assert broker.r.llen(broker.lane("q", "a")) == 5
    order = [broker.fetch([("q", 0)]) for _ in range(12)]
    assert [c for _, c in order] == ["a", "b", "c", "c"] * 3  # type: ignore[misc]
    # an anonymous message (a stock kombu client's, a restore) joins the ring at the end
    broker.plain("q")
    order = [broker.fetch([("q", 0)]) for _ in range(5)]
    assert [c for _, c in order] == ["a", "b", "c", "c", ""]  # type: ignore[misc]
    # a client whose lane empties leaves the ring at once: the others share the list
    order = [broker.fetch([("q", 0)]) for _ in range(4)]
    assert [c for _, c in order] == ["a", "b", "c", "c"]  # type: ignore[misc]
    assert broker.fetch([("q", 0)]) is None
    assert broker.r.llen(broker.ring("q")) == 0
    assert not broker.r.hgetall(broker.ring("q") + ":count")
    # each held until acknowledged, in the hash of the list it was taken from
    assert broker.r.hlen(list_held_key(broker.key("q"))) == 21


def test_each_list_has_its_own_ring_served_in_the_fetchs_order(broker: Broker) -> None:
    """Clients share each list by its own ring; the lists of one step go in their order.

    A worker turns the order of its queues after each message it takes (kombu's queue
    cycle), so no queue of a step waits behind another's backlog.
    """
    broker.push("ocr", "a", 2)
    broker.push("ocr-x", "a", 1)
    broker.push("ocr-x", "b", 2)
    assert broker.r.lrange(broker.ring("ocr"), 0, -1) == [b"a"]
    assert broker.r.lrange(broker.ring("ocr-x"), 0, -1) == [b"a", b"b"]
    assert broker.fetch([("ocr-x", 0), ("ocr", 0)]) == ("ocr-x", "a")
    assert broker.fetch([("ocr", 0), ("ocr-x", 0)]) == ("ocr", "a")
    assert broker.fetch([("ocr-x", 0), ("ocr", 0)]) == ("ocr-x", "b")
    # a worker that serves only `ocr-x` never reads `ocr`'s ring
    assert broker.fetch([("ocr-x", 0)]) == ("ocr-x", "b")
    assert broker.fetch([("ocr-x", 0)]) is None
    assert broker.r.lrange(broker.ring("ocr"), 0, -1) == [b"a"]
    assert broker.fetch([("ocr", 0), ("ocr-x", 0)]) == ("ocr", "a")
    assert broker.fetch([("ocr", 0), ("ocr-x", 0)]) is None


def test_a_higher_priority_list_goes_first_whatever_the_share(broker: Broker) -> None:
    broker.push("q\x06\x166", "a", 3)
    broker.push("q", "b", 2)
    broker.plain("q\x06\x166")
    lists = [("q", 0), ("q\x06\x166", 6)]
    low = "q\x06\x166"
    taken = [broker.fetch(lists) for _ in range(7)]
    assert taken == [("q", "b"), ("q", "b"), (low, "a"), (low, ""), (low, "a"),
                     (low, "a"), None]


def test_a_list_without_lanes_is_served_as_before(broker: Broker) -> None:
    for n in range(3):
        broker.plain("plain", n)
    assert [broker.fetch([("plain", 0)]) for _ in range(4)] == [("plain", "")] * 3 + [None]
    assert not broker.r.exists(broker.ring("plain"))


def test_a_list_without_lanes_beside_laned_ones_is_the_steps_anonymous_lane(
        broker: Broker) -> None:
    """A worker's direct queue (no lanes) is served in its step's rings, as "" is.

    An empty step, its direct queue's list included, costs the fetch one EXISTS: the
    direct queue's tail is read only where that EXISTS counts a message.
    """
    def fetch(lists: list[tuple[str, int, bool]]) -> tuple[str, str] | None:
        reply = lua.run(broker.r, fetch_command(
            broker.prefix, [(n, s, laned, True) for n, s, laned in lists], 1.0, 0))
        return None if reply is None else (reply[0].decode()[len(broker.prefix):],
                                           who(reply[1]))

    lists = [("q", 0, True), ("dq", 0, False), ("q\x06\x163", 3, True), ("dq\x06\x163", 3, False)]
    broker.push("q\x06\x163", "a", 2)
    broker.plain("dq\x06\x163")
    commands: list[str] = []
    with broker.r.monitor() as monitor:
        assert fetch(lists) == ("q\x06\x163", "a")
        for seen in monitor.listen():
            if seen.get("client_type") == "lua":  # the script's own commands
                commands.append(seen["command"])
            if seen["command"].startswith("HINCRBY"):
                break  # the taken message's count: the fetch's last command for "a"
    dq = broker.key("dq")
    assert not [c for c in commands if c.startswith("LINDEX") and dq in c.split()[1:2]], \
        commands
    assert [c.split()[0] for c in commands if f" {dq} " in f"{c} "][:1] == ["EXISTS"]
    # the direct queue's message takes the anonymous lane's turn, after a's
    assert [fetch(lists) for _ in range(3)] == [("dq\x06\x163", ""), ("q\x06\x163", "a"), None]


def test_the_depth_counts_every_lane(r: redis.Redis) -> None:
    from tasks.metrics.queue_depth import QueueDepth

    name = f"fd-{uuid.uuid4().hex[:6]}"
    broker = Broker(r)
    broker.prefix = ""
    broker.push(name, "a", 3)
    broker.push(f"{name}\x06\x163", "b", 2)
    broker.plain(name)
    old = json.loads(envelope("a", 9))
    old["headers"]["ocr_published"] = 1000.0
    r.rpush(list_lane_key(name, "a"), json.dumps(old))  # the lane's oldest, at its tail
    depth = QueueDepth(r, {})
    assert depth.waiting([name]) == {name: 7}
    assert depth.oldest_ages([name], now=1100.0)[name] == pytest.approx(100.0)
    r.hincrby(list_ring_key(name) + ":count", "a", 1)
    while broker.fetch([(name, 0), (f"{name}\x06\x163", 3)]):
        pass
    assert depth.waiting([name]) == {name: 0}


# --- real workers: one worker, two children, the fake engine at 0.25 s a page ----------

PAGE_SECONDS = 0.25


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., Worker]) -> Worker:
    env = {**fake_env(OCR_CONCURRENCY="2", FAKE_PAGE_SECONDS=str(PAGE_SECONDS)), **FAST_PAGES}
    return start_worker(**env)


@pytest.fixture
def clients(redis_url: str) -> Iterator[Callable[[str], OcrClient]]:
    made: list[OcrClient] = []

    def named(name: str) -> OcrClient:
        client = make_client(redis_url)
        client.client = name
        made.append(client)
        return client

    yield named
    for client in made:
        client.close()


def done(client: OcrClient, jobs: list[str]) -> int:
    return sum(client.status(job).state == "SUCCESS" for job in jobs)


def test_a_client_backlog_does_not_hold_another_clients_job(
        worker: Worker, clients: Callable[[str], OcrClient], redis_url: str) -> None:
    noisy, quiet = clients("noisy"), clients("quiet")
    backlog = [noisy.submit(png(150 + i % 50), filename=f"n{i}.png") for i in range(60)]
    sent = time.monotonic()
    job = quiet.submit(png(120), filename="q.png")
    result = quiet.wait([job], timeout=120)[job]
    waited = time.monotonic() - sent
    assert result["status"] == "SUCCESS"
    ahead = done(noisy, backlog)
    # first come, first served it would wait for the whole backlog: 60 pages, 7.5 s
    assert ahead <= 30, f"{ahead} of the backlog's 60 pages went first ({waited:.1f} s)"
    # an anonymous message (a stock kombu client's: no header) is served between them
    anonymous = noisy.app.send_task("ocr.document", kwargs={"blob": noisy._blobs.put(png(90))})
    assert noisy.wait([anonymous.id], timeout=120)[anonymous.id]["status"] == "SUCCESS"
    assert done(noisy, backlog) < 60
    assert {r["status"] for r in noisy.wait(backlog, timeout=180).values()} == {"SUCCESS"}


def test_backlogged_clients_share_by_weight(
        worker: Worker, clients: Callable[[str], OcrClient], redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    names = ("w-one", "w-two", "w-four")
    r.hset(LANE_WEIGHTS_KEY, mapping={"w-one": 1, "w-two": 1, "w-four": 2})
    senders = {name: clients(name) for name in names}
    jobs = {name: [senders[name].submit(png(150 + i % 50), filename=f"{name}{i}.png")
                   for i in range(45)] for name in names}
    lanes = [list_lane_key("ocr\x06\x163", name) for name in names]  # `normal`'s list

    def waiting() -> list[int]:
        pipe = r.pipeline()
        for lane in lanes:
            pipe.llen(lane)
        return list(pipe.execute())

    start = waiting()
    assert min(start) >= 20, start  # every client backlogged when the window opens
    end = eventually(lambda: (lambda now: now if sum(start) - sum(now) >= 40 else None)(
        waiting()), 60, "40 pages taken", interval=0.05)
    taken = [a - b for a, b in zip(start, end, strict=True)]
    shares = [100 * t / sum(taken) for t in taken]
    assert min(end) > 0, (start, end)  # still all backlogged at the window's end
    for share, expected in zip(shares, (25, 25, 50), strict=True):
        assert abs(share - expected) <= 12, (taken, shares)
    for name in names:
        results = senders[name].wait(jobs[name], timeout=180)
        assert {r["status"] for r in results.values()} == {"SUCCESS"}
    r.hdel(LANE_WEIGHTS_KEY, *names)
    r.close()


def test_a_fanned_out_pdfs_pages_wait_in_their_clients_lane(
        worker: Worker, clients: Callable[[str], OcrClient], redis_url: str) -> None:
    sender = clients("pdf-sender")
    r = redis.Redis.from_url(redis_url)
    job = sender.submit(image_pdf(plain_pages(12)), filename="twelve.pdf", mode="ocr")

    def pages_in_lanes() -> list[Any] | None:
        keys = list(r.scan_iter("{ocr*}:lane:pdf-sender"))
        items = [item for key in keys for item in r.lrange(key, 0, -1)]
        return items if len(items) >= 4 else None

    items = eventually(pages_in_lanes, 60, "the PDF's pages waiting", interval=0.05)
    headers = [json.loads(item)["headers"] for item in items]
    assert {h["task"] for h in headers} == {"ocr.pdf_page"}
    assert {h["ocr_client"] for h in headers} == {"pdf-sender"}
    result = sender.wait([job], timeout=120)[job]
    assert (result["status"], len(result["pages"]), result["client"]) == \
        ("SUCCESS", 12, "pdf-sender")
    r.close()


def test_a_client_backlog_does_not_hold_another_clients_pdf_pages(
        worker: Worker, clients: Callable[[str], OcrClient]) -> None:
    """A PDF's pages wait in its engine's queue (`ocr-fake`), the backlog in `ocr`.

    The worker's queues take turns (its queue cycle), so the pages go between the
    backlog's messages, not after them.
    """
    noisy, quiet = clients("noisy-pdf"), clients("quiet-pdf")
    backlog = [noisy.submit(png(150 + i % 50), filename=f"n{i}.png") for i in range(60)]
    job = quiet.submit(image_pdf(plain_pages(8)), filename="q.pdf", mode="ocr")
    result = quiet.wait([job], timeout=120)[job]
    assert (result["status"], len(result["pages"])) == ("SUCCESS", 8)
    ahead = done(noisy, backlog)
    # first come, first served the pages would wait for the whole backlog: 60 pages
    assert ahead <= 40, f"{ahead} of the backlog's 60 pages went before the PDF's 8"
    assert {r["status"] for r in noisy.wait(backlog, timeout=180).values()} == {"SUCCESS"}


def test_a_queues_size_counts_its_lanes(clients: Callable[[str], OcrClient]) -> None:
    """Kombu's queue_declare count (Celery's `inspect`, `purge`'s check) sees the lanes."""
    sender = clients("sized")
    queue = f"ocr-sized-{uuid.uuid4().hex[:6]}"
    for n in range(3):
        sender.app.send_task("ocr.document", kwargs={}, queue=queue,
                             headers={"ocr_client": "sized"}, priority=3 * (n % 2))
    sender.app.send_task("ocr.document", kwargs={}, queue=queue)
    with sender.app.connection_for_write() as conn:
        declared = conn.default_channel.queue_declare(queue, passive=True)
    assert declared.message_count == 4


def test_a_restored_message_goes_back_to_its_lane_first(redis_url: str) -> None:
    """Kombu's restore (visibility timeout, a lost worker) puts it back in its lane."""
    from kombu import Connection, Exchange, Producer, Queue

    name = f"ocr-restore-{uuid.uuid4().hex[:6]}"
    queue = Queue(name, Exchange(name, type="direct"), routing_key=name)
    r = redis.Redis.from_url(redis_url)
    with Connection(redis_url, transport="tasks.broker.transport:Transport") as conn:
        channel = conn.default_channel
        producer = Producer(channel)
        for n in range(2):
            producer.publish({"n": n}, exchange=queue.exchange, routing_key=name,
                             declare=[queue], headers={"ocr_client": "back", "n": n},
                             serializer="json")
        lane = list_lane_key(name, "back")
        assert r.llen(lane) == 2
        taken = lua.run(r, fetch_command("", [(name, 0, True, True)], 1.0, 0))
        assert json.loads(taken[1])["headers"]["n"] == 0 and r.llen(lane) == 1
        r.script_flush()  # the restore's transaction loads the push script it runs
        channel.qos.restore_by_tag(taken[2].decode(), key=list_held_key(name))
        assert r.llen(lane) == 2 and r.llen(name) == 0
        again = lua.run(r, fetch_command("", [(name, 0, True, False)], 1.0, 0))
        restored = json.loads(again[1])
        assert restored["headers"]["n"] == 0 and restored["headers"]["redelivered"] is True
    r.delete(lane)
    r.delete(list_ring_key(name), list_ring_key(name) + ":count")  # dropped by hand
    r.close()


def test_pushes_held_together_go_in_one_script_in_their_order(lone_redis_url: str) -> None:
    """A document's page tasks: one push at the block's end, taken in published order."""
    from kombu import Connection, Exchange, Producer, Queue

    from tasks.broker.publishing import pushes_together

    redis_url = lone_redis_url
    name = f"ocr-together-{uuid.uuid4().hex[:6]}"
    queue = Queue(name, Exchange(name, type="direct"), routing_key=name)
    r = redis.Redis.from_url(redis_url)
    lane = list_lane_key(name, "pages")
    with Connection(redis_url, transport="tasks.broker.transport:Transport") as conn:
        channel = conn.default_channel
        producer = Producer(channel)
        producer.publish({}, exchange=queue.exchange, routing_key=name, declare=[queue],
                         serializer="json")  # declared; no client: the list itself
        r.delete(name)
        r.config_resetstat()
        with pushes_together(channel):
            for n in range(5):
                producer.publish({"n": n}, exchange=queue.exchange, routing_key=name,
                                 headers={"ocr_client": "pages", "n": n}, serializer="json")
            assert r.llen(lane) == 0  # held until the block ends
        stats = r.info("commandstats")
        assert stats["cmdstat_evalsha"]["calls"] == 1 and stats["cmdstat_lpush"]["calls"] == 1
        assert r.llen(lane) == 5 and r.hget(list_ring_key(name) + ":count", "pages") == b"5"
        assert r.lrange(list_ring_key(name), 0, -1) == [b"pages"]
        assert r.llen(queue_wake_key(name)) == 1
        order = [json.loads(item)["headers"]["n"] for item in reversed(r.lrange(lane, 0, -1))]
        assert order == [0, 1, 2, 3, 4]  # the fetch takes the tail first
        with pytest.raises(RuntimeError), pushes_together(channel):
            producer.publish({"n": 9}, exchange=queue.exchange, routing_key=name,
                             headers={"ocr_client": "pages", "n": 9}, serializer="json")
            raise RuntimeError("the split failed")
        assert r.llen(lane) == 5  # nothing sent from a block that raised
    r.close()


@pytest.mark.parametrize("refusal", ["oom", "too-few-replicas"])
def test_a_server_that_refuses_writes_loses_no_message_to_the_fetch(
        lone_redis_url: str, refusal: str) -> None:
    """Out of memory, or short of replicas: a lane's message is taken and recorded, or left.

    The fetch pops a client's lane (LMPOP) before it records the message: Redis runs a
    script on past its first write, and refuses that first write where it refuses
    writes at all (too few replicas), so neither case pops a message unrecorded.
    """
    r = redis.Redis.from_url(lone_redis_url)
    made = Broker(r)
    made.push("q", "a", 2)
    lane = made.lane("q", "a")
    if refusal == "oom":
        r.set("ballast", "x" * 2_000_000)
        r.config_set("maxmemory-policy", "noeviction")
        r.config_set("maxmemory", int(r.info("memory")["used_memory"]) - 200_000)
    else:
        r.config_set("min-replicas-to-write", 1)
    try:
        try:
            taken = made.fetch([("q", 0)])
        except redis.ResponseError:
            taken = None
        recorded = r.hvals(list_held_key(made.key("q")))
        assert r.llen(lane) + len(recorded) == 2, (taken, recorded)
        assert (taken is None) == (not recorded)
        if refusal != "oom":
            assert taken is None and r.llen(lane) == 2
    finally:
        r.config_set("maxmemory", 0)
        r.config_set("min-replicas-to-write", 0)
