r"""A held message's one record, and the scripts that read its head on the server.

Runs in the worker parent, the one process that consumes (the fetch writes the record,
tasks/broker/fetch_script.py; acknowledgements and restores drop it, tasks/broker/qos.py;
the sweep of dead holders reads it, tasks/broker/holders.py), and in the metrics
exporter, which counts the records (tasks/metrics/queue_depth.py).

A message a worker took and has not acknowledged is held in the hash of the list it
was taken from, `{<list>}:held` (tasks/broker/layout.py: in the list's own hash slot),
under the delivery tag the worker chose, in one value: five head lines, then kombu's
record of it,

    <when taken, epoch s>\n<node>|<pid>\n<key taken from>\n<ring>\n<client>\n[message, "", queue]

(holder, key, ring and client empty where there is none: a message `basic_get` took, a
consumer that names no holder). The fetch writes it with one HSET, an acknowledgement
drops it with one HDEL. Scripts read the head with one Lua pattern (`HEAD_LUA`), never
JSON, and send back delivery tags, never a message: the visibility timeout's look
(`VISIBLE`) and the holders' sweep. A restore reads the value whole (HGET): only
messages within the worker's bound are held (the fetch holds none larger, and
`QoS.append` only a message the channel's checks took).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tasks.broker.layout import HELD_LISTS_KEY, list_held_key
from tasks.state.lua import Script

HEAD_LINES = 5

# `head(value)`: when taken (a string), holder, key taken from, ring, client, and the
# position where kombu's record starts; nil for a value without the five lines.
HEAD_LUA = r"""
local function head(value)
  return string.match(value, '^([^\n]*)\n([^\n]*)\n([^\n]*)\n([^\n]*)\n([^\n]*)\n()')
end
"""


def value(taken: float, record: str, holder: str = "", src: str = "", ring: str = "",
          client: str = "") -> str:
    """The held value of `record` (kombu's JSON `[message, exchange, routing key]`)."""
    return "\n".join((repr(taken), holder, src, ring, client, record))


def unacked_hashes(client: Any) -> list[str]:
    """Every hash of unacked records: each list's that a consumer told of.

    One SMEMBERS of `HELD_LISTS_KEY`.
    """
    names = sorted(n.decode() if isinstance(n, bytes) else str(n)
                   for n in client.smembers(HELD_LISTS_KEY))
    return [list_held_key(name) for name in names]


@dataclass(frozen=True)
class UnackedRecord:
    """One held value, read (`parse`)."""

    taken: float
    holder: str
    src: str
    ring: str
    client: str
    record: bytes


def parse(raw: bytes) -> UnackedRecord | None:
    """The head and record of a held value; None for one without the five head lines."""
    parts = raw.split(b"\n", HEAD_LINES)
    if len(parts) <= HEAD_LINES:
        return None
    try:
        taken = float(parts[0])
    except ValueError:
        return None
    holder, src, ring, client = (p.decode(errors="replace") for p in parts[1:HEAD_LINES])
    return UnackedRecord(taken, holder, src, ring, client, parts[HEAD_LINES])


# The messages taken before ARGV[1] (epoch s), ARGV[2] of them at most (0: every one),
# of the unacked hashes KEYS (their heads read). Returns a flat list: each one's key
# number k (KEYS[k]), its tag.
VISIBLE = Script(HEAD_LUA + r"""
local ceiling, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local past, found = {}, 0
for k = 1, #KEYS do
  local flat = redis.call('HGETALL', KEYS[k])
  for j = 1, #flat, 2 do
    if limit > 0 and found >= limit then return past end
    local taken = head(flat[j + 1])
    if taken and (tonumber(taken) or 0) < ceiling then
      past[#past + 1] = k
      past[#past + 1] = flat[j]
      found = found + 1
    end
  end
end
return past
""")

# Drops the holder of each message ARGV[1..] held in KEYS[1] (a warm stop: its tasks,
# still running, are left to the visibility timeout, never swept). Returns how many.
UNHOLD = Script(HEAD_LUA + r"""
local n = 0
for _, tag in ipairs(ARGV) do
  local held = redis.call('HGET', KEYS[1], tag)
  local taken, who, src, ring, client, at = nil, nil, nil, nil, nil, nil
  if held then taken, who, src, ring, client, at = head(held) end
  if taken and who ~= '' then
    redis.call('HSET', KEYS[1], tag, table.concat({taken, '', src, ring, client,
                                                   string.sub(held, at)}, '\n'))
    n = n + 1
  end
end
return n
""")
