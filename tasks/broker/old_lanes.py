r"""Layout version 2's lanes, moved into version 3's by the fetch that asks for it.

Runs on the Redis server, as part of the fetch (`MOVE_OLD_LUA`, in tasks/broker/
fetch_script.py's `FETCH`); its arguments are made in the worker parent (`old_lanes`).
A client of the release before (during a rolling upgrade, or a service that has not
upgraded its client yet) pushes a message to its version 2 lane of a list L,
`ocr:lane:<L>:<client>`, and puts the client in its priority step's ring
`ocr:lanes:<step>`, one ring for every queue (tasks/broker/layout.py). The worker of
this release serves version 3's lanes alone; every few seconds, and after a version 2
doorbell woke it, its fetch first moves the version 2 lanes of the lists it serves
into their version 3 lanes (`{L}:lane:<client>`), their oldest message still taken
first, counted in L's ring, and takes the client out of the old ring once nothing of
it waits there. Where no old ring exists, that costs the fetch one EXISTS.

Version 2's keys are in other hash slots than L's: a Redis Cluster runs version 3
alone, from its start, and no worker there asks for the move.
"""

from __future__ import annotations

import functools
from typing import Any

from tasks.broker.layout import lane_key, lanes_key, list_lane_key, list_ring_key

# `move_old(first, moves)`: ARGV[first..] holds `moves` quads, each a step's ring and a
# list's lanes' prefix in version 2, that list's lanes' prefix and its ring in version
# 3. The old rings' clients' lanes are moved in chunks of 1,000, the newest first and
# each chunk after the last (RPUSH), so the oldest message ends at the tail the fetch
# takes first. The anonymous lane's place in an old ring is dropped (the lists
# themselves are served as they are).
MOVE_OLD_LUA = r"""
local function move_old(first, moves)
  local olds, seen_old = {}, {}
  for q = 0, moves - 1 do
    local ring = ARGV[first + 4 * q]
    if not seen_old[ring] then
      seen_old[ring] = true
      olds[#olds + 1] = ring
    end
  end
  if redis.call('EXISTS', unpack(olds)) == 0 then return end
  local clients = {}
  for _, ring in ipairs(olds) do
    redis.call('LREM', ring, 0, '')
    clients[ring] = redis.call('LRANGE', ring, 0, -1)
  end
  for q = 0, moves - 1 do
    local ring, old, new, to = ARGV[first + 4 * q], ARGV[first + 4 * q + 1],
                               ARGV[first + 4 * q + 2], ARGV[first + 4 * q + 3]
    for _, client in ipairs(clients[ring]) do
      local moved = 0
      while true do
        local items = redis.call('LRANGE', old .. client, 0, 999)
        if #items == 0 then break end
        redis.call('RPUSH', new .. client, unpack(items))
        redis.call('LTRIM', old .. client, #items, -1)
        moved = moved + #items
      end
      if moved > 0 then
        if redis.call('HINCRBY', to .. ':count', client, moved) == moved
            and not redis.call('LPOS', to, client) then
          redis.call('RPUSH', to, client)
        end
        if redis.call('HINCRBY', ring .. ':count', client, -moved) < 1 then
          redis.call('LREM', ring, 1, client)
          redis.call('HDEL', ring .. ':count', client)
          redis.call('HDEL', ring .. ':turn', client)
        end
      end
    end
  end
end
"""

MOVE_EVERY = 5.0  # seconds between a worker's fetches that move version 2's lanes


@functools.lru_cache(maxsize=64)
def old_lanes(prefix: str, lists: tuple[tuple[str, int, bool, bool], ...]) -> tuple[str, ...]:
    """A fetch's quads that move version 2's lanes of `lists` into version 3's.

    `lists`: the fetch's (key, priority step, has lanes, acknowledged). For each list
    with lanes: its step's ring and its lanes' prefix in version 2, its lanes' prefix
    and its ring in version 3.
    """
    quads: list[Any] = []
    for name, step, has_lanes, _ in lists:
        if has_lanes:
            quads += [prefix + lanes_key(step), prefix + lane_key(name, ""),
                      list_lane_key(prefix + name, ""), list_ring_key(prefix + name)]
    return tuple(quads)
