"""Key layout 2 to 3 on a real Redis: clients follow the stored layout; workers move the old lanes.

While layout version 2 is stored (workers of the release before may run), a client of
this release writes version 2's lanes and doorbells, which both releases' workers
serve; a worker of this release moves version 2's lanes into its own before it fetches
(tasks/broker/old_lanes.py), oldest first, counted in the list's ring. Once every live
worker is of this release, one of them stores version 3 (tasks/broker/stored_layout.py,
`advance`), and clients write version 3's lanes from then on.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from kombu import Connection, Exchange, Producer, Queue

from tasks.broker import publishing, scripts, stored_layout
from tasks.broker.fetch_script import fetch_command
from tasks.broker.lanes import push_command
from tasks.broker.layout import (
    LAYOUT_KEY,
    LAYOUT_VERSION,
    lane_key,
    lanes_key,
    list_lane_key,
    list_ring_key,
    queue_wake_key,
    wake_key,
)

TRANSPORT = "tasks.broker.transport:Transport"


@pytest.fixture
def r(own_redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(own_redis_url)
    yield client
    client.close()


def record(layout: int | None, expires: float) -> str:
    fields: dict[str, object] = {"queues": ["ocr"], "pid": 1, "expires": expires}
    if layout is not None:
        fields["layout"] = layout
    return json.dumps(fields)


def test_the_layout_moves_on_once_no_older_worker_is_alive(r: redis.Redis) -> None:
    now = time.time()
    assert stored_layout.settle(r) == LAYOUT_VERSION  # a new Redis: this release's
    r.set(LAYOUT_KEY, 2)  # a Redis the release before laid out
    assert stored_layout.settle(r) == 2  # run on as it is
    older = {"new@a": record(LAYOUT_VERSION, now + 10), "old@b": record(None, now + 10)}
    assert stored_layout.advance(r, older, now) == 2  # one older is alive
    assert r.get(LAYOUT_KEY) == b"2"
    lapsed = {**older, "old@b": record(None, now - 1)}  # its record past its expiry
    assert stored_layout.advance(r, lapsed, now) == LAYOUT_VERSION
    assert r.get(LAYOUT_KEY) == str(LAYOUT_VERSION).encode()
    # once stored it stays, whatever joins (an older worker then refuses to start)
    assert stored_layout.advance(r, older, now) == LAYOUT_VERSION
    with pytest.raises(stored_layout.LayoutNewer):
        r.set(LAYOUT_KEY, LAYOUT_VERSION + 1)
        stored_layout.settle(r)


def test_a_client_writes_the_lanes_of_the_stored_layout(own_redis_url: str,
                                                        r: redis.Redis,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    monkeypatch.setattr(publishing, "LAYOUT_SECONDS", 0.0)  # read at every publish
    name = f"ocr-switch-{uuid.uuid4().hex[:6]}"
    queue = Queue(name, Exchange(name, type="direct"), routing_key=name)
    r.set(LAYOUT_KEY, 2)
    with Connection(own_redis_url, transport=TRANSPORT) as conn:
        producer = Producer(conn.default_channel)

        def publish(n: int) -> None:
            producer.publish({"n": n}, exchange=queue.exchange, routing_key=name,
                             declare=[queue], headers={"ocr_client": "c", "n": n},
                             serializer="json")

        publish(0)
        assert r.llen(lane_key(name, "c")) == 1 and r.lrange(lanes_key(0), 0, -1) == [b"c"]
        assert r.exists(wake_key(name)) and not r.exists(list_lane_key(name, "c"))
        r.set(LAYOUT_KEY, LAYOUT_VERSION)
        publish(1)
        assert r.llen(list_lane_key(name, "c")) == 1
        assert r.lrange(list_ring_key(name), 0, -1) == [b"c"]
        assert r.exists(queue_wake_key(name)) and r.llen(lane_key(name, "c")) == 1
    r.delete(lanes_key(0), lanes_key(0) + ":count")


def test_a_fetch_moves_the_old_lanes_oldest_first(r: redis.Redis) -> None:
    """Version 2's lanes of the lists a worker serves, moved into version 3's, then served.

    The old lane's messages keep their order and are taken before the new lane's own
    (they were pushed first); the old ring and counts lose the client; a client whose
    messages wait in a list this worker does not serve stays in the old ring.
    """
    name = f"ocr-moved-{uuid.uuid4().hex[:6]}"
    other = f"ocr-other-{uuid.uuid4().hex[:6]}"

    def envelope(n: int) -> str:
        return json.dumps({"body": "", "headers": {"ocr_client": "c", "n": n},
                           "properties": {"delivery_tag": str(uuid.uuid4())}})

    for n in range(3):  # the release before's pushes
        scripts.run(r, push_command("", name, 0, "c", envelope(n), layout=2))
    scripts.run(r, push_command("", other, 0, "c", envelope(9), layout=2))
    scripts.run(r, push_command("", name, 0, "c", envelope(3)))  # this release's
    assert r.hget(lanes_key(0) + ":count", "c") == b"4"
    lists = [(name, 0, True, True)]

    def fetch(move: bool) -> int | None:
        reply = scripts.run(r, fetch_command("", lists, time.time(), 0, probe=False,
                                             move_old=move))
        return None if reply is None else int(json.loads(reply[1])["headers"]["n"])

    assert fetch(True) == 0
    assert not r.exists(lane_key(name, "c"))
    assert r.hget(lanes_key(0) + ":count", "c") == b"1"  # `other`'s message still there
    assert r.lrange(lanes_key(0), 0, -1) == [b"c"]
    assert [fetch(False) for _ in range(4)] == [1, 2, 3, None]
    assert not r.exists(list_ring_key(name), list_ring_key(name) + ":count")
    assert r.llen(lane_key(other, "c")) == 1
    r.delete(lane_key(other, "c"), lanes_key(0), lanes_key(0) + ":count")
