"""`ocr_admin.py migrate-broker`: a Redis broker of layout 1 or 2 moved into layout 3, once.

Runs in the operator's process, on a Redis last written by a release before layout 3
(the releases before 53e8f2e's), with no worker of that release alive. Layouts 1 and
2's keys are named in tasks/broker/stored_layout.py, whose check stops a worker on them.
Prints what it moved, as JSON with `--json`; a run on a Redis of layout 3 moves nothing
and stores nothing new.

`migrate` refuses while a worker of such a release is alive (its presence record,
tasks/state/liveness.py, names no layout 3: it holds and acknowledges in the old keys).
Then, each step atomic, so that a worker of a release that reads layout 3 may run
meanwhile:

- each old lane is moved into its list's own lane (`{L}:lane:<client>`), its oldest
  message still taken first, its client counted in `{L}:ring`; the old rings and
  wake-ups are dropped;
- each unacked record of layout 2 is put back on its queue (`QoS.restore_by_tag`), each
  of layout 1 too (its three entries dropped in the same MULTI): their holders are
  gone, so nobody acknowledges them;
- layout 3 is stored. A second run moves what an old client sent since.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from tasks.broker.layout import LAYOUT_KEY, LAYOUT_VERSION, SEP, list_lane_key, list_ring_key
from tasks.broker.stored_layout import (
    HELD_KEY,
    HOLDERS_KEY,
    LANE_PREFIX,
    RINGS_PREFIX,
    UNACKED_INDEX_KEY,
    UNACKED_KEY,
    WAKE_PREFIX,
    LayoutNewer,
    stored_version,
)
from tasks.cli.core import EXIT_FAILURE, EXIT_OK
from tasks.client import OcrClient
from tasks.state import lua
from tasks.state.connection import connect
from tasks.state.liveness import WorkerPresence

MIGRATE_SUMMARY = ("move a Redis broker of a release before layout 3 into layout 3 (once, "
                   "with that release's workers stopped)")


class Context(Protocol):
    @property
    def client(self) -> OcrClient: ...


def add_migrate_command(commands: Any) -> None:
    """The `migrate-broker` subcommand of ocr_admin.py."""
    migrate = commands.add_parser("migrate-broker", help=MIGRATE_SUMMARY,
                                  description=MIGRATE_SUMMARY)
    migrate.add_argument("--json", action="store_true", help="one JSON record")


def run_migrate(args: argparse.Namespace, session: Context,
                prog: str = "ocr_admin.py") -> int:
    """Move the session's broker into layout 3; a coded line when it is refused."""
    client = session.client
    if client.settings.broker_target is None:
        print(f"{prog} migrate-broker: the broker is RabbitMQ: nothing to move")
        return EXIT_OK
    store = connect(client.settings.redis_target)
    try:
        records = WorkerPresence(store).records()
    finally:
        store.close()
    try:
        with client.app.connection_for_write() as conn:
            moved = migrate(conn.default_channel, records)
    except (OlderWorkerAlive, LayoutNewer) as exc:
        print(f"{prog} migrate-broker: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    report = moved.as_json()
    if args.json:
        print(json.dumps(report))
    else:
        print(f"broker layout {moved.stored or 'none'} -> {LAYOUT_VERSION}: "
              f"{moved.waiting} waiting message(s) of {moved.lanes} lane(s) moved, "
              f"{moved.held + moved.unacked} unacked message(s) put back on their queues, "
              f"{moved.dropped} old ring and wake-up key(s) dropped")
    return EXIT_OK


class OlderWorkerAlive(Exception):
    """A worker of a release before layout 3 is alive: the old keys are its own still."""

    code = "broker_older_worker_alive"
    retryable = True

    def __init__(self, nodes: list[str]) -> None:
        super().__init__(f"{self.code}: workers of a release before layout 3 are alive "
                         f"({', '.join(nodes)}); stop them, then run this again once their "
                         "presence records lapse")
        self.nodes = nodes


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
    held: int = 0               # layout 2's unacked records put back on their queues
    unacked: int = 0            # layout 1's
    dropped: int = 0            # keys of the old rings and wake-ups dropped

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
