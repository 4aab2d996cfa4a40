r"""The fetch: the one script that takes a worker's next message, and the commands that call it.

Runs in the worker parent, the one process that consumes (tasks/broker/fetching.py
sends it at each poll). The script serves a worker's lists in weighted fair shares
between clients (tasks/broker/lanes.py draws the lanes and rings; tasks/broker/
layout.py names every key), holds the message it takes in one record of its list's
held hash (tasks/broker/held.py), and drops the records of the acknowledgements that
ride on it, all in one atomic step and one round trip. A list L's lanes, ring and
held records are keys tagged `{L}`, in L's own hash slot.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Collection, Iterable, Sequence
from typing import Any

from tasks.broker.lanes import SHARE_LUA
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

# Takes the next message of a worker's lists. The fetch names entries, each a list:
# entry i (from 0) is the list KEYS[2i+1] and the hash its records are held in,
# KEYS[2i+2] (its own list where its consumer does not acknowledge: never written);
# ARGV[5+5i] "1" for a consumer that acknowledges, ARGV[6+5i] the ring whose clients'
# lanes of the list it serves ("" for none: the list's own tail alone, as kombu takes
# it), ARGV[7+5i] the prefix of those lanes' keys, ARGV[8+5i] the end of its record
# (`, "", "<queue>"]`), ARGV[9+5i] its group. Groups go in order (kombu's BRPOP order:
# highest priority first), one a priority step; within a group each ring in the
# order of its first entry, its lists' tails served beside it as the anonymous lane
# (client "": a stock kombu client's messages, and the lists without a ring), the
# entries of one ring in their order. The ring's first client with a message in one
# of its lists takes it; its turn (hash ring..':turn') starts at its weight (hash
# ARGV[3]) and loses a page per message; at 0 the client goes to the ring's end; with
# nothing left waiting (hash ring..':count') it leaves the ring. One EXISTS a group
# tells which of its rings have clients and how many of its lists hold messages (each
# ring named 2^(r-1) times, each list 2^rings times; a group of more than four rings
# asks one EXISTS a ring). Key names other than the lists and held hashes are
# arguments: Redis checks declared keys for writing, and a worker may only read the
# weights. Where acknowledged, the message is held (tasks/broker/held.py: one HSET of
# its head, taken at ARGV[1], its holder ARGV[7+5n] (`<node>|<pid>`, "" for none), the
# key it was taken from, its ring and its client, then `[message, "", queue]`) under
# the delivery tag the worker chose (ARGV[8+5n]), in the same atomic step as its pop:
# a server that refuses writes refuses the script's first write, so it takes nothing,
# and a script that has written goes on to its end. A client's lanes are popped by one
# LMPOP. The envelope is never read here. A message larger than ARGV[2] bytes (0: no
# bound), or that is no JSON object by its first and last bytes, is popped unrecorded
# (the worker refuses it); a larger one is returned as its ends and its length alone
# (`bounded`: tasks/broker/oversized.py). Returns {list, message, tag or ""}, or nil;
# with ARGV[6+5n] "1" (a fetch woken by a doorbell), a 4th: how many lists and rings
# still hold messages. With ARGV[5+5n] "1", an idle fetch costs one EXISTS over every
# list and ring. ARGV[9+5n]: r, and r entry numbers (from 0): the lists whose
# name this worker has not seen in the set of lists with held records, KEYS[2n+1]
# (the first list where no entry acknowledges): a record written in one
# of them names it there in the same step (SADD), so no record is ever held where the
# sweep and the visibility timeout's look do not look. Then acknowledgements, each
# `<k>:<tag>`, the record of <tag> in the held hash KEYS[k], dropped first (one HDEL a
# hash). ARGV[4]: w, the doorbells of the service queues served, KEYS[2n+2..2n+1+w]
# (tasks/broker/doorbells.py): a fetch that looked through every list and ring and
# took nothing empties them (one DEL). Nothing waits in these queues at that instant,
# and a publish rings after it pushes, so a ring still there was for a message taken
# already (a woken fetch that left messages rang for the next worker, then its own
# worker took them): left, it would end the next wait at once for an empty fetch.
FETCH = Script(BOUND_LUA + r"""
local limit = tonumber(ARGV[2])
local wakes = tonumber(ARGV[4])
local n = (#KEYS - 1 - wakes) / 2
local base = 5 + 5 * n
local holder = ARGV[base + 2] or ''
local tag = ARGV[base + 3] or ''
local unnamed = {}
local names = tonumber(ARGV[base + 4]) or 0
for j = 1, names do unnamed[tonumber(ARGV[base + 4 + j])] = true end
local acks_at = base + 5 + names
local function list(i) return KEYS[2 * i + 1] end
local function arg(i, k) return ARGV[5 + 5 * i + k] end
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
-- already): recorded under `tag` where acknowledged
local function take(src, item, i, ring, client, popped)
  local recorded = tag ~= '' and arg(i, 0) == '1'
    and (limit == 0 or #item <= limit)
    and string.byte(item, 1) == 123 and string.byte(item, -1) == 125
  if recorded then
    redis.call('HSET', KEYS[2 * i + 2], tag,
               table.concat({ARGV[1], holder, src, ring or '', client or '', '[' .. item},
                            '\n') .. arg(i, 3))
    if unnamed[i] then redis.call('SADD', KEYS[2 * n + 1], list(i)) end
  end
  if not popped then redis.call('RPOP', src) end
  return {list(i), bounded(item, limit), recorded and tag or ''}
end
""" + SHARE_LUA + r"""
-- every list and ring once: an idle fetch (asked for by ARGV[base]) finds nothing in
-- any of them with one EXISTS; made only for the EXISTS that asks (not for every fetch)
local function probe()
  local keys, seen = {}, {}
  for j = 0, n - 1 do
    for _, key in ipairs({list(j), arg(j, 1)}) do
      if key ~= '' and not seen[key] then
        seen[key] = true
        keys[#keys + 1] = key
      end
    end
  end
  return keys
end
if n == 0 or (ARGV[base] == '1' and redis.call('EXISTS', unpack(probe())) == 0) then
  return nil
end
local i = 0
while i < n do
  local group = arg(i, 4)
  local last = i
  while last + 1 < n and arg(last + 1, 4) == group do last = last + 1 end
  -- the group's rings in order of their first entry; its entries without one
  local rings, of, plain = {}, {}, {}
  for j = i, last do
    local ring = arg(j, 1)
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
  -- a ring's entries, then the group's entries without a ring (its anonymous lane)
  local function serves(ring)
    local idx = {}
    for _, j in ipairs(of[ring]) do idx[#idx + 1] = j end
    for _, j in ipairs(plain) do idx[#idx + 1] = j end
    return idx
  end
  local got = nil
  if #rings == 0 then
    for _, j in ipairs(plain) do
      local item = redis.call('LINDEX', list(j), -1)
      if item then got = take(list(j), item, j) break end
    end
  elseif #rings > 4 then
    for _, ring in ipairs(rings) do  -- one EXISTS a ring
      got = share(ring, serves(ring))
      if got then break end
    end
  else
    -- one EXISTS for the group: each ring named 2^(r-1) times, each list 2^#rings
    -- times, so the count tells which rings exist and how many lists hold messages
    local keys, named = {}, {}
    for r, ring in ipairs(rings) do
      for _ = 1, 2 ^ (r - 1) do keys[#keys + 1] = ring end
    end
    local weight = 2 ^ #rings
    for j = i, last do
      if not named[list(j)] then
        named[list(j)] = true
        for _ = 1, weight do keys[#keys + 1] = list(j) end
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
    if ARGV[base + 1] == '1' then got[4] = redis.call('EXISTS', unpack(probe())) end
    return got
  end
  i = last + 1
end
if wakes > 0 then redis.call('DEL', unpack(KEYS, 2 * n + 2, 2 * n + 1 + wakes)) end
return nil
""")

Listed = tuple[str, int, bool, bool]  # a list's key, priority step, has lanes, acknowledged


def fetch_command(prefix: str, lists: Sequence[Listed], now: float, max_bytes: int,
                  probe: bool = True, woken: bool = False, holder: str = "",
                  tag: str | None = None, sep: str = SEP,
                  acks: Iterable[tuple[str, str]] = (),
                  named: Collection[str] = ()) -> list[Any]:
    """The EVALSHA of `FETCH` over `lists`, in that order (highest priority first).

    Each list: its key, its priority step, whether it has lanes, whether its consumer
    acknowledges. `prefix`: kombu's global key prefix. `probe`: first one EXISTS over
    every list and ring, an empty fetch's whole cost (a fetch likely to find a message
    leaves it out). `woken`: the reply says whether messages are left (a burst rang
    one doorbell item for all of them). `holder`: recorded in each message's held
    record ("": none). `tag`: the delivery tag a recorded message is recorded and
    delivered under (None: a new one); `sep`: kombu's separator of a queue's name and
    priority step. `acks`: (held hash, delivery tag) pairs acknowledged by the same
    call, before it fetches; those of a hash the fetch does not name are left out
    (`split_acks`). `named`: the lists the caller saw named in the set of lists with
    held records (the others are named by the record's write).
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
    the flags (the bound, the weights' hash, how many doorbells, each entry's). The
    doorbells are those of the queues whose lists have lanes. The same tuples come back
    for the same arguments while they are kept, so that a caller may keep their encoded
    form beside them (tasks/broker/wire.py). A step's entries: each list with lanes,
    served by its own ring; each list without (a worker's direct queue), served as the
    anonymous lane beside them.
    """
    keys: list[str] = []
    args: list[str] = []
    wakes: list[str] = []
    steps: list[int] = []
    for _, step, _, _ in lists:
        if step not in steps:
            steps.append(step)
    for step in steps:
        at_step = [entry for entry in lists if entry[1] == step]
        laned = [entry for entry in at_step if entry[2]]
        entries = [(name, list_ring_key(prefix + name), list_lane_key(prefix + name, ""),
                    ack) for name, _, _, ack in laned]
        entries += [(name, "", "", ack) for name, _, has_lanes, ack in at_step
                    if not has_lanes]
        for name, ring, lanes, ack in entries:
            keys += [prefix + name, list_held_key(prefix + name) if ack else prefix + name]
            queue = name.split(sep, 1)[0] if sep else name
            wake = queue_wake_key(prefix + queue)
            if ring and wake not in wakes:
                wakes.append(wake)
            args += ["1" if ack else "0", ring, lanes, f", \"\", {json.dumps(queue)}]",
                     str(step)]
    if keys:  # the set of lists with held records (a list where none is held)
        acked = any(ack for *_, ack in lists)
        keys.append(prefix + HELD_LISTS_KEY if acked else keys[0])
    return (tuple(FETCH.command([*keys, *wakes], [])),
            (str(max_bytes), LANE_WEIGHTS_KEY, str(len(wakes)), *args))


def entry_keys(parts: tuple[tuple[Any, ...], tuple[str, ...]]) -> tuple[str, ...]:
    """A fetch's entries' keys, each list then its held hash (KEYS[1..2n])."""
    entries = (len(parts[1]) - 3) // 5
    return tuple(parts[0][3:3 + 2 * entries])


def unnamed(parts: tuple[tuple[Any, ...], tuple[str, ...]],
            named: Collection[str]) -> list[str]:
    """The numbers of a fetch's entries whose list is not in `named` and is held."""
    keys = entry_keys(parts)
    return [str(i) for i in range(len(keys) // 2)
            if keys[2 * i + 1] != keys[2 * i] and keys[2 * i] not in named]


def split_acks(parts: tuple[tuple[Any, ...], tuple[str, ...]],
               acks: Iterable[tuple[str, str]]) -> tuple[list[str], list[tuple[str, str]]]:
    """`acks` (held hash, tag) as a fetch of `parts` carries them; and those it cannot.

    A fetch carries the acknowledgements of the held hashes it names (`<k>:<tag>`,
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
    """The arguments after a fetch's entries.

    Its flags, holder, tag, the entries whose list a record names in the set of lists
    with held records (`unnamed`), its acknowledgements.
    """
    return ["1" if probe else "0", "1" if woken else "0", holder,
            str(uuid.uuid4()) if tag is None else tag, str(len(unnamed)), *unnamed, *acks]
