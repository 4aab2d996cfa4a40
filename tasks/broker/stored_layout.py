r"""The broker's key layout version as Redis holds it (`ocr:layout`), and the move of older ones.

Runs in a worker parent as it starts (`settle`, tasks/queue/brokers.py), and once in
the operator's process on a Redis last written by a release before layout 3 (`migrate`:
`ocr_admin.py migrate-broker`, tasks/cli/broker_layout.py). The first worker of a Redis
that holds no version and no older layout's keys (a new one) stores `LAYOUT_VERSION`
(tasks/broker/layout.py); a worker refuses to start on a newer version (`LayoutNewer`:
its release would misread the keys) or an older one (`LayoutOld`: layouts 1 and 2, of
the releases before the one that introduced layout 3, names the command that moves
them). The one module that names layouts 1 and 2's keys:

    ocr:lane:<list>:<client>          a client's lane of a queue's list
    ocr:lanes:<step>[:turn|:count]    one ring of clients a priority step, every queue's
    ocr:wake:<queue>                  a queue's doorbell
    unacked_held (layout 2)           the held records (tasks/broker/held.py's head,
                                        then kombu's record)
    unacked, unacked_index,           kombu's record, the time taken, the head's last
      unacked_holders (layout 1)        four lines (holder, key taken from, ring, client)

`migrate` refuses while a worker of such a release is alive (its presence record,
tasks/state/liveness.py, names no layout 3: it holds and acknowledges in the old keys).
Then, each step atomic, so that a worker of a release that reads layout 3 may run
meanwhile:

- each old lane is moved into its list's own lane (`{L}:lane:<client>`), its oldest
  message still taken first, its client counted in `{L}:ring`; the old rings and
  doorbells are dropped;
- each held record of layout 2 is put back on its queue (`QoS.restore_by_tag`), each
  of layout 1 too (its three entries dropped in the same MULTI): their holders are
  gone, so nobody acknowledges them;
- layout 3 is stored. A second run moves what an old client sent since.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from tasks.broker.layout import (
    CONSUMERS,
    LAYOUT_KEY,
    LAYOUT_VERSION,
    PRIORITY_STEPS,
    SENDERS,
    SEP,
    list_lane_key,
    list_ring_key,
)
from tasks.records.key_families import KeyFamily
from tasks.state import lua

MIGRATE_COMMAND = "ocr_admin.py migrate-broker"

# Layouts 1 and 2's keys.
UNACKED_KEY = "unacked"              # kombu's names (layout 1)
UNACKED_INDEX_KEY = "unacked_index"
HOLDERS_KEY = "unacked_holders"
HELD_KEY = "unacked_held"            # layout 2
LANE_PREFIX = "ocr:lane:"
RINGS_PREFIX = "ocr:lanes:"
WAKE_PREFIX = "ocr:wake:"
# One of these exists wherever layout 1 or 2 holds a message: a held record, or a
# client in a ring (a client stays in its step's ring while any lane of it holds one).
FIXED_KEYS = (HELD_KEY, UNACKED_KEY, UNACKED_INDEX_KEY, HOLDERS_KEY,
              *(f"{RINGS_PREFIX}{step}" for step in PRIORITY_STEPS))
# Layouts 1 and 2's key families, with the roles that touch them (tasks/redis_users.py).
# No process of this release writes them, but the release before names them (its
# declares count the old rings, its workers and Flower wait on the old doorbells, its
# Node client rings them, its restores and depth read the old held records), so its
# processes keep them under their users during a rolling upgrade.
FAMILIES: tuple[KeyFamily, ...] = (
    KeyFamily("layouts 1 and 2's lanes and rings", (LANE_PREFIX + "*", RINGS_PREFIX + "*"),
              (LANE_PREFIX + "ocr:alice", RINGS_PREFIX + "3", RINGS_PREFIX + "3:turn"),
              writers=SENDERS, readers=("metrics",)),
    KeyFamily("layouts 1 and 2's doorbells", (WAKE_PREFIX + "*",), (WAKE_PREFIX + "ocr",),
              writers=SENDERS),
    KeyFamily("layouts 1 and 2's remote control doorbells",
              (WAKE_PREFIX + "*.celery.pidbox",), (WAKE_PREFIX + "w1@host.celery.pidbox",),
              writers=(*SENDERS, "flower")),
    KeyFamily("layouts 1 and 2's unacknowledged messages", (HELD_KEY, UNACKED_KEY),
              (HELD_KEY, UNACKED_KEY), writers=CONSUMERS, readers=("metrics",)),
    KeyFamily("layout 1's index and holders", (UNACKED_INDEX_KEY, HOLDERS_KEY),
              (UNACKED_INDEX_KEY, HOLDERS_KEY), writers=CONSUMERS),
)


class LayoutNewer(Exception):
    """The Redis holds a key layout newer than this release reads (a worker's start)."""

    code = "broker_layout_newer"
    retryable = False

    def __init__(self, stored: int | str) -> None:
        super().__init__(f"{self.code}: the broker's key layout is version {stored}; this "
                         f"release reads version {LAYOUT_VERSION} (run the newer release's "
                         "workers)")
        self.stored = stored


class LayoutOld(Exception):
    """The Redis holds layout 1 or 2's keys, which this release no longer reads."""

    code = "broker_layout_old"
    retryable = False

    def __init__(self, stored: int | None) -> None:
        told = f"version {stored}" if stored is not None else "no version, and its keys"
        super().__init__(f"{self.code}: the broker's key layout is {told} of a release "
                         f"before layout {LAYOUT_VERSION}; stop that release's workers and "
                         f"clients, then run `{MIGRATE_COMMAND}` once")
        self.stored = stored


def stored_version(client: Any) -> int | None:
    """The stored layout version (None: none). LayoutNewer for a value that is none."""
    stored = client.get(LAYOUT_KEY)
    if stored is None:
        return None
    try:
        return int(stored)
    except ValueError:
        raise LayoutNewer(bytes_to_str(stored)) from None


def settle(client: Any) -> int:
    """The layout version the broker holds, `LAYOUT_VERSION` stored where none is.

    Raises LayoutNewer when the stored one is newer than this release reads (or not a
    version at all: a value this release cannot read is never taken for its own), and
    LayoutOld when it is older, or none is stored and an older layout's keys hold
    messages (`found`: one EXISTS, on a Redis with no version only).
    """
    version = stored_version(client)
    if version is None:
        if found(client):
            raise LayoutOld(None)
        client.set(LAYOUT_KEY, LAYOUT_VERSION, nx=True)
        version = stored_version(client)
    if version is None or version > LAYOUT_VERSION:
        raise LayoutNewer("(none)" if version is None else version)
    if version < LAYOUT_VERSION:
        raise LayoutOld(version)
    return version


class OlderWorkerAlive(Exception):
    """A worker of a release before layout 3 is alive: the old keys are its own still."""

    code = "broker_older_worker_alive"
    retryable = True

    def __init__(self, nodes: list[str]) -> None:
        super().__init__(f"{self.code}: workers of a release before layout 3 are alive "
                         f"({', '.join(nodes)}); stop them, then run this again once their "
                         "presence records lapse")
        self.nodes = nodes


def found(client: Any) -> bool:
    """Whether the Redis holds layout 1 or 2's messages (one EXISTS)."""
    return bool(client.exists(*FIXED_KEYS))


def older_workers(records: Mapping[Any, Any], now: float) -> list[str]:
    """The live workers of the presence `records` (node -> JSON) that write no layout 3."""
    nodes = []
    for node, raw in records.items():
        try:
            record = json.loads(raw)
            expires = float(record["expires"])
        except (ValueError, KeyError, TypeError):
            continue
        if expires >= now and int(record.get("layout") or 0) < LAYOUT_VERSION:
            nodes.append(bytes_to_str(node))
    return sorted(nodes)


# Moves the old lane KEYS[1] of client ARGV[1] into its list's lane KEYS[2], in chunks
# of 1,000 from its newest, each after the last (RPUSH), so that its oldest message ends
# at the tail taken first; counts them in the list's ring KEYS[3] and out of the old
# ring KEYS[4] (a client with none left leaves it). Returns how many moved.
MOVE_LANE = lua.Script(r"""
local moved = 0
while true do
  local items = redis.call('LRANGE', KEYS[1], 0, 999)
  if #items == 0 then break end
  redis.call('RPUSH', KEYS[2], unpack(items))
  redis.call('LTRIM', KEYS[1], #items, -1)
  moved = moved + #items
end
if moved > 0 then
  if redis.call('HINCRBY', KEYS[3] .. ':count', ARGV[1], moved) == moved
      and not redis.call('LPOS', KEYS[3], ARGV[1]) then
    redis.call('RPUSH', KEYS[3], ARGV[1])
  end
  if redis.call('HINCRBY', KEYS[4] .. ':count', ARGV[1], -moved) < 1 then
    redis.call('LREM', KEYS[4], 0, ARGV[1])
    redis.call('HDEL', KEYS[4] .. ':count', ARGV[1])
    redis.call('HDEL', KEYS[4] .. ':turn', ARGV[1])
  end
end
return moved
""")


@dataclass
class Moved:
    """What one run moved."""

    stored: int | None = None   # the layout version found (None: none stored)
    lanes: int = 0              # old lanes moved
    waiting: int = 0            # their messages
    held: int = 0               # layout 2's held records put back on their queues
    unacked: int = 0            # layout 1's
    dropped: int = 0            # keys of the old rings and doorbells dropped

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "layout": LAYOUT_VERSION}


def migrate(channel: Any, records: Mapping[Any, Any], now: float | None = None) -> Moved:
    """Move the broker's layout 1 and 2 keys into layout 3, then store layout 3.

    `channel`: a channel of this project's transport on the broker (its QoS restores);
    `records`: the workers' presence records. Raises OlderWorkerAlive while one of them
    is of a release before layout 3, and LayoutNewer on a newer layout.
    """
    older = older_workers(records, time.time() if now is None else now)
    if older:
        raise OlderWorkerAlive(older)
    with channel.conn_or_acquire() as client:
        moved = Moved(stored=stored_version(client))
        if moved.stored is not None and moved.stored > LAYOUT_VERSION:
            raise LayoutNewer(moved.stored)
        for key in client.scan_iter(match=LANE_PREFIX + "*", count=1000):
            moved.waiting += _move_lane(client, bytes_to_str(key))
            moved.lanes += 1
        for tag in client.hkeys(HELD_KEY):
            channel.qos.restore_by_tag(bytes_to_str(tag), client, key=HELD_KEY)
            moved.held += 1
        for tag in client.hkeys(UNACKED_KEY):
            moved.unacked += _restore_unacked(channel, client, bytes_to_str(tag))
        left = [*client.scan_iter(match=RINGS_PREFIX + "*", count=1000),
                *client.scan_iter(match=WAKE_PREFIX + "*", count=1000)]
        with client.pipeline() as pipe:
            if left:
                pipe.delete(*left)
            if not client.hlen(UNACKED_KEY):  # entries whose record is gone
                pipe.delete(UNACKED_INDEX_KEY, HOLDERS_KEY)
            pipe.set(LAYOUT_KEY, LAYOUT_VERSION)
            pipe.execute()
        moved.dropped = len(left)
    return moved


def _move_lane(client: Any, key: str) -> int:
    """The old lane `key` (`ocr:lane:<list>:<client>`) moved into layout 3's: how many."""
    name, _, owner = key[len(LANE_PREFIX):].partition(":")
    step = name.rsplit(SEP, 1)[1] if SEP in name else "0"
    return int(lua.run(client, MOVE_LANE.command(
        [key, list_lane_key(name, owner), list_ring_key(name), f"{RINGS_PREFIX}{step}"],
        [owner])))


def _restore_unacked(channel: Any, client: Any, tag: str) -> int:
    """Layout 1's record of `tag` back on its queue, its three entries dropped: 1 if it was."""
    def restore(pipe: Any) -> int:
        record = pipe.hget(UNACKED_KEY, tag)
        pipe.multi()
        pipe.hdel(UNACKED_KEY, tag).zrem(UNACKED_INDEX_KEY, tag).hdel(HOLDERS_KEY, tag)
        if record is None:
            return 0
        payload, exchange, routing_key = loads(bytes_to_str(record))
        channel.restore_payload(payload, exchange, routing_key, pipe)
        return 1

    return int(client.transaction(restore, UNACKED_KEY, value_from_callable=True))
