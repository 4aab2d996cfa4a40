r"""Weighted fair shares between clients in the Redis broker: a lane per client per list.

Runs in every process that publishes through the project's transport (clients, the
API, workers sending page tasks and retries: `push_command`) and in the worker parent,
the one process that consumes (`fetch_command`, sent by tasks/broker/transport.py).

Each Redis list kombu keeps for a service queue (`ocr`, `ocr-<engine>`, ...: `laned`)
and priority step has lanes: a message that names its client (the `ocr_client`
header, tasks/records/clients.py) is pushed to that client's lane of the list
(`ocr:lane:<list>:<client>`) instead of the list, and the client joins the ring of
its priority step (`ocr:lanes:<step>`, one ring for every queue) in the same atomic
step; a restored one (kombu's restore of an unacknowledged message) goes back to the
end of its lane that is taken first. Everything else, a stock kombu or Node client's
message, stays in the list itself: the anonymous lane, which joins the ring at a fetch
that finds it holding messages.

The fetch (`FETCH_SCRIPT`) serves priority steps in order, highest first, exactly as
kombu does; within a step, the clients of the ring by weighted deficit round robin
counting pages, whichever of the worker's queues their pages wait in: the first client
of the ring that has a message in one of the worker's queues takes up to its weight in
messages (a message is one page: a page task, or an image job), then goes to the
ring's end. A client with nothing left waiting leaves the ring at once, so a lone
client has every worker (work-conserving). Weights come from `ocr:lane-weights` (the
API's token store, tasks/api/tokens.py); a client without one weighs 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tasks.broker.layout import LANE_WEIGHTS_KEY, lane_key, lanes_key


def laned(queue: str) -> bool:
    """Whether `queue`'s messages wait in lanes: the service's queues (`ocr*`).

    Not Celery's own (remote control replies, events) nor a queue outside the service's
    names: those keep kombu's lists alone.
    """
    return queue.startswith("ocr") and ":" not in queue


# Pushes a message (ARGV[1]) to its client's (ARGV[2]) lane (KEYS[1]; at the end taken
# first when ARGV[3] is "1": a restored message), counts it in
# KEYS[3] and, for its first message waiting, puts the client at the end of the ring
# KEYS[2] (a client with messages counted is in the ring: the fetch drops it only at 0).
PUSH_SCRIPT = r"""
if ARGV[3] == '1' then
  redis.call('RPUSH', KEYS[1], ARGV[1])
else
  redis.call('LPUSH', KEYS[1], ARGV[1])
end
if redis.call('HINCRBY', KEYS[3], ARGV[2], 1) == 1 and not redis.call('LPOS', KEYS[2], ARGV[2]) then
  redis.call('RPUSH', KEYS[2], ARGV[2])
end
return 1
"""

# Takes the next message of the lists KEYS[3..] (kombu's BRPOP order: highest priority
# first). For list i (from 0): ARGV[4+3i] is "1" for a consumer that acknowledges,
# ARGV[5+3i] the ring of its priority step ("" for a list without lanes: its tail is
# taken as kombu would), ARGV[6+3i] the prefix of its lanes' keys. Consecutive lists of
# one ring are served together: the ring's first client with a message in one of them
# (the anonymous client "": the lists themselves) takes it; its turn (hash ring..':turn')
# starts at its weight (hash ARGV[3]) and loses a page per message; at 0 the client
# goes to the ring's end; with nothing left in any queue (hash ring..':count') it
# leaves the ring. Key names other than the lists are arguments: Redis checks declared
# keys for writing, and a worker may only read the weights. Where acknowledged, the
# message is recorded in kombu's `unacked` hash (KEYS[1]) and index (KEYS[2], score
# ARGV[1]) under its delivery tag before it is popped, in the same atomic step: a
# server that refuses writes takes nothing. The tag, exchange and routing key are read
# from the envelope's text, not decoded: kombu and the Node client write the
# properties last, so the last 8 KiB are searched first, a message of up to 1 MiB
# whole. A message larger than ARGV[2] bytes (0: no bound), or whose properties are not
# found, is popped unrecorded. Returns {list, message, tag or ""}, or nil.
FETCH_SCRIPT = r"""
local limit = tonumber(ARGV[2])
local function envelope(text)
  local tag = string.match(text, '"delivery_tag"%s*:%s*"([^"\\]+)"')
  local info = string.match(text, '"delivery_info"%s*:%s*(%b{})')
  if not (tag and info) then return nil end
  local ex = string.match(info, '"exchange"%s*:%s*"([^"\\]*)"')
  local rk = string.match(info, '"routing_key"%s*:%s*"([^"\\]*)"')
  if not (ex and rk) then return nil end
  return tag, ex, rk
end
local function take(src, item, ack, list)
  local tag, ex, rk = nil, nil, nil
  if ack and (limit == 0 or #item <= limit) then
    tag, ex, rk = envelope(string.sub(item, -8192))
    if not tag and #item <= 1048576 then tag, ex, rk = envelope(item) end
  end
  if tag then
    redis.call('ZADD', KEYS[2], ARGV[1], tag)
    redis.call('HSET', KEYS[1], tag, '[' .. item .. ', "' .. ex .. '", "' .. rk .. '"]')
  end
  redis.call('RPOP', src)
  return {list, item, tag or ''}
end
-- serves the lists first..last of one ring
local function share(ring, first, last)
  local turn, count = ring .. ':turn', ring .. ':count'
  local plain = {}
  local any_plain = false
  for i = first, last do
    plain[i] = redis.call('LINDEX', KEYS[3 + i], -1)
    if plain[i] then any_plain = true end
  end
  local members = redis.call('LLEN', ring)
  if members == 0 then
    for i = first, last do
      if plain[i] then return take(KEYS[3 + i], plain[i], ARGV[4 + 3 * i] == '1', KEYS[3 + i]) end
    end
    return nil
  end
  if any_plain and not redis.call('LPOS', ring, '') then
    members = redis.call('RPUSH', ring, '')
  end
  local pos = 0
  for _ = 1, 1000 do
    local client = redis.call('LINDEX', ring, pos)
    if not client then return nil end
    local src, item, at = nil, nil, nil
    for i = first, last do
      if client == '' then
        src, item = KEYS[3 + i], plain[i]
      else
        src = ARGV[6 + 3 * i] .. client
        item = redis.call('LINDEX', src, -1)
      end
      if item then at = i break end
    end
    if item and members == 1 and client ~= '' then
      -- a lone client: no turns to keep
      local got = take(src, item, ARGV[4 + 3 * at] == '1', KEYS[3 + at])
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
      local got = take(src, item, ARGV[4 + 3 * at] == '1', KEYS[3 + at])
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
local lists = #KEYS - 2
local i = 0
while i < lists do
  local ring = ARGV[5 + 3 * i]
  local last = i
  while last + 1 < lists and ARGV[5 + 3 * (last + 1)] == ring do last = last + 1 end
  local got = nil
  if ring == '' then
    for j = i, last do
      local item = redis.call('LINDEX', KEYS[3 + j], -1)
      if item then got = take(KEYS[3 + j], item, ARGV[4 + 3 * j] == '1', KEYS[3 + j]) break end
    end
  else
    got = share(ring, i, last)
  end
  if got then return got end
  i = last + 1
end
return nil
"""


def push_command(prefix: str, list_key: str, step: int, client: str, body: str,
                 first: bool = False) -> list[Any]:
    """The EVAL that pushes `body` to `client`'s lane of `list_key` (priority `step`).

    `first`: taken before the lane's other messages (a restored one). `prefix`: kombu's
    global key prefix; names are given without it.
    """
    ring = prefix + lanes_key(step)
    return ["EVAL", PUSH_SCRIPT, 3, prefix + lane_key(list_key, client), ring,
            ring + ":count", body, client, "1" if first else "0"]


def fetch_command(prefix: str, unacked: tuple[str, str],
                  lists: Sequence[tuple[str, int, bool, bool]], now: float,
                  max_bytes: int) -> list[Any]:
    """The EVAL of `FETCH_SCRIPT` over `lists`, in that order (highest priority first).

    Each list: its key, its priority step, whether it has lanes, whether its consumer
    acknowledges. `prefix`: kombu's global key prefix; `unacked`: kombu's unacked hash
    and index.
    """
    keys = [prefix + unacked[0], prefix + unacked[1]]
    args = [repr(now), str(int(max_bytes or 0)), LANE_WEIGHTS_KEY]
    for name, step, has_lanes, ack in lists:
        keys.append(prefix + name)
        args += ["1" if ack else "0", prefix + lanes_key(step) if has_lanes else "",
                 prefix + lane_key(name, "")]
    return ["EVAL", FETCH_SCRIPT, len(keys), *keys, *args]


# Messages waiting in the lanes of the lists KEYS[i] (ARGV[2i-1]: the ring of list i's
# step, ARGV[2i]: the prefix of its lanes' keys), the lists themselves not counted.
LANE_SIZES_SCRIPT = r"""
local n = 0
for i = 1, #KEYS do
  for _, client in ipairs(redis.call('LRANGE', ARGV[2 * i - 1], 0, -1)) do
    if client ~= '' then n = n + redis.call('LLEN', ARGV[2 * i] .. client) end
  end
end
return n
"""


def sizes_command(prefix: str, lists: Sequence[tuple[str, int]]) -> list[Any]:
    """The EVAL that counts the messages in the lanes of `lists` (key, priority step)."""
    args: list[str] = []
    for name, step in lists:
        args += [prefix + lanes_key(step), prefix + lane_key(name, "")]
    return ["EVAL", LANE_SIZES_SCRIPT, len(lists), *(prefix + name for name, _ in lists),
            *args]
