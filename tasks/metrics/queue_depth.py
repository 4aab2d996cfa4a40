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
  reserved, a retry waiting for its countdown), counted in the hash of the list each
  was taken from (`{<list>}:held`) by its length: the `metrics` user reads no message
  (tasks/redis_users.py). Tasks are acknowledged late (`task_acks_late`), so a page
  stays counted until it is done, and a pool with work in hand never reads 0.

The age of each queue's oldest waiting message (`oldest_ages`) is read from the same
lists: each list's oldest message is its tail (kombu pushes left, pops right), whose
header `ocr_published` (`PUBLISHED_HEADER`, stamped by the project's transport at
publish: tasks/broker/publishing.py) says when it was sent; inside Redis, from the
message's last bytes, so only the stamps cross the network. A message without the stamp
(a client that bypasses the transport) counts from when this reader first saw it at
the tail. Only a consumer may read a message: a worker parent looks (`record_oldest`,
one worker of the fleet each sweep interval, tasks/queue/presence.py) and stores when
each queue's oldest waiting message was sent; the exporter, whose Redis user only
counts the queues, reads that (`recorded_ages`).

A unit is a job not split yet (an image: one page; a PDF: one until a worker opens it
and puts one `ocr.pdf_page` task per page to OCR on the same engine's queue, then those
pages), one page task, one `ocr.pdf_text_chunk` task (up to OCR_STRUCTURE_CHUNK_PAGES
text-layer pages, no OCR) or a page's failure record. So the figure is the pages
waiting and running once their jobs are split, and jobs before that.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from tasks.broker import reads
from tasks.state import lua
from tasks.state.keys import METRICS_OLDEST_KEY

# Messages waiting in each list (ARGV[2i-1]) and in the lanes of its ring (KEYS[i],
# lane keys starting with ARGV[2i]); a ring names the anonymous lane (the list) "". A
# key of another type under a list's name counts as 0. The lists and lanes are named in
# ARGV: Redis asks read access of a script's KEYS, and the `metrics` user may count
# them but not read them (tasks/redis_users.py).
_WAITING = lua.Script("""
local function length(key)
  local n = redis.pcall('LLEN', key)
  if type(n) == 'number' then return n end
  return 0
end
local out = {}
for i = 1, #KEYS do
  local n = length(ARGV[2 * i - 1])
  for _, client in ipairs(redis.call('LRANGE', KEYS[i], 0, -1)) do
    if client ~= '' then n = n + length(ARGV[2 * i] .. client) end
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
        self._recorded = False  # whether `record_oldest` left any queue's stamp
        self._seen_waiting: dict[str, float] = {}  # queue -> first seen waiting, unrecorded

    def lists(self, queue: str) -> tuple[str, ...]:
        """The Redis lists of `queue`, one per priority step."""
        return reads.queue_lists(queue, self._steps, self._sep)

    def waiting(self, queues: Sequence[str]) -> dict[str, int]:
        """Messages waiting in each queue, every priority list and lane summed."""
        wanted = tuple(dict.fromkeys(queues))
        names = [name for queue in wanted for name in self.lists(queue)]
        lengths = [int(n) for n in self._read_only(
            _WAITING, [reads.ring_key(name) for name in names],
            [arg for name in names for arg in (name, reads.lane_prefix(name))])]
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

    def record_oldest(self, store: redis.Redis, queues: Sequence[str], ttl: int,
                      now: float | None = None) -> None:
        """Store when the oldest waiting message of each of `queues` was sent (a consumer).

        In `store`'s METRICS_OLDEST_KEY (queue -> epoch seconds); one EXISTS when
        nothing waits.
        """
        now = time.time() if now is None else now
        wanted = tuple(dict.fromkeys(queues))
        keys = self._with_rings(wanted)
        ages = self.oldest_ages(wanted, now) if keys and self._redis.exists(*keys) else {}
        since: dict[Any, Any] = {q: f"{now - age:.3f}" for q, age in ages.items() if age > 0}
        if not since and not self._recorded:
            return
        pipe = store.pipeline(transaction=False)
        pipe.hdel(METRICS_OLDEST_KEY, *wanted)
        if since:
            pipe.hset(METRICS_OLDEST_KEY, mapping=since)
            pipe.expire(METRICS_OLDEST_KEY, ttl)
        pipe.execute()
        self._recorded = bool(since)

    def recorded_ages(self, store: redis.Redis, queues: Sequence[str],
                      now: float | None = None) -> dict[str, float]:
        """Seconds each queue's oldest waiting message has waited, as a consumer last looked.

        0 where none waits now; where one waits and no consumer recorded it, from when
        this reader first saw the queue waiting.
        """
        now = time.time() if now is None else now
        wanted = tuple(dict.fromkeys(queues))
        waiting = self.waiting(wanted)
        recorded = store.hmget(METRICS_OLDEST_KEY, wanted) if wanted else []
        ages: dict[str, float] = {}
        for queue, raw in zip(wanted, recorded, strict=True):
            if not waiting[queue]:
                self._seen_waiting.pop(queue, None)
                ages[queue] = 0.0
                continue
            since = float(raw) if raw else self._seen_waiting.setdefault(queue, now)
            ages[queue] = max(0.0, now - since)
        return ages

    def depth(self, queues: Sequence[str]) -> Depth:
        """`queues`' messages waiting, and those held by workers (running or reserved).

        The held ones are counted by each list's hash of them (HLEN): a message held
        is in the hash of the list it was taken from, and the count reads none of them.
        """
        wanted = tuple(dict.fromkeys(queues))
        waiting = sum(self.waiting(wanted).values())
        with self._redis.pipeline(transaction=False) as pipe:
            for queue in wanted:
                for name in self.lists(queue):
                    pipe.hlen(reads.held_key(name))
            running = sum(int(n) for n in pipe.execute())
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
