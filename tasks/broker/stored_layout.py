r"""The broker's key layout version as Redis holds it (`ocr:layout`), checked as a worker starts.

Runs in a worker parent as it starts (`settle`, tasks/queue/brokers.py). The first
worker of a Redis that holds no version and no older layout's keys (a new one) stores
`LAYOUT_VERSION` (tasks/broker/layout.py); a worker refuses to start on a newer version
(`LayoutNewer`: its release would misread the keys) or an older one (`LayoutOld`:
layouts 1 and 2, of the releases before the one that introduced layout 3: the release
before this one reads them and moves them into layout 3). The one module of the broker
that names layouts 1 and 2's keys:

    ocr:lane:<list>:<client>          a client's lane of a queue's list
    ocr:lanes:<step>[:turn|:count]    one ring of clients a priority step, every queue's
    ocr:wake:<queue>                  a queue's wake-up
    unacked_held (layout 2)           the unacked records (tasks/broker/unacked.py's head,
                                        then kombu's record)
    unacked, unacked_index,           kombu's record, the time taken, the head's last
      unacked_holders (layout 1)        four lines (holder, key taken from, ring, client)
"""

from __future__ import annotations

from typing import Any

from kombu.utils.encoding import bytes_to_str

from tasks.broker.layout import (
    CONSUMERS,
    LAYOUT_KEY,
    LAYOUT_VERSION,
    PRIORITY_STEPS,
    SENDERS,
)
from tasks.records.key_families import KeyFamily

# Layouts 1 and 2's keys.
UNACKED_KEY = "unacked"              # kombu's names (layout 1)
UNACKED_INDEX_KEY = "unacked_index"
HOLDERS_KEY = "unacked_holders"
HELD_KEY = "unacked_held"            # layout 2
LANE_PREFIX = "ocr:lane:"
RINGS_PREFIX = "ocr:lanes:"
WAKE_PREFIX = "ocr:wake:"
# One of these exists wherever layout 1 or 2 holds a message: a unacked record, or a
# client in a ring (a client stays in its step's ring while any lane of it holds one).
FIXED_KEYS = (HELD_KEY, UNACKED_KEY, UNACKED_INDEX_KEY, HOLDERS_KEY,
              *(f"{RINGS_PREFIX}{step}" for step in PRIORITY_STEPS))
# Layouts 1 and 2's key families, with the roles that touch them (tasks/redis_users.py).
# No process of this release writes them, but the release before names them (its
# declares count the old rings, its workers and Flower wait on the old wake-up keys, its
# Node client rings them, its restores read the old held records), so its
# processes keep them under their users during a rolling upgrade.
FAMILIES: tuple[KeyFamily, ...] = (
    KeyFamily("layouts 1 and 2's lanes and rings", (LANE_PREFIX + "*", RINGS_PREFIX + "*"),
              (LANE_PREFIX + "ocr:alice", RINGS_PREFIX + "3", RINGS_PREFIX + "3:turn"),
              writers=SENDERS, readers=("metrics",)),
    KeyFamily("layouts 1 and 2's wake-up keys", (WAKE_PREFIX + "*",), (WAKE_PREFIX + "ocr",),
              writers=SENDERS),
    KeyFamily("layouts 1 and 2's remote control wake-up keys",
              (WAKE_PREFIX + "*.celery.pidbox",), (WAKE_PREFIX + "w1@host.celery.pidbox",),
              writers=(*SENDERS, "flower")),
    KeyFamily("layouts 1 and 2's unacknowledged messages", (HELD_KEY, UNACKED_KEY),
              (HELD_KEY, UNACKED_KEY), writers=CONSUMERS),
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
                         f"before layout {LAYOUT_VERSION}; upgrade through the release before "
                         "this one, whose workers move it into layout "
                         f"{LAYOUT_VERSION} (docs/deploy.md, rolling upgrades)")
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


def found(client: Any) -> bool:
    """Whether the Redis holds layout 1 or 2's messages (one EXISTS)."""
    return bool(client.exists(*FIXED_KEYS))
