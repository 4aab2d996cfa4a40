r"""The fetch: the one script that takes a worker's next message, and the order it serves.

Runs in the worker parent, the one process that consumes (tasks/broker/fetching.py
sends it at each poll). The order a worker's messages are taken in is decided here
alone: `fetch_order` orders a worker's lists (its queues, their priority steps, which
have lanes), and the script's `share` serves each list's lanes by the clients' weights
(`ocr:lane-weights`, the API's token store). The script holds the message it takes in
one record of its list's unacked hash (tasks/broker/unacked.py), and drops the records of
the acknowledgements that ride on it, all in one atomic step and one round trip. A list
L's lanes, ring and unacked records are keys tagged `{L}`, in L's own hash slot.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Collection, Iterable, Sequence
from typing import Any

from tasks.broker.layout import (
    HELD_LISTS_KEY,
    LANE_WEIGHTS_KEY,
    SEP,
    list_held_key,
    list_lane_key,
    list_ring_key,
    queue_wake_key,
)
from tasks.broker.oversized import BOUND_LUA
from tasks.state.lua import Script

Listed = tuple[str, int, bool, bool]  # a list's key, priority step, has lanes, acknowledged


def fetch_order(lists: Iterable[Listed]) -> tuple[Listed, ...]:
    """The order a fetch looks through a worker's `lists`: the fetch order, decided here.

    1. Priority steps in their order (kombu's: the highest priority first).
    2. Within a step, the lists with lanes (the service's queues, `lanes.laned`), in
       the order given (the worker's queue cycle, which turns after each message), then
       the lists without (a worker's direct queue), served as the anonymous lane beside
       each ring.
    3. Within a list, its ring of clients by weighted deficit round robin (the script's
       `share`): the first client with a message takes up to its weight in messages,
       then goes to the ring's end; a client with nothing left leaves the ring.
    """
    lists = tuple(lists)
    steps = list(dict.fromkeys(step for _, step, _, _ in lists))
    return tuple(entry for step in steps for laned in (True, False)
                 for entry in lists if entry[1] == step and entry[2] == laned)


# The script's arguments by name: HEAD, then ENTRY for each entry, then TAIL, then the
# tail's lists to name and its acknowledgements. Its KEYS: each entry's list and unacked
# hash (the list itself where its consumer does not acknowledge: never written), the
# set of lists with unacked records, then the wake-ups of the service queues served.
HEAD = ("now", "max_bytes", "weights", "wakes")
ENTRY = ("acked", "ring", "lanes", "record_end", "step")
TAIL = ("probe", "woken", "holder", "tag", "names")


def _lua_names(names: Sequence[str]) -> str:
    return "{" + ", ".join(f"'{name}'" for name in names) + "}"


# Takes the next message of a worker's lists, in the fetch order (`fetch_order`). An
# entry (one list): `acked` "1" for a consumer that acknowledges, `ring` the ring whose
# clients' lanes of the list it serves ("" for none: the list's own tail alone, as
# kombu takes it), `lanes` the prefix of those lanes' keys, `record_end` the end of its
# record (`, "", "<queue>"]`), `step` its priority step. Steps go in order; within one,
# each ring in the order of its first entry, its lists' tails served beside it as the
# anonymous lane (client ""), by `share`. One EXISTS a step tells which of its rings
# have clients and how many of its lists hold messages (each ring named 2^(r-1) times,
# each list 2^rings times; a step of more than four rings asks one EXISTS a ring).
# Where acknowledged, the message is held (tasks/broker/unacked.py: one HSET of its head,
# taken at `now`, its `holder`, the key it was taken from, its ring and its client, then
# `[message, "", queue]`) under `tag`, in the same atomic step as its pop: a server that
# refuses writes refuses the script's first write, so it takes nothing. A message larger
# than `max_bytes` (0: no bound), or that is no JSON object by its first and last
# bytes, is popped unrecorded (the worker refuses it); a larger one is returned as its
# ends and its length (`bounded`: tasks/broker/oversized.py). Returns {list, message,
# tag or ""}, or nil; `woken` "1" (a fetch after a wake-up) adds how many lists and
# rings still hold messages. `probe` "1": first one EXISTS over every list and ring, an
# idle fetch's whole cost. `names` r, then r entry numbers (from 0): the lists this
# worker has not seen in the set of lists with unacked records, which a record written
# in one of them names there (SADD). Then acknowledgements, each `<k>:<tag>`, the record
# of <tag> in the unacked hash KEYS[k], dropped first (one HDEL a hash). A fetch that
# looked through every list and ring and took nothing empties the `wakes` wake-ups (one
# DEL): a wake-up left then was for a message taken already.
FETCH = Script(BOUND_LUA + f"""
local HEAD, ENTRY, TAIL = {_lua_names(HEAD)}, {_lua_names(ENTRY)}, {_lua_names(TAIL)}
""" + r"""
local A = {}
for k, name in ipairs(HEAD) do A[name] = ARGV[k] end
local wakes = tonumber(A.wakes)
local n = (#KEYS - 1 - wakes) / 2
local E = {}
for i = 0, n - 1 do
  local e = {list = KEYS[2 * i + 1], held = KEYS[2 * i + 2]}
  for k, name in ipairs(ENTRY) do e[name] = ARGV[#HEAD + #ENTRY * i + k] end
  E[i] = e
end
local base = #HEAD + #ENTRY * n
for k, name in ipairs(TAIL) do A[name] = ARGV[base + k] or '' end
local limit = tonumber(A.max_bytes)
local unnamed = {}
local names = tonumber(A.names) or 0
base = base + #TAIL
for j = 1, names do unnamed[tonumber(ARGV[base + j])] = true end
local acks_at = base + names + 1
if #ARGV >= acks_at then
  local order, done = {}, {}
  for j = acks_at, #ARGV do
    local k, t = string.match(ARGV[j], '^(%d+):(.+)$')
    k = tonumber(k)
    if k and KEYS[k] then
      if not done[k] then done[k] = {} order[#order + 1] = k end
      table.insert(done[k], t)
    end
  end
  for _, k in ipairs(order) do redis.call('HDEL', KEYS[k], unpack(done[k])) end
end
-- pops `item` from `src`, entry i's list or a lane of it (`popped`: LMPOP took it
-- already): recorded under the tag where acknowledged
local function take(src, item, i, ring, client, popped)
  local e = E[i]
  local recorded = A.tag ~= '' and e.acked == '1'
    and (limit == 0 or #item <= limit)
    and string.byte(item, 1) == 123 and string.byte(item, -1) == 125
  if recorded then
    redis.call('HSET', e.held, A.tag,
               table.concat({A.now, A.holder, src, ring or '', client or '', '[' .. item},
                            '\n') .. e.record_end)
    if unnamed[i] then redis.call('SADD', KEYS[2 * n + 1], e.list) end
  end
  if not popped then redis.call('RPOP', src) end
  return {e.list, bounded(item, limit), recorded and A.tag or ''}
end
-- serves the entries `idx` (in order) of one ring by weighted deficit round robin, the
-- anonymous lane ("": the lists' own tails) among its clients; `known`: how many of the
-- lists hold messages, plus 1 when the ring has clients, where the caller counted them
-- (else one EXISTS). A lone client keeps no turns; a client with nothing left waiting
-- leaves the ring; one whose messages wait in lists this worker does not serve keeps
-- its place.
local function share(ring, idx, known)
  local turn, count = ring .. ':turn', ring .. ':count'
  local held = known
  if not held then
    local keys = {ring}
    for _, i in ipairs(idx) do keys[#keys + 1] = E[i].list end
    held = redis.call('EXISTS', unpack(keys))
  end
  if held == 0 then return nil end
  -- the ring's first two clients: its head, and whether it has more than one
  local head = redis.call('LRANGE', ring, 0, 1)
  local members = #head
  local any_plain = held > (members > 0 and 1 or 0)
  -- each entry's list tail, read when asked (false: empty)
  local plain = {}
  local function tail(i)
    if plain[i] == nil then plain[i] = redis.call('LINDEX', E[i].list, -1) or false end
    return plain[i]
  end
  if members == 0 then
    for _, i in ipairs(idx) do
      if tail(i) then return take(E[i].list, plain[i], i) end
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
      for _, i in ipairs(idx) do
        src, item = E[i].list, tail(i)
        if item then at = i break end
      end
    else
      -- the client's lanes of these lists, in order: one LMPOP takes from the first
      -- that holds a message
      local call, index = {'LMPOP', 0}, {}
      for _, i in ipairs(idx) do
        if E[i].ring == ring and E[i].lanes ~= '' then
          call[#call + 1] = E[i].lanes .. client
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
        left = math.floor(tonumber(redis.call('HGET', A.weights, client)) or 1)
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
      pos = pos + 1  -- its messages wait in lists this worker does not serve
    end
  end
  return nil
end
-- every list and ring once: an idle fetch (asked for by `probe`) finds nothing in any
-- of them with one EXISTS; made only for the EXISTS that asks (not for every fetch)
local function probe()
  local keys, seen = {}, {}
  for j = 0, n - 1 do
    for _, key in ipairs({E[j].list, E[j].ring}) do
      if key ~= '' and not seen[key] then
        seen[key] = true
        keys[#keys + 1] = key
      end
    end
  end
  return keys
end
if n == 0 or (A.probe == '1' and redis.call('EXISTS', unpack(probe())) == 0) then
  return nil
end
local i = 0
while i < n do
  local step = E[i].step
  local last = i
  while last + 1 < n and E[last + 1].step == step do last = last + 1 end
  -- the step's rings in order of their first entry; its entries without one
  local rings, of, plain = {}, {}, {}
  for j = i, last do
    local ring = E[j].ring
    if ring == '' then
      plain[#plain + 1] = j
    else
      if not of[ring] then
        of[ring] = {}
        rings[#rings + 1] = ring
      end
      table.insert(of[ring], j)
    end
  end
  -- a ring's entries, then the step's entries without a ring (its anonymous lane)
  local function serves(ring)
    local idx = {}
    for _, j in ipairs(of[ring]) do idx[#idx + 1] = j end
    for _, j in ipairs(plain) do idx[#idx + 1] = j end
    return idx
  end
  local got = nil
  if #rings == 0 then
    for _, j in ipairs(plain) do
      local item = redis.call('LINDEX', E[j].list, -1)
      if item then got = take(E[j].list, item, j) break end
    end
  elseif #rings > 4 then
    for _, ring in ipairs(rings) do  -- one EXISTS a ring
      got = share(ring, serves(ring))
      if got then break end
    end
  else
    -- one EXISTS for the step: each ring named 2^(r-1) times, each list 2^#rings
    -- times, so the count tells which rings exist and how many lists hold messages
    local keys, named = {}, {}
    for r, ring in ipairs(rings) do
      for _ = 1, 2 ^ (r - 1) do keys[#keys + 1] = ring end
    end
    local weight = 2 ^ #rings
    for j = i, last do
      if not named[E[j].list] then
        named[E[j].list] = true
        for _ = 1, weight do keys[#keys + 1] = E[j].list end
      end
    end
    local count = redis.call('EXISTS', unpack(keys))
    local lists_held = math.floor(count / weight)
    for r, ring in ipairs(rings) do
      local has = math.floor(count / 2 ^ (r - 1)) % 2
      if has == 1 or lists_held > 0 then
        got = share(ring, serves(ring), has + lists_held)
        if got then break end
      end
    end
  end
  if got then
    -- after a wait a ring ended: whether anything is left for the next idle worker
    if A.woken == '1' then got[4] = redis.call('EXISTS', unpack(probe())) end
    return got
  end
  i = last + 1
end
if wakes > 0 then redis.call('DEL', unpack(KEYS, 2 * n + 2, 2 * n + 1 + wakes)) end
return nil
""")


def fetch_command(prefix: str, lists: Sequence[Listed], now: float, max_bytes: int,
                  probe: bool = True, woken: bool = False, holder: str = "",
                  tag: str | None = None, sep: str = SEP,
                  acks: Iterable[tuple[str, str]] = (),
                  named: Collection[str] = ()) -> list[Any]:
    """The EVALSHA of `FETCH` over `lists`, in that order (highest priority first).

    Each list: its key, its priority step, whether it has lanes, whether its consumer
    acknowledges. `prefix`: kombu's global key prefix. `probe`: first one EXISTS over
    every list and ring, an empty fetch's whole cost (a fetch likely to find a message
    leaves it out). `woken`: the reply says whether messages are left (a burst left
    one wake-up item for all of them). `holder`: recorded in each message's held
    record ("": none). `tag`: the delivery tag a recorded message is recorded and
    delivered under (None: a new one); `sep`: kombu's separator of a queue's name and
    priority step. `acks`: (unacked hash, delivery tag) pairs acknowledged by the same
    call, before it fetches; those of a hash the fetch does not name are left out
    (`split_acks`). `named`: the lists the caller saw named in the set of lists with
    unacked records (the others are named by the record's write).
    """
    parts = fetch_parts(prefix, tuple(lists), int(max_bytes or 0), sep)
    riding, _ = split_acks(parts, acks)
    return [*parts[0], repr(now), *parts[1], *fetch_tail(
        probe, woken, holder, tag, riding, unnamed(parts, named))]


@functools.lru_cache(maxsize=64)
def fetch_parts(prefix: str, lists: tuple[Listed, ...], max_bytes: int, sep: str = SEP,
                ) -> tuple[tuple[Any, ...], tuple[str, ...]]:
    """What a fetch over `lists` sends at every poll alike, made once (`fetch_command`).

    Its head (`EVALSHA`, the script, its keys) and the arguments between the time and
    the tail (`HEAD` less `now`, then each entry's `ENTRY`), in the fetch order
    (`fetch_order`). The wake-ups are those of the queues whose lists have lanes. The
    same tuples come back for the same arguments while they are kept, so that a caller
    may keep their encoded form beside them (tasks/broker/wire.py).
    """
    keys: list[str] = []
    args: list[str] = []
    wakes: list[str] = []
    for name, step, laned, ack in fetch_order(lists):
        key = prefix + name
        keys += [key, list_held_key(key) if ack else key]
        queue = name.split(sep, 1)[0] if sep else name
        if laned and queue_wake_key(prefix + queue) not in wakes:
            wakes.append(queue_wake_key(prefix + queue))
        entry = {"acked": "1" if ack else "0",
                 "ring": list_ring_key(key) if laned else "",
                 "lanes": list_lane_key(key, "") if laned else "",
                 "record_end": f", \"\", {json.dumps(queue)}]", "step": str(step)}
        args += [entry[field] for field in ENTRY]
    if keys:  # the set of lists with unacked records (a list where none is held)
        acked = any(ack for *_, ack in lists)
        keys.append(prefix + HELD_LISTS_KEY if acked else keys[0])
    head = {"max_bytes": str(max_bytes), "weights": LANE_WEIGHTS_KEY,
            "wakes": str(len(wakes))}
    return (tuple(FETCH.command([*keys, *wakes], [])),
            (*(head[field] for field in HEAD[1:]), *args))


def entry_keys(parts: tuple[tuple[Any, ...], tuple[str, ...]]) -> tuple[str, ...]:
    """A fetch's entries' keys, each list then its unacked hash (KEYS[1..2n])."""
    entries = (len(parts[1]) - len(HEAD) + 1) // len(ENTRY)
    return tuple(parts[0][3:3 + 2 * entries])


def unnamed(parts: tuple[tuple[Any, ...], tuple[str, ...]],
            named: Collection[str]) -> list[str]:
    """The numbers of a fetch's entries whose list is not in `named` and is held."""
    keys = entry_keys(parts)
    return [str(i) for i in range(len(keys) // 2)
            if keys[2 * i + 1] != keys[2 * i] and keys[2 * i] not in named]


def split_acks(parts: tuple[tuple[Any, ...], tuple[str, ...]],
               acks: Iterable[tuple[str, str]]) -> tuple[list[str], list[tuple[str, str]]]:
    """`acks` (unacked hash, tag) as a fetch of `parts` carries them; and those it cannot.

    A fetch carries the acknowledgements of the unacked hashes it names (`<k>:<tag>`,
    KEYS[k]); the others (a queue no longer consumed) go alone.
    """
    index = {key: k for k, key in enumerate(entry_keys(parts), 1) if k % 2 == 0}
    riding: list[str] = []
    alone: list[tuple[str, str]] = []
    for key, tag in acks:
        k = index.get(key)
        if k is None:
            alone.append((key, tag))
        else:
            riding.append(f"{k}:{tag}")
    return riding, alone


def fetch_tail(probe: bool, woken: bool, holder: str, tag: str | None,
               acks: Sequence[str], unnamed: Sequence[str] = ()) -> list[str]:
    """The arguments after a fetch's entries (`TAIL`), the lists to name, the acks.

    The lists to name: the entries whose list a record names in the set of lists with
    unacked records (`unnamed`).
    """
    tail = {"probe": "1" if probe else "0", "woken": "1" if woken else "0",
            "holder": holder, "tag": str(uuid.uuid4()) if tag is None else tag,
            "names": str(len(unnamed))}
    return [*(tail[field] for field in TAIL), *unnamed, *acks]
