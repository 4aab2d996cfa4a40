"""Weighted fair shares between clients in the Redis broker: a lane per client per list.

Runs in every process that publishes through the project's transport (clients, the
API, workers sending page tasks and retries: `push`) and in the worker parent, the
one process that consumes (`fetch_command`, sent by tasks/queue/transport.py).

Each Redis list kombu keeps for a queue and priority step (`ocr-x`, `ocr-x` and its
priority suffix, ...) has lanes: a message that names its client (the `ocr_client` header,
tasks/records/clients.py) is pushed to that client's lane (`ocr:lane:<list>:<client>`)
instead of the list, and the lane joins the list's ring (`ocr:lanes:<list>`) in the
same atomic step. Everything else, a stock kombu or Node client's message and every
restore of an unacknowledged message, stays in the list itself: the anonymous lane,
which joins the ring at the fetch that finds it holding messages.

The fetch (`FETCH_SCRIPT`) takes the first list in kombu's order (queues in turn,
highest priority first) that holds a message in any lane, and within it serves the
ring by weighted deficit round robin counting pages: the first lane of the ring takes
up to its weight in messages (a message is one page: a page task, or an image job),
then goes to the ring's end. A lane found empty leaves the ring at once, so a lone
client has the whole list (work-conserving). Weights come from `ocr:lane-weights`
(the API's token store, tasks/api/tokens.py); a client without one weighs 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tasks.state.keys import (
    LANE_WEIGHTS_KEY,
    LANES_ACTIVE_KEY,
    lane_key,
    lanes_key,
    lanes_turn_key,
)

# The ring's name for the anonymous lane (no client name can be empty).
ANONYMOUS_MEMBER = ""

# Pushes a message to its client's lane (KEYS[1]); a lane that was empty joins the ring
# (KEYS[2]) unless it is in it already, and the list (ARGV[3]) is marked as having a
# ring in KEYS[3]. ARGV: message, client, list key.
PUSH_SCRIPT = r"""
if redis.call('LPUSH', KEYS[1], ARGV[1]) == 1 and not redis.call('LPOS', KEYS[2], ARGV[2]) then
  redis.call('RPUSH', KEYS[2], ARGV[2])
  redis.call('HSET', KEYS[3], ARGV[3], '1')
end
return 1
"""

# Takes the next message of the lists KEYS[3..] (kombu's BRPOP order: queues in turn,
# highest priority first): a list's own tail when it has no ring (the lists with rings
# are the fields of the hash ARGV[4]), else the next lane's tail by weighted round robin
# (weights in the hash ARGV[3]). For list i (from 0), ARGV[5+4i] is "1" for a consumer
# that acknowledges, then its ring, its turn and the prefix of its lanes' keys (not
# declared as KEYS: Redis checks declared keys for writing, and a user may only read
# the weights). Where acknowledged, the message is recorded in kombu's `unacked` hash
# (KEYS[1]) and index (KEYS[2], score ARGV[1]) under its delivery tag before it is
# popped, in the same atomic step: a server that refuses writes takes nothing. The tag,
# exchange and routing key are read from the envelope's text, not decoded: kombu and
# the Node client write the properties last, so the last 8 KiB are searched first, a
# message of up to 1 MiB whole. A message larger than ARGV[2] bytes (0: no bound), or
# whose properties are not found, is popped unrecorded. Returns {list, message, tag or
# ""}, or nil when every lane of every list is empty.
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
local weights, active = ARGV[3], ARGV[4]
local names = {}
for i = 3, #KEYS do names[i - 2] = KEYS[i] end
local marked = redis.call('HMGET', active, unpack(names))
for i = 0, #KEYS - 3 do
  local list, ack = KEYS[3 + i], ARGV[5 + 4 * i] == '1'
  local ring, turn, prefix = ARGV[6 + 4 * i], ARGV[7 + 4 * i], ARGV[8 + 4 * i]
  local plain = redis.call('LINDEX', list, -1)
  if not marked[i + 1] then
    if plain then return take(list, plain, ack, list) end
  else
    if plain and not redis.call('LPOS', ring, '') then redis.call('RPUSH', ring, '') end
    while true do
      local client = redis.call('LINDEX', ring, 0)
      if not client then
        redis.call('HDEL', active, list)
        redis.call('DEL', turn)
        break
      end
      local lane = list
      if client ~= '' then lane = prefix .. client end
      local item = redis.call('LINDEX', lane, -1)
      if not item then
        redis.call('LPOP', ring)
        redis.call('HDEL', turn, client)
      else
        local left = tonumber(redis.call('HGET', turn, client))
        if not left or left < 1 then
          left = math.floor(tonumber(redis.call('HGET', weights, client)) or 1)
          if left < 1 then left = 1 end
        end
        local got = take(lane, item, ack, list)
        left = left - 1
        if left < 1 then
          redis.call('LMOVE', ring, ring, 'LEFT', 'RIGHT')
          redis.call('HDEL', turn, client)
        else
          redis.call('HSET', turn, client, left)
        end
        return got
      end
    end
  end
end
return nil
"""


def push_command(prefix: str, list_key: str, client: str, body: str) -> list[Any]:
    """The EVAL that pushes `body` to `client`'s lane of `list_key` (keys unprefixed)."""
    return ["EVAL", PUSH_SCRIPT, 3, prefix + lane_key(list_key, client),
            prefix + lanes_key(list_key), prefix + LANES_ACTIVE_KEY, body, client,
            prefix + list_key]


def fetch_command(prefix: str, unacked: tuple[str, str], lists: Sequence[tuple[str, bool]],
                  now: float, max_bytes: int) -> list[Any]:
    """The EVAL of `FETCH_SCRIPT` over `lists` (list key, acknowledged), in that order.

    `prefix`: kombu's global key prefix; `unacked`: kombu's unacked hash and index.
    """
    keys = [prefix + unacked[0], prefix + unacked[1]]
    args = [repr(now), str(int(max_bytes or 0)), LANE_WEIGHTS_KEY, prefix + LANES_ACTIVE_KEY]
    for name, ack in lists:
        keys.append(prefix + name)
        args += ["1" if ack else "0", prefix + lanes_key(name), prefix + lanes_turn_key(name),
                 prefix + lane_key(name, "")]
    return ["EVAL", FETCH_SCRIPT, len(keys), *keys, *args]
