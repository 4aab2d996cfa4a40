r"""The work a worker pool has: units waiting on its queues plus those its workers hold.

The figure KEDA scales worker pools on (deploy/kubernetes/, docs/deploy.md). Read from
the Redis broker by the Procfile `metrics` process (scripts/metrics_exporter.py serves
it as JSON at `/v1/queues/<queue>[,<queue>...]/depth`), through the broker's public
reads (tasks/broker/reads.py). Nothing here writes.

What it counts, for a set of queues, in broker messages, each one unit of work:

- **waiting**: the messages in the queues' Redis lists, every priority step included,
  and in every client's lane of each list. kombu keeps each step of a queue in a list
  of its own (`ocr`, `ocr\x06\x163`, `ocr\x06\x166`, `ocr\x06\x169`), so reading `ocr`
  alone misses every job sent with another priority than the first step; a message
  that names its client waits in that client's lane of the list instead
  (`{<list>}:lane:<client>`, tasks/broker/layout.py), so reading the lists alone
  misses them; a list's lanes are found through its ring of clients (`{<list>}:ring`).
- **running**: the messages a worker took and has not acknowledged yet (the held
  records, tasks/broker/unacked.py: the page a pool child reads, those its worker
  reserved, a retry waiting for its countdown) whose routing leads to one of the queues. Tasks are
  acknowledged late (`task_acks_late`), so a page stays counted until it is done, and
  a pool with work in hand never reads 0.

The age of each queue's oldest waiting message (`oldest_ages`) is read from the same
lists: each list's oldest message is its tail (kombu pushes left, pops right), whose
header `ocr_published` (`PUBLISHED_HEADER`, stamped by the project's transport at
publish: tasks/broker/publishing.py) says when it was sent; inside Redis, from the
message's last bytes, so only the stamps cross the network. A message without the stamp
(a client that bypasses the transport) counts from when this reader first saw it at
the tail.

A unit is a job not split yet (an image: one page; a PDF: one until a worker opens it
and puts one `ocr.pdf_page` task per page to OCR on the same engine's queue, then those
pages), one page task, one `ocr.pdf_text_chunk` task (up to OCR_STRUCTURE_CHUNK_PAGES
text-layer pages, no OCR) or a page's failure record. So the figure is the pages
waiting and running once their jobs are split, and jobs before that.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from tasks.broker import reads
from tasks.state import lua

# Counts the unacked messages of the hashes KEYS[..] by (exchange, routing key), inside
# Redis: each entry ends with `[message, exchange, routing_key]` as JSON (kombu's
# QoS.append; an unacked record's head before it), so only its last bytes are read, and
# only the counts cross the network (a message can be megabytes). Run with
# EVALSHA_RO: a Redis user that may only read (`metrics`) may run it.
_COUNT_UNACKED = lua.Script("""
local counts = {}
for k = 1, #KEYS do
  for _, tag in ipairs(redis.call('HKEYS', KEYS[k])) do
    local entry = redis.call('HGET', KEYS[k], tag)
    if entry then
      local ex, rk = string.match(string.sub(entry, -600),
                                  ',%s*"([^"]*)"%s*,%s*"([^"]*)"%s*%]%s*$')
      local pair = (ex or '') .. '\\n' .. (rk or '')
      counts[pair] = (counts[pair] or 0) + 1
    end
  end
end
local flat = {}
for pair, n in pairs(counts) do
  table.insert(flat, pair)
  table.insert(flat, n)
end
return flat
""")

# Messages waiting in each list (KEYS[2i-1]) and in the lanes of its ring (KEYS[2i],
# lane keys starting with ARGV[i]); a ring names the anonymous lane (the list) "". A
# key of another type under a list's name counts as 0.
_WAITING = lua.Script("""
local function length(key)
  local n = redis.pcall('LLEN', key)
  if type(n) == 'number' then return n end
  return 0
end
local out = {}
for i = 1, #KEYS / 2 do
  local n = length(KEYS[2 * i - 1])
  for _, client in ipairs(redis.call('LRANGE', KEYS[2 * i], 0, -1)) do
    if client ~= '' then n = n + length(ARGV[i] .. client) end
  end
  out[i] = n
end
return out
""")

# Each list's tail (KEYS[2i-1]): its stamp, "" for an empty list, or "?" and the
# delivery tag of a message without one; then the oldest stamp of the tails of the
# lanes of each list's ring (KEYS[2i], as `_WAITING`), "" for none.
# Headers and properties are the envelope's last keys: 8 KiB.
_OLDEST = lua.Script("""
local function stamp(item)
  local tail = string.sub(item, -8192)
  return string.match(tail, '"@HEADER@"%s*:%s*([0-9][0-9.eE+]*)'), tail
end
local out = {}
local lists = #KEYS / 2
for i = 1, lists do
  local item = redis.call('LINDEX', KEYS[2 * i - 1], -1)
  if not item then
    out[i] = ''
  else
    local at, tail = stamp(item)
    out[i] = at or ('?' .. (string.match(tail, '"delivery_tag"%s*:%s*"([^"]*)"') or ''))
  end
  local oldest = ''
  for _, client in ipairs(redis.call('LRANGE', KEYS[2 * i], 0, -1)) do
    local head = client ~= '' and redis.call('LINDEX', ARGV[i] .. client, -1)
    local at = head and stamp(head)
    if at and (oldest == '' or tonumber(at) < tonumber(oldest)) then oldest = at end
  end
  out[lists + i] = oldest
end
return out
""".replace("@HEADER@", reads.PUBLISHED_HEADER))


@dataclass(frozen=True)
class Depth:
    """Units of work of a set of queues: waiting in the broker and held by workers."""

    queues: tuple[str, ...]
    waiting: int
    running: int

    @property
    def value(self) -> int:
        return self.waiting + self.running

    def as_json(self) -> dict[str, Any]:
        """The endpoint's body; `value` is what a ScaledObject reads (valueLocation)."""
        return {"queue": ",".join(self.queues), "queues": list(self.queues),
                "waiting": self.waiting, "running": self.running, "value": self.value}


class QueueDepth:
    """Reads `Depth` from a Redis broker. Raises `redis.RedisError` when Redis fails."""

    def __init__(self, client: redis.Redis, transport_options: dict[str, Any]) -> None:
        """`transport_options`: the broker's (Celery's `broker_transport_options`)."""
        self._redis = client
        self._sep: str = transport_options.get("sep", reads.SEP)
        self._steps = tuple(transport_options.get("priority_steps", reads.PRIORITY_STEPS))
        # (list, delivery tag) -> when this reader first saw an unstamped tail
        self._first_seen: dict[tuple[str, str], float] = {}

    def lists(self, queue: str) -> tuple[str, ...]:
        """The Redis lists of `queue`, one per priority step."""
        return reads.queue_lists(queue, self._steps, self._sep)

    def waiting(self, queues: Sequence[str]) -> dict[str, int]:
        """Messages waiting in each queue, every priority list and lane summed."""
        wanted = tuple(dict.fromkeys(queues))
        names = [name for queue in wanted for name in self.lists(queue)]
        lengths = [int(n) for n in self._read_only(_WAITING, self._with_rings(wanted),
                                                   self._lane_prefixes(names))]
        step = len(self._steps)
        return {queue: sum(lengths[i * step:(i + 1) * step]) for i, queue in enumerate(wanted)}

    def oldest_ages(self, queues: Sequence[str], now: float | None = None) -> dict[str, float]:
        """Seconds the oldest waiting message of each queue has waited (0: none waits)."""
        now = time.time() if now is None else now
        wanted = tuple(dict.fromkeys(queues))
        lists = [(queue, name) for queue in wanted for name in self.lists(queue)]
        names = [name for _, name in lists]
        tails = self._read_only(_OLDEST, self._with_rings(wanted),
                                self._lane_prefixes(names)) if lists else []
        lanes = [_stamp(_text(raw)) for raw in tails[len(lists):]]
        tails = tails[:len(lists)]
        ages = dict.fromkeys(wanted, 0.0)
        asked = {name for _, name in lists}
        seen = {key: at for key, at in self._first_seen.items() if key[0] not in asked}
        for (queue, name), raw in zip(lists, tails, strict=True):
            tail = _text(raw)
            published = _stamp(tail)
            oldest_lane = lanes.pop(0)
            if oldest_lane is not None:
                ages[queue] = max(ages[queue], now - oldest_lane)
            if not tail:
                continue
            if published is None:  # no stamp: from when this reader first saw it
                key = (name, tail[1:])
                seen[key] = published = self._first_seen.get(key, now)
            ages[queue] = max(ages[queue], now - published)
        self._first_seen = seen
        return ages

    def depth(self, queues: Sequence[str]) -> Depth:
        wanted = tuple(dict.fromkeys(queues))
        waiting = sum(self.waiting(wanted).values())
        running = 0
        held = self._unacked_by_route()
        routes = self._routes({exchange for exchange, _ in held})
        for (exchange, routing_key), count in held.items():
            if set(routes.get((exchange, routing_key), (routing_key,))) & set(wanted):
                running += count
        return Depth(wanted, waiting, running)

    def _with_rings(self, queues: Sequence[str]) -> list[str]:
        """Each list of `queues`, then its ring."""
        return [key for queue in queues for name in self.lists(queue)
                for key in (name, reads.ring_key(name))]

    @staticmethod
    def _lane_prefixes(names: Sequence[str]) -> list[str]:
        """Each list's lanes' prefix."""
        return [reads.lane_prefix(name) for name in names]

    def _read_only(self, script: lua.Script, keys: Sequence[str],
                   args: Sequence[str] = ()) -> Any:
        """Run a read-only Lua `script` as a user that may only read (`EVALSHA_RO`)."""
        return script.run_read_only(self._redis, keys, args)

    def _unacked_by_route(self) -> dict[tuple[str, str], int]:
        flat = self._read_only(_COUNT_UNACKED, reads.unacked_hashes(self._redis))
        counts: dict[tuple[str, str], int] = {}
        for pair, count in zip(flat[::2], flat[1::2], strict=True):
            exchange, _, routing_key = _text(pair).partition("\n")
            counts[(exchange, routing_key)] = int(count)
        return counts

    def _routes(self, exchanges: Iterable[str]) -> dict[tuple[str, str], tuple[str, ...]]:
        """(exchange, routing key) -> the queues a direct exchange's bindings give.

        kombu keeps each exchange's bindings in `_kombu.binding.<exchange>` as
        `routing_key<sep>pattern<sep>queue`; Celery binds each task queue to an
        exchange of its own name with its own name as routing key. A route with no
        binding stands for the queue named by its routing key.
        """
        routes: dict[tuple[str, str], list[str]] = {}
        for exchange in exchanges:
            for member in self._redis.smembers(reads.bindings_key(exchange)):
                routing_key, _, queue = _text(member).split(self._sep, 2)
                routes.setdefault((exchange, routing_key), []).append(queue)
        return {route: tuple(queues) for route, queues in routes.items()}


def _stamp(tail: str) -> float | None:
    """A tail's publish stamp, or None (no stamp, or none that reads as a number)."""
    if not tail or tail.startswith("?"):
        return None
    try:
        return float(tail)
    except ValueError:
        return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
