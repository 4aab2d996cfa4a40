"""The broker's Redis keys: every name and shape, decided once (drawn in tasks/broker/__init__.py).

Imported by the transport and the lanes (which write them), queue depth and the fleet
figures (which read them), the Redis users (tasks/broker/redis_acl.py: the key patterns
each role may touch), the API's token store (the lane weights) and the backup's count
of queued messages. Pure names: runs in whichever process imports it.

kombu's own names (`sep`, the priority steps, `unacked`, `unacked_index`,
`unacked_mutex`, `_kombu.binding.<exchange>`) are its Redis channel's defaults, which
the service does not change (tests/units/test_kombu_overrides.py holds them to the
installed kombu).
"""

from __future__ import annotations

from bisect import bisect
from collections.abc import Mapping, Sequence
from typing import Any

ROOT = "ocr:"

# kombu's Redis channel: a queue's list for each priority step is the queue's name, then
# SEP and the step (step 0: the name alone); kombu keeps taken messages in UNACKED (hash:
# tag -> [message, exchange, routing key]) and UNACKED_INDEX (sorted set: tag -> when
# taken), UNACKED_MUTEX guards their restore (this service holds them in HELD_KEY,
# below, and takes the mutex for an interval: one visibility look of the fleet an
# interval); an exchange's bindings in BINDING_PREFIX<exchange>.
SEP = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)
MAX_PRIORITY = 9  # a message's priority is held to 0..9
UNACKED_KEY = "unacked"
UNACKED_INDEX_KEY = "unacked_index"
UNACKED_MUTEX_KEY = "unacked_mutex"
UNACKED_KEYS = (UNACKED_KEY, UNACKED_INDEX_KEY, UNACKED_MUTEX_KEY)
BINDING_PREFIX = "_kombu.binding."
# kombu 5.7's: an exchange's bindings of queues without x-expires (never swept), and the
# sorted set of its tables' deadlines (exchange -> ms). Ours beside them: each binding of
# a queue with x-expires -> its deadline (tasks/broker/binding_expiry.py, which sweeps).
BINDING_PERMANENT_PREFIX = "_kombu.binding_permanent."
KOMBU_DEADLINES_KEY = "_kombu.binding_deadlines"
BINDING_EXPIRY_KEY = "_kombu.binding_expiry"
# The messages workers hold, each in one record (hash: tag -> when it was taken, its
# holder `<node>|<pid>`, the key it was taken from, its ring, its client, one per line,
# then `[message, "", queue]`: tasks/broker/held.py), written by the fetch and dropped
# by the acknowledgement, one command each; and the lock of the sweep that puts a dead
# holder's messages back (tasks/broker/holders.py). Layout version 1's records of a
# delivered message are three, still read (acknowledged, restored, swept) beside it:
# UNACKED, UNACKED_INDEX and HOLDERS (hash: tag -> the head's last four lines).
HELD_KEY = UNACKED_KEY + "_held"
HOLDERS_KEY = UNACKED_KEY + "_holders"
SWEEP_LOCK_KEY = UNACKED_KEY + "_sweep"

WAKE_PREFIX = ROOT + "wake:"          # doorbells: ocr:wake:<queue>
WAKE_TTL_MS = 60_000     # a doorbell nobody answered is gone after a minute
LANE_PREFIX = ROOT + "lane:"          # a client's lane: ocr:lane:<list>:<client>
LANES_PREFIX = ROOT + "lanes:"        # a priority step's ring: ocr:lanes:<step>[:turn|:count]
LANE_WEIGHTS_KEY = ROOT + "lane-weights"  # hash: client -> weight (the API's token store)
# The version of the layout drawn here (tasks/broker/stored_layout.py). Version 1:
# kombu's lists, the clients' lanes and rings, `unacked` with its index and holders,
# and the doorbells. Version 2: the same, a delivered message held in HELD_KEY alone.
# Version 3: below. The stored one is the oldest version a worker must read to run on
# this Redis and the one clients write their lanes in: a worker stores LAYOUT_VERSION
# where none is (a new Redis), and moves an older one on once no older worker is alive;
# LAYOUT_OLDEST is the oldest stored version this release runs on (it reads version
# 1's and 2's records, and moves version 2's lanes into its own).
LAYOUT_KEY = ROOT + "layout"
LAYOUT_VERSION = 3
LAYOUT_OLDEST = 1
# Layout version 3: every key beside one of a queue's lists L takes L
# as its hash tag (`{L}:...`: in the slot of L itself, where every kombu client pushes),
# so that a fetch from L, its lanes and its ring, and the record it holds, touch one
# slot: its held records `{L}:held`, a client's lane `{L}:lane:<client>`, its ring of
# clients `{L}:ring` (with `:turn` and `:count` beside it), and a queue's doorbell
# `{Q}:wake` (Q's step-0 list is Q). HELD_LISTS_KEY: the set of lists whose held
# records a consumer may have written (each consuming worker adds its own): what the
# sweep, the visibility timeout's look and queue depth read. Version 2's lanes, rings,
# doorbells and held hash are still read beside them (a rolling upgrade).
HELD_LISTS_KEY = ROOT + "held-lists"
DEAD_LETTER_KEY = ROOT + "dead-letter"  # refused broker messages (a capped list)
DEAD_LETTER_COUNT_KEY = ROOT + "dead-letter:count"  # how many were ever refused


def queue_list(queue: str, step: int, sep: str = SEP) -> str:
    r"""The list kombu keeps of `queue` for priority `step` (`ocr`, `ocr\x06\x163`, ...)."""
    return f"{queue}{sep}{step}" if step else queue


def message_step(message: Mapping[str, Any], steps: Sequence[int] = PRIORITY_STEPS) -> int:
    """The priority step whose list holds `message` (kombu's rule, as stock clients push).

    Its `properties.priority` held to 0..9 (0 when it has none or it is not a number),
    then the highest step not above it.
    """
    try:
        priority = max(min(int(message["properties"]["priority"]), MAX_PRIORITY), 0)
    except (TypeError, ValueError, KeyError):
        priority = 0
    return steps[bisect(steps, priority) - 1]


def queue_lists(queue: str, steps: tuple[int, ...] = PRIORITY_STEPS,
                sep: str = SEP) -> tuple[str, ...]:
    """Every list of `queue`, one per priority step, highest priority first."""
    return tuple(queue_list(queue, step, sep) for step in steps)


def priority_suffixes(transport_options: dict[str, Any]) -> tuple[str, ...]:
    """Name suffixes of a queue's lists, one per priority step, from a broker's options."""
    return queue_lists("", tuple(transport_options.get("priority_steps", PRIORITY_STEPS)),
                       str(transport_options.get("sep", SEP)))


def wake_key(queue: str) -> str:
    """`ocr:wake:<queue>`: the queue's doorbell, one item at most, rung by each publish.

    Idle workers wait on it (BLPOP) instead of on the queue's lists, so that taking a
    message stays one atomic server-side step (tasks/broker/fetching.py).
    """
    return f"{WAKE_PREFIX}{queue}"


def held_key(unacked_key: str = UNACKED_KEY) -> str:
    """The hash of held messages beside kombu's `unacked_key` (`unacked_held`)."""
    return unacked_key + HELD_KEY[len(UNACKED_KEY):]


def holders_key(unacked_key: str = UNACKED_KEY) -> str:
    """Layout version 1's holders beside kombu's `unacked_key` (`unacked_holders`)."""
    return unacked_key + HOLDERS_KEY[len(UNACKED_KEY):]


def lane_key(list_key: str, client: str) -> str:
    """`ocr:lane:<list>:<client>`: `client`'s messages waiting in a queue's list."""
    return f"{LANE_PREFIX}{list_key}:{client}"


def lanes_key(step: int) -> str:
    """`ocr:lanes:<step>`: the ring of clients with messages of priority `step` waiting.

    Beside it, `:turn` (hash: the pages left in a client's turn) and `:count` (hash: a
    client's messages waiting in every queue at that step).
    """
    return f"{LANES_PREFIX}{step}"


def tagged(list_key: str, part: str) -> str:
    """`{list_key}:part`: a key in the hash slot of the list `list_key` (layout 3)."""
    return f"{{{list_key}}}:{part}"


def list_held_key(list_key: str) -> str:
    """`{L}:held`: the records of the messages held that were taken from list L."""
    return tagged(list_key, "held")


def list_lane_key(list_key: str, client: str) -> str:
    """`{L}:lane:<client>`: `client`'s messages waiting in list L (layout 3)."""
    return tagged(list_key, f"lane:{client}")


def list_ring_key(list_key: str) -> str:
    """`{L}:ring`: the clients with messages waiting in list L's lanes (layout 3).

    Beside it, `{L}:ring:turn` (hash: the pages left in a client's turn) and
    `{L}:ring:count` (hash: a client's messages waiting in L's lanes).
    """
    return tagged(list_key, "ring")


def queue_wake_key(queue: str) -> str:
    """`{Q}:wake`: queue Q's doorbell (layout 3), in the slot of Q's step-0 list."""
    return tagged(queue, "wake")


def wake(queue_key: str, layout: int = LAYOUT_VERSION) -> str:
    """The doorbell of the queue whose step-0 list is `queue_key`, in `layout`."""
    return queue_wake_key(queue_key) if layout >= 3 else wake_key(queue_key)


def list_of_held_key(key: str) -> str | None:
    """The list L of a held hash `{L}:held`; None for any other key."""
    if key.startswith("{") and key.endswith("}:held"):
        return key[1:-len("}:held")]
    return None


def is_lane(key: str) -> bool:
    """Whether `key` is a client's lane of a list (layout 3's, or version 2's)."""
    return key.startswith(LANE_PREFIX) or (key.startswith("{") and "}:lane:" in key)


def is_held_hash(key: str) -> bool:
    """Whether `key` is a hash of held messages (a list's; version 2's; version 1's)."""
    return key in (HELD_KEY, UNACKED_KEY) or list_of_held_key(key) is not None
