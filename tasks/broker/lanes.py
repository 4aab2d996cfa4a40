r"""Weighted fair shares between clients in the Redis broker: a lane per client per list.

Runs in every process that publishes through the project's transport (clients, the
API, workers sending page tasks and retries: `push_command`) and in the worker parent,
the one process that consumes (`fetch_command`, sent by tasks/broker/fetching.py).

Each Redis list kombu keeps for a service queue (`ocr`, `ocr-<engine>`, ...: `laned`)
and priority step has lanes: a message that names its client (the `ocr_client`
header, tasks/records/clients.py) is pushed to that client's lane of the list
(`ocr:lane:<list>:<client>`) instead of the list, and the client joins the ring of
its priority step (`ocr:lanes:<step>`, one ring for every queue) in the same atomic
step; a restored one (kombu's restore of an unacknowledged message) goes back to the
end of its lane that is taken first. Everything else, a stock kombu or Node client's
message, stays in the list itself: the anonymous lane, which joins the ring at a fetch
that finds it holding messages.

The fetch (`FETCH`) serves priority steps in order, highest first, exactly as
kombu does; within a step, the clients of the ring by weighted deficit round robin
counting pages, whichever of the worker's queues their pages wait in: the first client
of the ring that has a message in one of the worker's queues takes up to its weight in
messages (a message is one page: a page task, or an image job), then goes to the
ring's end. A client with nothing left waiting leaves the ring at once, so a lone
client has every worker (work-conserving). Weights come from `ocr:lane-weights` (the
API's token store, tasks/api/tokens.py); a client without one weighs 1.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Sequence
from typing import Any

from tasks.broker.layout import (
    LANE_WEIGHTS_KEY,
    SEP,
    WAKE_TTL_MS,
    lane_key,
    lanes_key,
    wake_key,
)
from tasks.broker.oversized import BOUND_LUA
from tasks.broker.scripts import Script


def laned(queue: str) -> bool:
    """Whether `queue`'s messages wait in lanes: the service's queues (`ocr*`).

    Not Celery's own (remote control replies, events) nor a queue outside the service's
    names: those keep kombu's lists alone.
    """
    return queue.startswith("ocr") and ":" not in queue


# Pushes a message (ARGV[1], then any ARGV[5..] after it, taken in that order) to its
# client's (ARGV[2]) lane (KEYS[1]; a lone message at the end taken first when ARGV[3]
# is "1": a restored one), counts them in
# KEYS[3] and, for its first messages waiting, puts the client at the end of the ring
# KEYS[2] (a client with messages counted is in the ring: the fetch drops it only at 0).
# With KEYS[4], rings that doorbell (tasks/broker/doorbells.py) for ARGV[4] ms: a bell
# already rung (its one item) only has its expiry renewed, one command.
PUSH = Script(r"""
local bodies = {ARGV[1]}
for i = 5, #ARGV do bodies[#bodies + 1] = ARGV[i] end
if ARGV[3] == '1' then
  redis.call('RPUSH', KEYS[1], unpack(bodies))
else
  redis.call('LPUSH', KEYS[1], unpack(bodies))
end
if redis.call('HINCRBY', KEYS[3], ARGV[2], #bodies) == #bodies
    and not redis.call('LPOS', KEYS[2], ARGV[2]) then
  redis.call('RPUSH', KEYS[2], ARGV[2])
end
if KEYS[4] and redis.call('PEXPIRE', KEYS[4], ARGV[4]) == 0 then
  redis.call('LPUSH', KEYS[4], '1')
  redis.call('PEXPIRE', KEYS[4], ARGV[4])
end
return 1
""")

# Takes the next message of the lists KEYS[2..] (kombu's BRPOP order: highest priority
# first). For list i (from 0): ARGV[4+4i] is "1" for a consumer that acknowledges,
# ARGV[5+4i] the ring of its priority step ("" for a list of a step with no lanes: its
# tail is taken as kombu would), ARGV[6+4i] the prefix of its lanes' keys ("" for a
# list without lanes at a step with some: it is served as the anonymous lane alone),
# ARGV[7+4i] the end of its record (`, "", "<queue>"]`). Consecutive lists of one ring
# are served together, one EXISTS telling whether any holds a message: the ring's
# first client with a message in one of them (the anonymous client "": the lists
# themselves) takes it; its turn (hash ring..':turn') starts at
# its weight (hash ARGV[3]) and loses a page per message; at 0 the client goes to the
# ring's end; with nothing left in any queue (hash ring..':count') it leaves the ring.
# Key names other than the lists and the held hash are arguments: Redis checks
# declared keys for writing, and a worker may only read the weights. Where
# acknowledged, the message is held in KEYS[1] (tasks/broker/held.py: one HSET of its
# head, taken at ARGV[1], its holder ARGV[6+4n] (`<node>|<pid>`,
# tasks/broker/holders.py; "" for none), the key it was taken from, its step's ring
# and its client, then `[message, "", queue]`, restored to the queue it was taken
# from) under the delivery tag the worker chose (ARGV[7+4n], which it hands on as the
# message's), in the same atomic step as its pop: a server that refuses writes (a
# read-only replica, too few replicas, out of memory) refuses the script's first
# write, so it takes nothing, and a script that has written goes on to its end. A
# client's lanes are popped by one LMPOP (the first of them, in the lists' order,
# that holds a message). The envelope is never read here. A message larger than
# ARGV[2] bytes (0: no bound), or that is no JSON object by its first and last bytes,
# is popped unrecorded (the worker refuses it); a larger one is returned as its ends
# and its length alone, never whole (`bounded`: tasks/broker/oversized.py). Returns
# {list, message, tag or ""}, or nil; with the ARGV after the lists' "1" (a fetch woken
# by a doorbell, ARGV[5+4n]), a 4th: how many lists and rings still hold messages.
# With ARGV[4+4n] "1", an idle fetch costs one EXISTS over every list and ring; a ring
# with nothing in its lists and no client costs one EXISTS; a list's tail is read only
# when its anonymous lane's turn comes (or its ring has no clients). ARGV[8+4n..]:
# delivery tags this worker acknowledges first (one HDEL of their held records: the
# acknowledgements of the tasks that ended since the last fetch, in its round trip).
FETCH = Script(BOUND_LUA + r"""
local limit = tonumber(ARGV[2])
local lists = #KEYS - 1
local holder = ARGV[6 + 4 * lists] or ''
local tag = ARGV[7 + 4 * lists] or ''
if #ARGV > 7 + 4 * lists then
  local done = {unpack(ARGV, 8 + 4 * lists)}
  redis.call('HDEL', KEYS[1], unpack(done))
end
-- pops `item` from `src`, list i's or its lane (`popped`: LMPOP took it already):
-- recorded under `tag` where acknowledged
local function take(src, item, i, ring, client, popped)
  local recorded = tag ~= '' and ARGV[4 + 4 * i] == '1'
    and (limit == 0 or #item <= limit)
    and string.byte(item, 1) == 123 and string.byte(item, -1) == 125
  if recorded then
    redis.call('HSET', KEYS[1], tag, table.concat({ARGV[1], holder, src, ring or '',
                                                   client or '', '[' .. item}, '\n')
                                     .. ARGV[7 + 4 * i])
  end
  if not popped then redis.call('RPOP', src) end
  return {KEYS[2 + i], bounded(item, limit), recorded and tag or ''}
end
-- serves the lists first..last of one ring
local function share(ring, first, last)
  local turn, count = ring .. ':turn', ring .. ':count'
  -- one EXISTS: how many of the lists hold messages, plus 1 when the ring has clients
  local keys = {ring}
  for i = first, last do keys[#keys + 1] = KEYS[2 + i] end
  local held = redis.call('EXISTS', unpack(keys))
  if held == 0 then return nil end
  -- the ring's first two clients: its head, and whether it has more than one
  local head = redis.call('LRANGE', ring, 0, 1)
  local members = #head
  local any_plain = held > (members > 0 and 1 or 0)
  -- each list's tail, read when asked (false: empty)
  local plain = {}
  local function tail(i)
    if plain[i] == nil then plain[i] = redis.call('LINDEX', KEYS[2 + i], -1) or false end
    return plain[i]
  end
  if members == 0 then
    for i = first, last do
      if tail(i) then return take(KEYS[2 + i], plain[i], i) end
    end
    return nil
  end
  if any_plain and not redis.call('LPOS', ring, '') then
    members = redis.call('RPUSH', ring, '')
  end
  local pos = 0
  local lead = head[1]  -- the ring's head, read already
  for _ = 1, 1000 do
    local client = lead
    if client then lead = nil else client = redis.call('LINDEX', ring, pos) end
    if not client then return nil end
    local src, item, at, popped = nil, nil, nil, false
    if client == '' then
      for i = first, last do
        src, item = KEYS[2 + i], tail(i)
        if item then at = i break end
      end
    else
      -- the client's lanes of these lists (a list without lanes has its anonymous lane
      -- alone), in order: one LMPOP takes from the first that holds a message
      local call, index = {'LMPOP', 0}, {}
      for i = first, last do
        if ARGV[6 + 4 * i] ~= '' then
          call[#call + 1] = ARGV[6 + 4 * i] .. client
          index[call[#call]] = i
        end
      end
      call[2] = #call - 2
      call[#call + 1] = 'RIGHT'
      local got = call[2] > 0 and redis.call(unpack(call))
      if got then
        src, item, popped = got[1], got[2][1], true
        at = index[src]
      end
    end
    if item and members == 1 and client ~= '' then
      -- a lone client: no turns to keep
      local got = take(src, item, at, ring, client, popped)
      if redis.call('HINCRBY', count, client, -1) < 1 then
        redis.call('LREM', ring, 1, client)
        redis.call('HDEL', count, client)
        redis.call('HDEL', turn, client)
      end
      return got
    end
    if item then
      local left = tonumber(redis.call('HGET', turn, client))
      if not left or left < 1 then
        left = math.floor(tonumber(redis.call('HGET', ARGV[3], client)) or 1)
        if left < 1 then left = 1 end
      end
      local got = take(src, item, at, ring, client, popped)
      left = left - 1
      local waiting = 1
      if client ~= '' then waiting = redis.call('HINCRBY', count, client, -1) end
      if waiting < 1 then
        redis.call('LREM', ring, 1, client)
        redis.call('HDEL', count, client)
        redis.call('HDEL', turn, client)
      elseif left < 1 then
        redis.call('LREM', ring, 1, client)
        redis.call('RPUSH', ring, client)
        redis.call('HDEL', turn, client)
      else
        redis.call('HSET', turn, client, left)
      end
      return got
    end
    if client == '' or (tonumber(redis.call('HGET', count, client)) or 0) < 1 then
      redis.call('LREM', ring, 1, client)  -- nothing waits for it here, or anywhere
      redis.call('HDEL', turn, client)
    else
      pos = pos + 1  -- its messages wait in queues this worker does not serve
    end
  end
  return nil
end
-- an idle fetch (asked for by ARGV[4 + 4 * lists]): nothing in any list or ring, one EXISTS
local probe, seen = {}, {}
for j = 0, lists - 1 do
  probe[#probe + 1] = KEYS[2 + j]
  local ring = ARGV[5 + 4 * j]
  if ring ~= '' and not seen[ring] then
    seen[ring] = true
    probe[#probe + 1] = ring
  end
end
if lists == 0 or (ARGV[4 + 4 * lists] == '1' and redis.call('EXISTS', unpack(probe)) == 0) then
  return nil
end
local i = 0
while i < lists do
  local ring = ARGV[5 + 4 * i]
  local last = i
  while last + 1 < lists and ARGV[5 + 4 * (last + 1)] == ring do last = last + 1 end
  local got = nil
  if ring == '' then
    for j = i, last do
      local item = redis.call('LINDEX', KEYS[2 + j], -1)
      if item then got = take(KEYS[2 + j], item, j) break end
    end
  else
    got = share(ring, i, last)
  end
  if got then
    -- after a wait a ring ended: whether anything is left for the next idle worker
    if ARGV[5 + 4 * lists] == '1' then got[4] = redis.call('EXISTS', unpack(probe)) end
    return got
  end
  i = last + 1
end
return nil
""")


def push_command(prefix: str, list_key: str, step: int, client: str, body: str,
                 first: bool = False, ring_queue: str | None = None,
                 more: Sequence[str] = ()) -> list[Any]:
    """The EVALSHA that pushes `body` to `client`'s lane of `list_key` (priority `step`).

    `first`: taken before the lane's other messages (a restored one). `ring_queue`: the
    queue whose doorbell the same call rings (None: none). `more`: messages pushed in
    the same call after `body`, taken after it in their order (not with `first`).
    `prefix`: kombu's global key prefix; names are given without it.
    """
    if first and more:
        raise ValueError("several messages are pushed to the end taken last only")
    ring = prefix + lanes_key(step)
    keys = [prefix + lane_key(list_key, client), ring, ring + ":count"]
    args = [body, client, "1" if first else "0", ""]
    if ring_queue is not None:
        keys.append(prefix + wake_key(ring_queue))
        args[3] = str(WAKE_TTL_MS)
    return PUSH.command(keys, [*args, *more])


def fetch_command(prefix: str, held: str,
                  lists: Sequence[tuple[str, int, bool, bool]], now: float,
                  max_bytes: int, probe: bool = True, woken: bool = False,
                  holder: str = "", tag: str | None = None, sep: str = SEP,
                  acks: Sequence[str] = ()) -> list[Any]:
    """The EVALSHA of `FETCH` over `lists`, in that order (highest priority first).

    Each list: its key, its priority step, whether it has lanes, whether its consumer
    acknowledges. `prefix`: kombu's global key prefix; `held`: the hash of held messages
    (tasks/broker/held.py). `probe`: first one EXISTS over every list and ring, an empty fetch's
    whole cost (a fetch likely to find a message leaves it out). `woken`: the reply
    says whether messages are left (a burst rang one doorbell item for all of them).
    `holder`: recorded in each message's held record ("": none). `tag`: the delivery tag
    a recorded message is recorded and delivered under (None: a new one); `sep`:
    kombu's separator of a queue's name and priority step. `acks`: delivery tags
    acknowledged by the same call, before it fetches. A fetch of lists that
    are all consumed without acknowledgements names no held hash (the first list
    stands in its place, never written as such): such a consumer (Flower) needs no
    right on it.
    """
    head, lane_args = fetch_parts(prefix, held, tuple(lists), int(max_bytes or 0), sep)
    return [*head, repr(now), *lane_args, *fetch_tail(probe, woken, holder, tag, acks)]


@functools.lru_cache(maxsize=64)
def fetch_parts(prefix: str, held: str, lists: tuple[tuple[str, int, bool, bool], ...],
                max_bytes: int, sep: str = SEP) -> tuple[tuple[Any, ...], tuple[str, ...]]:
    """What a fetch over `lists` sends at every poll alike, made once (`fetch_command`).

    Its head (`EVALSHA`, the script, its keys) and the arguments between the time and
    the flags (the bound, the weights' hash, each list's ack flag, ring and lanes).
    The same tuples come back for the same arguments while they are kept, so that a
    caller may keep their encoded form beside them (tasks/broker/fetching.py).
    """
    keys = [prefix + held]
    if lists and not any(ack for *_, ack in lists):
        keys = [prefix + lists[0][0]]
    args = [str(max_bytes), LANE_WEIGHTS_KEY]
    # a list without lanes at a step with some (a worker's direct queue) is served in
    # that step's ring, as its anonymous lane: one EXISTS covers the step's lists
    laned_steps = {step for _, step, has_lanes, _ in lists if has_lanes}
    for name, step, has_lanes, ack in lists:
        keys.append(prefix + name)
        queue = name.split(sep, 1)[0] if sep else name
        ring = prefix + lanes_key(step) if step in laned_steps else ""
        args += ["1" if ack else "0", ring, prefix + lane_key(name, "") if has_lanes else "",
                 f", \"\", {json.dumps(queue)}]"]
    return tuple(FETCH.command(keys, [])), tuple(args)


def fetch_tail(probe: bool, woken: bool, holder: str, tag: str | None,
               acks: Sequence[str]) -> list[str]:
    """The arguments after a fetch's lane arguments: its flags, holder, tag, acks."""
    return ["1" if probe else "0", "1" if woken else "0", holder,
            str(uuid.uuid4()) if tag is None else tag, *acks]


# Messages waiting in the lanes of the lists KEYS[i] (ARGV[2i-1]: the ring of list i's
# step, ARGV[2i]: the prefix of its lanes' keys), the lists themselves not counted.
LANE_SIZES = Script(r"""
local n = 0
for i = 1, #KEYS do
  for _, client in ipairs(redis.call('LRANGE', ARGV[2 * i - 1], 0, -1)) do
    if client ~= '' then n = n + redis.call('LLEN', ARGV[2 * i] .. client) end
  end
end
return n
""")


def sizes_command(prefix: str, lists: Sequence[tuple[str, int]]) -> list[Any]:
    """The EVALSHA that counts the messages in the lanes of `lists` (key, priority step)."""
    args: list[str] = []
    for name, step in lists:
        args += [prefix + lanes_key(step), prefix + lane_key(name, "")]
    return LANE_SIZES.command([prefix + name for name, _ in lists], args)
