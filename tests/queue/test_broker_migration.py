"""Layouts 1 and 2 retired: a worker of this release refuses them.

A Redis last written by the releases before layout 3 (the release before this one's
predecessors) holds clients' lanes in `ocr:lane:<list>:<client>` and messages held in
`unacked_held` (layout 2) or kombu's `unacked` (layout 1). The release before this one
(devkit/previous_release.py) reads them and moves them into layout 3. A worker of this
release on such a Redis stops (exit 2) with `broker_layout_old`, naming that way up.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tasks.broker import stored_layout
from tasks.broker.layout import LAYOUT_KEY, LAYOUT_VERSION
from tests.harness import Worker, fake_env, kill_all


@pytest.fixture
def r(own_redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(own_redis_url)
    yield client
    client.close()


def test_a_worker_refuses_layout_1_or_2(own_redis_url: str, r: redis.Redis,
                                        tmp_path: Path) -> None:
    """Stored 1 or 2, or none with an old layout's keys: refused, the command named.

    A worker stops (exit 2) before it takes anything; nothing is stored over the
    old layout.
    """
    r.set(LAYOUT_KEY, 2)
    worker = Worker(tmp_path / "worker.log", {"REDIS_URL": own_redis_url, **fake_env()})
    try:
        process = worker.spawn()
        assert process.wait(90) == 2, worker.log()[-3000:]
    finally:
        kill_all([worker])
    assert "broker_layout_old: the broker's key layout is version 2" in worker.log()
    assert "upgrade through the release before this one" in worker.log()
    assert not re.search(r"@\S+ ready\.", worker.log())
    assert r.get(LAYOUT_KEY) == b"2"
    for stored in (1, 2):
        r.set(LAYOUT_KEY, stored)
        with pytest.raises(stored_layout.LayoutOld, match=f"version {stored}"):
            stored_layout.settle(r)
    r.delete(LAYOUT_KEY)
    for key in stored_layout.FIXED_KEYS:  # a release before versions, or one that lost it
        if key.startswith("ocr:"):
            r.rpush(key, "alice")  # a client in a ring
        else:
            r.hset(key, "t", "x")  # a held record
        with pytest.raises(stored_layout.LayoutOld, match="no version"):
            stored_layout.settle(r)
        assert not r.exists(LAYOUT_KEY)
        r.delete(key)
    assert stored_layout.settle(r) == LAYOUT_VERSION  # none of them: a new Redis
