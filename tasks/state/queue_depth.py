r"""The work a worker pool has: units waiting on its queues plus those its workers hold.

The figure KEDA scales worker pools on (deploy/kubernetes/, docs/deploy.md). Read from
the Redis broker by the Procfile `metrics` process (scripts/metrics_exporter.py serves
it as JSON at `/v1/queues/<queue>[,<queue>...]/depth`). Nothing here writes.

What it counts, for a set of queues, in broker messages, each one unit of work:

- **waiting**: the messages in the queues' Redis lists, every priority step included.
  kombu keeps each step of a queue in a list of its own (`ocr`, `ocr\x06\x163`,
  `ocr\x06\x166`, `ocr\x06\x169`), so reading `ocr` alone misses every job sent
  with another priority than the first step.
- **running**: the messages a worker took and has not acknowledged yet (kombu's
  `unacked` hash: the page a pool child reads, those its worker reserved, a retry
  waiting for its countdown) whose routing leads to one of the queues. Tasks are
  acknowledged late (`task_acks_late`), so a page stays counted until it is done, and
  a pool with work in hand never reads 0.

A unit is a job not split yet (an image: one page; a PDF: one until a worker opens it
and puts one `ocr.pdf_page` task per page to OCR on the same engine's queue, then those
pages), one page task, one `ocr.pdf_text_chunk` task (up to OCR_STRUCTURE_CHUNK_PAGES
text-layer pages, no OCR) or a page's failure record. So the figure is the pages
waiting and running once their jobs are split, and jobs before that.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from kombu.transport import redis as kombu_redis

# Counts the unacked messages by (exchange, routing key), inside Redis: each entry is
# `[message, exchange, routing_key]` as JSON (kombu's QoS.append), so only its last
# bytes are read, and only the counts cross the network (a message can be megabytes).
_COUNT_UNACKED = """
local counts = {}
for _, tag in ipairs(redis.call('HKEYS', KEYS[1])) do
  local entry = redis.call('HGET', KEYS[1], tag)
  if entry then
    local ex, rk = string.match(string.sub(entry, -600),
                                ',%s*"([^"]*)"%s*,%s*"([^"]*)"%s*%]%s*$')
    local pair = (ex or '') .. '\\n' .. (rk or '')
    counts[pair] = (counts[pair] or 0) + 1
  end
end
local flat = {}
for pair, n in pairs(counts) do
  table.insert(flat, pair)
  table.insert(flat, n)
end
return flat
"""


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
        channel = kombu_redis.Channel
        self._sep: str = transport_options.get("sep", channel.sep)
        steps = transport_options.get("priority_steps", kombu_redis.PRIORITY_STEPS)
        self._suffixes = tuple(f"{self._sep}{step}" if step else "" for step in steps)
        self._unacked_key: str = transport_options.get("unacked_key", channel.unacked_key)
        self._binding_prefix: str = channel.keyprefix_queue.split("%s")[0]
        self._count_unacked = client.register_script(_COUNT_UNACKED)

    def lists(self, queue: str) -> tuple[str, ...]:
        """The Redis lists of `queue`, one per priority step."""
        return tuple(queue + suffix for suffix in self._suffixes)

    def waiting(self, queues: Sequence[str]) -> dict[str, int]:
        """Messages waiting in each queue, every priority list summed."""
        wanted = tuple(dict.fromkeys(queues))
        pipe = self._redis.pipeline(transaction=False)
        for queue in wanted:
            for name in self.lists(queue):
                pipe.llen(name)
        # A key of another type under a list's name answers an error: counted as 0.
        lengths = [n if isinstance(n, int) else 0 for n in pipe.execute(raise_on_error=False)]
        step = len(self._suffixes)
        return {queue: sum(lengths[i * step:(i + 1) * step]) for i, queue in enumerate(wanted)}

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

    def _unacked_by_route(self) -> dict[tuple[str, str], int]:
        flat = self._count_unacked(keys=[self._unacked_key])
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
            for member in self._redis.smembers(self._binding_prefix + exchange):
                routing_key, _, queue = _text(member).split(self._sep, 2)
                routes.setdefault((exchange, routing_key), []).append(queue)
        return {route: tuple(queues) for route, queues in routes.items()}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
