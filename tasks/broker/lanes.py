r"""Weighted fair shares between clients in the Redis broker: a lane per client per list.

Runs in every process that publishes through the project's transport (clients, the
API, workers sending page tasks and retries: `push_command`) and in the worker parent,
the one process that consumes (the fetch, tasks/broker/fetch_script.py, sent by
tasks/broker/fetching.py).

Each Redis list kombu keeps for a service queue (`ocr`, `ocr-<engine>`, ...: `laned`)
and priority step has lanes: a message that names its client (the `ocr_client`
header, tasks/records/clients.py) is pushed to that client's lane of the list
(`{<list>}:lane:<client>`) instead of the list, and the client joins the list's ring
(`{<list>}:ring`) in the same atomic step; a restored one (kombu's restore of an
unacknowledged message) goes back to the end of its lane that is taken first.
Everything else, a stock kombu or Node client's message, stays in the list itself:
the anonymous lane, which joins the ring at a fetch that finds it holding messages.
A list's lanes and ring share its hash slot (tasks/broker/layout.py).

The order the fetch serves lanes and lists in is tasks/broker/fetch_script.py's
(`fetch_order` and its script's `share`): a client's weight comes from
`ocr:lane-weights` (the API's token store, tasks/api/tokens.py); a client without one
weighs 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tasks.broker.layout import WAKE_TTL_MS, list_lane_key, list_ring_key, queue_wake_key
from tasks.state.lua import Script


def laned(queue: str) -> bool:
    """Whether `queue`'s messages wait in lanes: the service's queues (`ocr*`).

    Not Celery's own (remote control replies, events) nor a queue outside the service's
    names: those keep kombu's lists alone.
    """
    return queue.startswith("ocr") and ":" not in queue


# Pushes a message (ARGV[1], then any ARGV[6..] after it, taken in that order) to its
# client's (ARGV[2]) lane (ARGV[5]; a lone message at the end taken first when ARGV[3]
# is "1": a restored one), counts them in
# KEYS[2] and, for its first messages waiting, puts the client at the end of the ring
# KEYS[1] (a client with messages counted is in the ring: the fetch drops it only at 0).
# With KEYS[3], wakes that queue (tasks/broker/wakeups.py) for ARGV[4] ms: a wake-up
# already rung (its one item) only has its expiry renewed, one command. The lane, in
# the ring's hash slot, is named in ARGV: Redis asks read and write access of a
# script's KEYS, and a sender may write a lane but not read it (tasks/redis_users.py).
PUSH = Script(r"""
local bodies = {ARGV[1]}
for i = 6, #ARGV do bodies[#bodies + 1] = ARGV[i] end
if ARGV[3] == '1' then
  redis.call('RPUSH', ARGV[5], unpack(bodies))
else
  redis.call('LPUSH', ARGV[5], unpack(bodies))
end
if redis.call('HINCRBY', KEYS[2], ARGV[2], #bodies) == #bodies
    and not redis.call('LPOS', KEYS[1], ARGV[2]) then
  redis.call('RPUSH', KEYS[1], ARGV[2])
end
if KEYS[3] and redis.call('PEXPIRE', KEYS[3], ARGV[4]) == 0 then
  redis.call('LPUSH', KEYS[3], '1')
  redis.call('PEXPIRE', KEYS[3], ARGV[4])
end
return 1
""")


def push_command(prefix: str, list_key: str, client: str, body: str, first: bool = False,
                 ring_queue: str | None = None, more: Sequence[str] = ()) -> list[Any]:
    """The EVALSHA that pushes `body` to `client`'s lane of `list_key`.

    `first`: taken before the lane's other messages (a restored one). `ring_queue`: the
    queue the same call wakes (None: none). `more`: messages pushed in
    the same call after `body`, taken after it in their order (not with `first`).
    `prefix`: kombu's global key prefix; names are given without it.
    """
    if first and more:
        raise ValueError("several messages are pushed to the end taken last only")
    ring = list_ring_key(prefix + list_key)
    keys = [ring, ring + ":count"]
    args = [body, client, "1" if first else "0", "", list_lane_key(prefix + list_key, client)]
    if ring_queue is not None:
        keys.append(queue_wake_key(prefix + ring_queue))
        args[3] = str(WAKE_TTL_MS)
    return PUSH.command(keys, [*args, *more])


# Messages waiting in the lanes of the rings KEYS[i] (ARGV[i]: the prefix of their
# lanes' keys), the lists themselves not counted: a sender counts lanes it may not read.
LANE_SIZES = Script(r"""
local n = 0
for i = 1, #KEYS do
  for _, client in ipairs(redis.call('LRANGE', KEYS[i], 0, -1)) do
    if client ~= '' then n = n + redis.call('LLEN', ARGV[i] .. client) end
  end
end
return n
""")


def sizes_command(prefix: str, lists: Sequence[str]) -> list[Any]:
    """The EVALSHA that counts the messages in the lanes of `lists` (their keys)."""
    return LANE_SIZES.command([list_ring_key(prefix + name) for name in lists],
                              [list_lane_key(prefix + name, "") for name in lists])
