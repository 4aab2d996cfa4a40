"""Who holds each delivered message on a Redis broker; the sweep of dead holders' messages.

Runs in the worker parent: the one process that consumes (the fetch names it as the
holder) and that writes the node's presence record (tasks/queue/presence.py, whose
heartbeat drives the sweep). Clients and RabbitMQ workers never use it.

The fetch (tasks/broker/fetch_script.py) holds each message it takes in one record
whose head names its holder, `<node>|<parent pid>` (tasks/broker/unacked.py). Every
path that drops the record (ack, reject,
restore, the visibility timeout's restore: tasks/broker/qos.py) drops the
holder with it.

A holder is alive while its node's presence record names its pid and was refreshed
within OCR_WORKER_LIVENESS_SECONDS (tasks/state/liveness.py, `live_holders`). Each
live worker parent looks every
third of that window whether the sweep is due: the first to take the lock
(`unacked_sweep`: its random token, SET NX PX in `TAKE`, one command for the
others; it lapses, never deleted, so one sweep runs per interval; a value without
an expiry is none of a sweeper's and is taken over) reads the presence records
and runs `SWEEP`, which puts every message of a dead holder back at the front
of the lane (or list) it was taken from, and drops its record, in one atomic step
(it reads the records' heads on the server and returns their delivery tags: no
message leaves Redis). A holder whose node has no record at all counts as
dead once its message was taken more than the window ago (a worker's first fetch may
come just before its first record is visible). The visibility timeout stays the
backstop for a live worker that stops acknowledging. A graceful stop (warm shutdown)
drops the holders of the tasks still running at the channel's close: those have the
visibility timeout alone, and the stopping worker finishes them.
"""

from __future__ import annotations

import logging
import os
import time
import uuid

import redis

from tasks.broker.layout import SWEEP_LOCK_KEY
from tasks.broker.unacked import HEAD_LUA, unacked_hashes
from tasks.state.liveness import WorkerPresence
from tasks.state.lua import Script

log = logging.getLogger(__name__)

# A sweep is due up to SLACK s early (it runs on a heartbeat), and its lock lapses
# SLACK s before the next is due: one sweep per interval, on the heartbeat nearest it.
SLACK = 1.0

_node: str | None = None


def set_node(node: str | None) -> None:
    """The node name this worker parent's fetches record as holder (None: record none)."""
    global _node
    _node = node


def holder() -> str:
    """`<node>|<pid>` of this process, or "" where no node is set (nothing is recorded)."""
    return f"{_node}|{os.getpid()}" if _node else ""


# KEYS: the hashes of unacked records (tasks/broker/unacked.py, each list's).
# ARGV[1]: the cutoff (a message taken before it whose node has no presence record is
# swept); ARGV[2..]: "L<node>|<pid>" a live holder, "K<node>" a node with a record.
# Returns the delivery tags put back. A unacked record without a holder is left to the
# visibility timeout.
SWEEP = Script(HEAD_LUA + r"""
local live, known = {}, {}
for i = 2, #ARGV do
  local kind, name = string.sub(ARGV[i], 1, 1), string.sub(ARGV[i], 2)
  if kind == 'L' then live[name] = true else known[name] = true end
end
local cutoff = tonumber(ARGV[1])
local back = {}
-- whether `who` is dead (`taken`: when its message was taken)
local function dead(who, node, taken)
  if live[who] or live[node .. '|*'] then return false end
  return known[node] or (tonumber(taken) or 0) < cutoff
end
-- kombu's record's message back at the front of `src` (its client back in the ring)
local function put_back(tag, record, at, src, ring, client)
  local item = string.match(record, '^%[(.*), "[^"\\]*", "[^"\\]*"%]$', at)
  if not item then return false end
  redis.call('RPUSH', src, item)
  if client ~= '' and ring ~= '' then
    if redis.call('HINCRBY', ring .. ':count', client, 1) == 1
        and not redis.call('LPOS', ring, client) then
      redis.call('RPUSH', ring, client)
    end
  end
  back[#back + 1] = tag
  return true
end
for k = 1, #KEYS do
  local held = redis.call('HGETALL', KEYS[k])
  for j = 1, #held, 2 do
    local tag, value = held[j], held[j + 1]
    local taken, who, src, ring, client, at = head(value)
    local node = who and string.match(who, '^(.*)|[^|]*$')
    if node and src ~= '' and dead(who, node, taken)
        and put_back(tag, value, at, src, ring, client) then
      redis.call('HDEL', KEYS[k], tag)
    end
  end
end
return back
""")


# KEYS[1]: the sweep's lock. ARGV[1]: the taker's token, ARGV[2]: how long (ms). Taken
# when free, or when it holds a value without an expiry (every sweeper sets one: such
# a value would stop every sweep for good). Returns 1 when taken.
TAKE = Script("""
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('PTTL', KEYS[1]) == -1 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
""")


class HolderSweep:
    """The worker parent's sweep of dead holders' messages (one per process).

    `broker`: a client of the broker's Redis; `presence`: of the Redis that keeps the
    presence records (often the same server). `prefix`: kombu's global key prefix.
    """

    def __init__(self, broker: redis.Redis, presence: redis.Redis, window: float,
                 presence_ttl: float, prefix: str = "") -> None:
        self._broker = broker
        self._presence = WorkerPresence(presence, ttl=presence_ttl)
        self.window = window
        self.interval = max(window / 3, 2 * SLACK)
        self._lock = prefix + SWEEP_LOCK_KEY
        self._token = uuid.uuid4().hex
        self._next = time.monotonic() + self.interval
        self.took = False  # whether the last tick took the lock: this interval's sweeper

    def tick(self, now: float | None = None) -> list[str]:
        """Sweep when due and this process takes the lock; the tags put back."""
        self.took = False
        if time.monotonic() < self._next - SLACK:  # heartbeats come a few seconds apart
            return []
        self._next = time.monotonic() + self.interval
        try:
            return self.sweep(now)
        except redis.RedisError as exc:
            log.warning("dead holders not swept: %s", type(exc).__name__)
            return []

    def sweep(self, now: float | None = None) -> list[str]:
        """One sweep, if no other worker swept within the interval."""
        self.took = bool(TAKE.run(self._broker, [self._lock],
                                  [self._token, int((self.interval - SLACK) * 1000)]))
        if not self.took:
            return []
        keys = unacked_hashes(self._broker)
        if not keys or not self._broker.exists(*keys):  # nothing held (an idle fleet)
            return []
        now = time.time() if now is None else now
        live, known = self._presence.live_holders(now, self.window)
        back = [t.decode() if isinstance(t, bytes) else str(t) for t in SWEEP.run(
            self._broker, keys, [repr(now - self.window), *(f"L{holder}" for holder in live),
                                 *(f"K{node}" for node in known)])]
        if back:
            log.warning("%d message(s) of dead workers put back in their queues "
                        "(no heartbeat for %g s): %s", len(back), self.window,
                        ", ".join(back[:10]))
        return back
