"""The broker's key layout version as Redis holds it (`ocr:layout`, tasks/broker/layout.py).

Runs in a worker parent as it starts (`settle`, tasks/queue/brokers.py) and on its
heartbeats (`advance`, tasks/queue/presence.py); clients read it (tasks/broker/
publishing.py). The stored version is the oldest layout a worker must read to run on
this Redis, so a release older than it never takes messages it would misread, and the
layout every client writes its lanes in:

- the first worker of a Redis that holds none (a new one: no older fleet ever ran on
  it) stores `LAYOUT_VERSION`; a worker that finds a newer version than it reads
  refuses to start, so a worker of an older release never runs on a Redis laid out
  for a newer one;
- where an older fleet stored its own (1 or 2: a rolling upgrade), that is run on as
  it is: a worker of the release before still starts beside this one (a pod
  rescheduled), and every client writes version 2's lanes, which both releases'
  workers serve (this one's move them into version 3's before it fetches); a worker
  of the release before reads none of the records this one writes, and this one's
  acknowledge, restore and sweep both releases';
- once no live worker of an older release is left (every presence record names
  `LAYOUT_VERSION`, tasks/state/liveness.py) and the asking worker has run for a
  liveness window (an older worker that started beside it has published its record
  by then), it stores `LAYOUT_VERSION` (`advance`, one compare-and-set): clients write
  version 3's lanes within LAYOUT_SECONDS, and a worker of the release before
  refuses to start from then on.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import redis

from tasks.broker.layout import LAYOUT_KEY, LAYOUT_OLDEST, LAYOUT_VERSION
from tasks.broker.scripts import Script

# Stores ARGV[2] in KEYS[1] while it holds ARGV[1]: 1 when stored.
SWAP = Script("if redis.call('GET', KEYS[1]) == ARGV[1] then "
              "redis.call('SET', KEYS[1], ARGV[2]) return 1 end return 0")


class LayoutNewer(Exception):
    """The Redis holds a key layout newer than this release reads (a worker's start)."""

    code = "broker_layout_newer"
    retryable = False

    def __init__(self, stored: int | str) -> None:
        super().__init__(f"{self.code}: the broker's key layout is version {stored}; this "
                         f"release reads version {LAYOUT_VERSION} (run the newer release's "
                         "workers)")
        self.stored = stored


def settle(client: redis.Redis) -> int:
    """The layout version the broker holds, `LAYOUT_VERSION` stored where none is.

    Raises LayoutNewer when the stored one is newer than this release reads (or not a
    version at all: a value this release cannot read is never taken for its own).
    """
    with client.pipeline(transaction=False) as pipe:
        pipe.set(LAYOUT_KEY, LAYOUT_VERSION, nx=True)
        pipe.get(LAYOUT_KEY)
        _, stored = pipe.execute()
    try:
        version = int(stored)
    except (TypeError, ValueError):
        told = "(none)" if stored is None else stored.decode(errors="replace")
        raise LayoutNewer(told) from None
    if version > LAYOUT_VERSION:
        raise LayoutNewer(version)
    return version


def all_current(records: Mapping[Any, Any], now: float) -> bool:
    """Whether every live worker of the presence `records` writes this release's layout.

    `records`: node -> JSON. A worker writes it where its record names `layout` >=
    LAYOUT_VERSION; a record past its `expires` is no live worker's.
    """
    for raw in records.values():
        try:
            record = json.loads(raw)
            expires = float(record["expires"])
        except (ValueError, KeyError, TypeError):
            continue
        if expires >= now and int(record.get("layout") or 0) < LAYOUT_VERSION:
            return False
    return True


def advance(broker: redis.Redis, records: Mapping[Any, Any],
            now: float | None = None) -> int:
    """The stored version, moved to `LAYOUT_VERSION` once no older worker is alive.

    `records`: the presence records (tasks/state/liveness.py). One GET; where an older
    version is stored and every live worker is of this release, one compare-and-set.
    """
    stored = broker.get(LAYOUT_KEY)
    try:
        version = int(stored) if stored is not None else LAYOUT_OLDEST
    except ValueError:
        return LAYOUT_VERSION  # not ours to move: `settle` refused it at the start
    if version >= LAYOUT_VERSION or not all_current(records, time.time() if now is None
                                                    else now):
        return version
    if stored is None:
        broker.set(LAYOUT_KEY, LAYOUT_VERSION, nx=True)
    else:
        SWAP.run(broker, [LAYOUT_KEY], [stored, LAYOUT_VERSION])
    return int(broker.get(LAYOUT_KEY) or LAYOUT_VERSION)
