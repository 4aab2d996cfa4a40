"""The broker's key layout version as Redis holds it (`ocr:layout`, tasks/broker/layout.py).

Runs in a worker parent as it starts (tasks/queue/brokers.py). The stored version is
the oldest layout a worker must read to run on this Redis, so a release older than it
never takes messages it would misread: the first worker of a Redis that holds none
stores `LAYOUT_OLDEST`, the oldest version whose workers may run beside this release's
(for layout version 2, version 1: a worker of the release before reads none of the
records this one writes, and this one's workers acknowledge, restore and sweep that
one's), and a worker that finds a newer version than it reads (`LAYOUT_VERSION`)
refuses to start. A version from `LAYOUT_OLDEST` to `LAYOUT_VERSION` is run on as it
is: this release reads both layouts whichever is stored, and stores no other, so a
worker of the release before still starts beside it during a rolling upgrade (after
it, too: a pod rescheduled). A later release that stops reading version 1's records
stores its own oldest once none of version 1's workers runs.
"""

from __future__ import annotations

import redis

from tasks.broker.layout import LAYOUT_KEY, LAYOUT_OLDEST, LAYOUT_VERSION


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
    """The layout version the broker holds, `LAYOUT_OLDEST` stored where none is.

    Raises LayoutNewer when the stored one is newer than this release reads (or not a
    version at all: a value this release cannot read is never taken for its own).
    """
    with client.pipeline(transaction=False) as pipe:
        pipe.set(LAYOUT_KEY, LAYOUT_OLDEST, nx=True)
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
