"""The broker's Redis keys: every name and shape, decided once (drawn in tasks/broker/__init__.py).

Imported by the transport and the lanes (which write them), queue depth and the fleet
figures (which read them), the Redis users (tasks/redis_users.py: each role's key
patterns and the ACL matrix, built from FAMILIES, the key families declared here with
the roles that write or read them), the API's token store (the lane weights) and the
backup's count of queued messages. Pure names: runs in whichever process imports it.

kombu's own names (`sep`, the priority steps, `unacked_mutex`,
`_kombu.binding.<exchange>`) are its Redis channel's defaults, which the service does
not change (tests/units/test_kombu_overrides.py holds them to the installed kombu).
Layouts 1 and 2's names and families are tasks/broker/stored_layout.py's alone.
"""

from __future__ import annotations

from bisect import bisect
from collections.abc import Mapping, Sequence
from typing import Any

from tasks.records.key_families import KeyFamily

ROOT = "ocr:"

# kombu's Redis channel: a queue's list for each priority step is the queue's name, then
# SEP and the step (step 0: the name alone); UNACKED_MUTEX_KEY is its restore's mutex,
# which this service takes for an interval (one visibility look of the fleet an
# interval); an exchange's bindings in BINDING_PREFIX<exchange>.
SEP = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)
MAX_PRIORITY = 9  # a message's priority is held to 0..9
UNACKED_MUTEX_KEY = "unacked_mutex"
BINDING_PREFIX = "_kombu.binding."
KOMBU_PREFIX = "_kombu."  # every key of kombu's own beside the queues
# kombu 5.7's: an exchange's bindings of queues without x-expires (never swept), and the
# sorted set of its tables' deadlines (exchange -> ms). Ours beside them: each binding of
# a queue with x-expires -> its deadline (tasks/broker/binding_expiry.py, which sweeps).
BINDING_PERMANENT_PREFIX = "_kombu.binding_permanent."
KOMBU_DEADLINES_KEY = "_kombu.binding_deadlines"
BINDING_EXPIRY_KEY = "_kombu.binding_expiry"
# The lock of the sweep that puts a dead holder's messages back (tasks/broker/holders.py).
SWEEP_LOCK_KEY = "unacked_sweep"

WAKE_TTL_MS = 60_000     # a wake-up nobody answered is gone after a minute
LANE_WEIGHTS_KEY = ROOT + "lane-weights"  # hash: client -> weight (the API's token store)
# The version of the layout drawn here (tasks/broker/stored_layout.py): a worker stores
# it where none is (a new Redis), and refuses to start on an older one (layouts 1 and 2,
# which the release before this one moves into this one) or a newer one.
LAYOUT_KEY = ROOT + "layout"
LAYOUT_VERSION = 3
# Every key beside one of a queue's lists L takes L as its hash tag (`{L}:...`: in the
# slot of L itself, where every kombu client pushes): its unacked records `{L}:held`
# (tag -> head and kombu's record: tasks/broker/unacked.py), a client's lane
# `{L}:lane:<client>`, its ring of clients `{L}:ring` (with `:turn` and `:count` beside
# it), and a queue's wake-up `{Q}:wake` (Q's step-0 list is Q). HELD_LISTS_KEY: the set
# of lists whose unacked records a consumer may have written (each consuming worker adds
# its own): what the sweep, the visibility timeout's look and queue depth read.
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


def tagged(list_key: str, part: str) -> str:
    """`{list_key}:part`: a key in the hash slot of the list `list_key`."""
    return f"{{{list_key}}}:{part}"


def list_held_key(list_key: str) -> str:
    """`{L}:held`: the records of the messages held that were taken from list L."""
    return tagged(list_key, "held")


def list_lane_key(list_key: str, client: str) -> str:
    """`{L}:lane:<client>`: `client`'s messages waiting in list L."""
    return tagged(list_key, f"lane:{client}")


def list_ring_key(list_key: str) -> str:
    """`{L}:ring`: the clients with messages waiting in list L's lanes.

    Beside it, `{L}:ring:turn` (hash: the pages left in a client's turn) and
    `{L}:ring:count` (hash: a client's messages waiting in L's lanes).
    """
    return tagged(list_key, "ring")


def queue_wake_key(queue: str) -> str:
    """`{Q}:wake`: queue Q's wake-up, one item at most, pushed by each publish.

    In the slot of Q's step-0 list. Idle workers wait on it (BLPOP) instead of on the
    queue's lists, so that taking a message stays one atomic server-side step
    (tasks/broker/fetching.py).
    """
    return tagged(queue, "wake")


def list_of_held_key(key: str) -> str | None:
    """The list L of a unacked hash `{L}:held`; None for any other key."""
    if key.startswith("{") and key.endswith("}:held"):
        return key[1:-len("}:held")]
    return None


def is_lane(key: str) -> bool:
    """Whether `key` is a client's lane of a list."""
    return key.startswith("{") and "}:lane:" in key


def is_held_hash(key: str) -> bool:
    """Whether `key` is a hash of held messages (a list's)."""
    return list_of_held_key(key) is not None


# Who touches the broker's keys (FAMILIES): whoever sends a task publishes to a queue's
# lists, lanes and wake-up keys and declares its binding; the processes that consume
# (workers, the control worker) hold, acknowledge and restore messages. A queued
# message is read by its consumers alone: a role that only sends pushes to a queue's
# lists and lanes and may count them, never read one back (APPENDERS); a role that
# watches the queues counts them (COUNTERS), their lanes through their rings: the metrics
# exporter, and Flower's broker page (tasks/queue/flower_view.py), with one read-only
# script each (tasks/metrics/queue_depth.py).
SENDERS = ("worker", "control", "api", "beat", "client")
CONSUMERS = ("worker", "control")
APPENDERS = tuple(r for r in SENDERS if r not in CONSUMERS)
COUNTERS = ("flower", "metrics")
# kombu's and Celery's names beside the queues' lists: a worker's direct queue
# (worker_direct), remote control's mailboxes and replies, the event queues (Flower's).
DIRECT_QUEUES = "*.dq2*"
PIDBOX = "*.celery.pidbox*"
EVENT_QUEUES = "celeryev.*"
# Queue names start with `ocr` (docs/security.md): ocr, ocr-<engine>, ocr-control,
# ocr-batch-steps, and each one's priority lists.
QUEUE_PATTERNS = ("ocr", "ocr[^:]*")

# The broker's key families, each with the roles that write or only read it: the Redis
# users and docs/security.md's matrix are built from these (tasks/redis_users.py).
FAMILIES: tuple[KeyFamily, ...] = (
    KeyFamily("task queues (lists)", QUEUE_PATTERNS,
              ("ocr", "ocr-fake", "ocr-control", queue_list("ocr", 3)),
              writers=CONSUMERS, appenders=APPENDERS,
              counters=(*COUNTERS, "keda")),
    KeyFamily("clients' lanes", (list_lane_key("ocr*", "*"),),
              (list_lane_key("ocr", "alice"), list_lane_key(queue_list("ocr", 3), "bob")),
              writers=CONSUMERS, appenders=APPENDERS, counters=COUNTERS),
    KeyFamily("lanes' rings of clients", (list_ring_key("ocr*") + "*",),
              (list_ring_key(queue_list("ocr", 3)), list_ring_key("ocr") + ":turn"),
              writers=SENDERS, readers=COUNTERS),
    KeyFamily("clients' lane weights", (LANE_WEIGHTS_KEY,), (LANE_WEIGHTS_KEY,),
              readers=CONSUMERS),
    KeyFamily("wake-up keys", (queue_wake_key("ocr*"),), (queue_wake_key("ocr"),),
              writers=SENDERS),
    KeyFamily("remote control's wake-up keys", (queue_wake_key("*.celery.pidbox"),),
              (queue_wake_key("w1@host.celery.pidbox"),),
              writers=(*CONSUMERS, "flower")),
    KeyFamily("the key layout's version", (LAYOUT_KEY,), (LAYOUT_KEY,),
              writers=CONSUMERS, readers=("api", "beat", "flower", "client")),
    # The metrics count each list's held messages (HLEN) and read none of them.
    KeyFamily("unacknowledged messages",
              (list_held_key("ocr*"), list_held_key(DIRECT_QUEUES), HELD_LISTS_KEY),
              (list_held_key("ocr"), list_held_key(queue_list("ocr-fake", 6)),
               list_held_key("w1@host.dq2"), HELD_LISTS_KEY),
              writers=CONSUMERS, counters=("metrics",)),
    KeyFamily("restore mutex, sweep lock", (UNACKED_MUTEX_KEY, SWEEP_LOCK_KEY),
              (UNACKED_MUTEX_KEY, SWEEP_LOCK_KEY), writers=CONSUMERS),
    KeyFamily("bindings", (KOMBU_PREFIX + "*",),
              (BINDING_PREFIX + "ocr", BINDING_PREFIX + "reply.celery.pidbox"),
              writers=(*SENDERS, "flower")),
    KeyFamily("remote control mailboxes", (PIDBOX,),
              ("w1@host.celery.pidbox", "abc.reply.celery.pidbox"),
              writers=(*CONSUMERS, "flower")),
    KeyFamily("workers' direct queues", (DIRECT_QUEUES,), ("w1@host.dq2",),
              writers=CONSUMERS),
    KeyFamily("event queues", (EVENT_QUEUES,), ("celeryev.abc",), writers=("flower",)),
    # The metrics count the refused messages kept, and read none of them.
    KeyFamily("dead letters", (DEAD_LETTER_KEY,), (DEAD_LETTER_KEY,),
              writers=CONSUMERS, counters=("metrics",)),
    KeyFamily("dead letters' count", (DEAD_LETTER_COUNT_KEY,), (DEAD_LETTER_COUNT_KEY,),
              writers=CONSUMERS, readers=("metrics",)),
)
