"""Layouts 1 and 2 retired: `ocr_admin.py migrate-broker` moves them, a worker refuses them.

A Redis last written by the releases before layout 3 (devkit/previous_release.py:
layout 2's, and layout 1's before it) holds clients' lanes in `ocr:lane:<list>:<client>`
with one ring a priority step, and messages held in `unacked_held` (layout 2) or in
kombu's `unacked`, its index and holders (layout 1). Those keys are written here by
those releases' own scripts, run from their own trees; the command moves them into
layout 3 (tasks/cli/broker_layout.py, `migrate`), and this release's fetch then
takes every message exactly once. A worker of this release on such a Redis stops
(exit 2) with `broker_layout_old`, naming the command.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from devkit.previous_release import (
    LAYOUT_1_COMMIT,
    LAYOUT_1_SUBJECT,
    LAYOUT_2_COMMIT,
    LAYOUT_2_SUBJECT,
    ReleaseMissing,
    materialize,
    resolve,
)
from tasks.broker import stored_layout
from tasks.broker.fetch_script import fetch_command
from tasks.broker.layout import (
    HELD_LISTS_KEY,
    LAYOUT_KEY,
    LAYOUT_VERSION,
    list_held_key,
    list_lane_key,
    list_ring_key,
)
from tasks.state import lua
from tasks.state.keys import WORKERS_KEY
from tests.harness import ROOT, VENV_BIN, Worker, fake_env, kill_all

NORMAL = "ocr\x06\x163"  # `ocr`'s list of priority step 3

# Run from an old release's tree: its own lanes.py pushes (to its lanes and rings, a
# doorbell rung) and fetches (its records held, under a holder); prints each tag taken.
DRIVER = r"""
import json, sys
import redis
from tasks.broker import lanes, scripts
client = redis.Redis.from_url(sys.argv[1])
held = json.loads(sys.argv[2])
for op in json.loads(sys.argv[3]):
    if op[0] == "push":
        _, name, step, owner, body, queue = op
        scripts.run(client, lanes.push_command("", name, step, owner, body, ring_queue=queue))
    else:
        _, name, step, holder, now = op
        reply = scripts.run(client, lanes.fetch_command(
            "", held if isinstance(held, str) else tuple(held), [(name, step, True, True)],
            now, 0, probe=False, holder=holder))
        print(reply[2].decode())
"""


@pytest.fixture(scope="module")
def old_trees(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Layout 1's and layout 2's releases, each its own tree from git."""
    try:
        return {version: materialize(tmp_path_factory.mktemp(f"layout-{version}"),
                                     resolve(commit, subject))
                for version, commit, subject in ((1, LAYOUT_1_COMMIT, LAYOUT_1_SUBJECT),
                                                 (2, LAYOUT_2_COMMIT, LAYOUT_2_SUBJECT))}
    except ReleaseMissing as error:
        pytest.fail(str(error))


@pytest.fixture
def r(own_redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(own_redis_url)
    yield client
    client.close()


def old_release(tree: Path, url: str, held: str | list[str], *ops: list[object]) -> list[str]:
    """`ops` run by an old release's own scripts (`DRIVER`): the tags its fetches took."""
    done = subprocess.run([str(VENV_BIN / "python"), "-c", DRIVER, url, json.dumps(held),
                           json.dumps(ops)], cwd=tree, capture_output=True, text=True,
                          timeout=120, env={"PATH": f"{VENV_BIN}:/usr/bin:/bin",
                                            "PYTHONPATH": str(tree)})
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.split()


def envelope(owner: str, n: int) -> str:
    return json.dumps({"body": "", "headers": {"ocr_client": owner, "n": n},
                       "properties": {"delivery_tag": str(uuid.uuid4()),
                                      "delivery_info": {"exchange": "",
                                                        "routing_key": "ocr"}}})


def presence(r: redis.Redis, node: str, expires: float, layout: int | None) -> None:
    record: dict[str, object] = {"queues": ["ocr"], "pid": 7, "expires": expires}
    if layout is not None:
        record["layout"] = layout
    r.hset(WORKERS_KEY, node, json.dumps(record))


def migrate(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "ocr_admin.py", "migrate-broker", "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "REDIS_URL": url})


def old_fleet(r: redis.Redis, url: str, trees: dict[int, Path]) -> None:
    """A Redis both old releases wrote: alice's 0..4 and bob's 0..1 queued, 0 and 1 taken.

    Layout 1 stored (its release's worker came first); alice's 0 held by a layout 1
    worker, her 1 by a layout 2 one; a stock client's message in the list itself.
    """
    r.set(LAYOUT_KEY, 1)
    pushes = [["push", "ocr", 0, "alice", envelope("alice", n), "ocr"] for n in range(5)]
    pushes += [["push", NORMAL, 3, "bob", envelope("bob", n), "ocr"] for n in range(2)]
    now = time.time()
    assert len(old_release(trees[2], url, "unacked_held", *pushes)) == 0
    assert len(old_release(trees[1], url, ["unacked", "unacked_index"],
                           ["fetch", "ocr", 0, "old1@h|7", now])) == 1
    assert len(old_release(trees[2], url, "unacked_held",
                           ["fetch", "ocr", 0, "old2@h|6", now])) == 1
    r.lpush("ocr", envelope("", 0))
    assert r.hlen("unacked") == r.zcard("unacked_index") == r.hlen("unacked_holders") == 1
    assert r.hlen("unacked_held") == 1 and r.llen("ocr:lane:ocr:alice") == 3
    assert r.exists("ocr:lanes:0", "ocr:lanes:3", "ocr:wake:ocr") == 3


def drain(r: redis.Redis) -> list[tuple[str, int, bool]]:
    """Every message this release's fetch takes from `ocr`: (client, n, redelivered)."""
    taken = []
    r.sadd(HELD_LISTS_KEY, "ocr", NORMAL)
    lists = [("ocr", 0, True, True), (NORMAL, 3, True, True)]
    for _ in range(20):
        reply = lua.run(r, fetch_command("", lists, time.time(), 0, probe=False))
        if reply is None:
            return taken
        headers = json.loads(reply[1])["headers"]
        taken.append((headers["ocr_client"], headers["n"], bool(headers.get("redelivered"))))
    pytest.fail(f"more messages than were sent: {taken}")


def test_the_migration_moves_layouts_1_and_2_and_loses_and_doubles_nothing(
        own_redis_url: str, r: redis.Redis, old_trees: dict[int, Path]) -> None:
    old_fleet(r, own_redis_url, old_trees)
    presence(r, "old1@h", time.time() - 1, None)  # stopped: its record lapsed
    presence(r, "new@h", time.time() + 30, LAYOUT_VERSION)
    with pytest.raises(stored_layout.LayoutOld):
        stored_layout.settle(r)
    done = migrate(own_redis_url)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"stored": 1, "lanes": 2, "waiting": 5, "held": 1,
                                       "unacked": 1, "dropped": 1, "layout": 3}
    assert r.get(LAYOUT_KEY) == b"3" and stored_layout.settle(r) == LAYOUT_VERSION
    assert not r.exists(*stored_layout.FIXED_KEYS)
    assert not [*r.scan_iter(match="ocr:lane*"), *r.scan_iter(match="ocr:wake:*")]
    assert r.hget(list_ring_key("ocr") + ":count", "alice") == b"5"
    assert r.llen(list_lane_key(NORMAL, "bob")) == 2
    # every message once; alice's in order, those held put back at the end taken first
    taken = drain(r)
    assert sorted(taken) == [("", 0, False), ("alice", 0, True), ("alice", 1, True),
                             ("alice", 2, False), ("alice", 3, False), ("alice", 4, False),
                             ("bob", 0, False), ("bob", 1, False)]
    assert [n for owner, n, _ in taken if owner == "alice"] == [0, 1, 2, 3, 4]
    assert not r.exists(list_ring_key("ocr"), list_ring_key(NORMAL))
    again = migrate(own_redis_url)  # a second run: nothing left to move
    assert json.loads(again.stdout) == {"stored": 3, "lanes": 0, "waiting": 0, "held": 0,
                                        "unacked": 0, "dropped": 0, "layout": 3}
    # this release's held records are none of its business
    assert r.hlen(list_held_key("ocr")) == 6 and r.hlen(list_held_key(NORMAL)) == 2


def test_the_migration_waits_for_the_old_releases_workers(
        own_redis_url: str, r: redis.Redis, old_trees: dict[int, Path]) -> None:
    """A live worker that names no layout 3 still holds and acknowledges the old keys."""
    old_fleet(r, own_redis_url, old_trees)
    presence(r, "old2@h", time.time() + 30, None)
    done = migrate(own_redis_url)
    assert done.returncode == 1 and done.stdout == ""
    assert "broker_older_worker_alive" in done.stderr and "old2@h" in done.stderr
    assert r.get(LAYOUT_KEY) == b"1" and r.llen("ocr:lane:ocr:alice") == 3
    assert r.hlen("unacked_held") == r.hlen("unacked") == 1


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
    assert "ocr_admin.py migrate-broker" in worker.log()
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
