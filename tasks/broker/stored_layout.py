"""The broker's key layout version as Redis holds it (`ocr:layout`, tasks/broker/layout.py).

Runs in a worker parent as it starts (tasks/queue/brokers.py): the first worker of a
Redis that holds no version stores the one it writes; a worker that finds a newer
version than it knows refuses to start, so a release older than the layout never takes
messages it would misread. A version older than this release's would be migrated here
first; version 1 is the only one so far.
"""

from __future__ import annotations

import redis

from tasks.broker.layout import LAYOUT_KEY, LAYOUT_VERSION


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
    """The layout version the broker holds, this release's stored where none is.

    Raises LayoutNewer when the stored one is newer (or not a version at all: a value
    this release cannot read is never taken for its own).
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
