"""Bindings of expiring queues: declared with a deadline, kept by their consumers, swept.

Runs in every process that uses the Redis broker: a binding's declare in any process
(tasks/broker/channel.py's `_queue_bind`); its refresh and the sweep in a process
that consumes an expiring queue (the worker parent's mailbox, Flower's and the
exporter's event queues, `celery inspect`'s reply queue), from the poller's turns
(tasks/broker/poller.py: Celery's event loop, or `drain_events`).

The rules (kombu 5.7's Redis transport's, kept per binding where kombu keeps them per
exchange table, so that one live event consumer does not keep its dead peers' bindings):

- A queue declared without `x-expires` (the service's `ocr*` queues, a worker's own
  queue): its binding is permanent, in `_kombu.binding.<exchange>` and in kombu 5.7's
  `_kombu.binding_permanent.<exchange>`. No sweep removes a binding listed there.
- A queue declared with `x-expires` (Celery's event queues, `celeryev.<uuid>`; its
  mailboxes and reply queues, `*.celery.pidbox`, with `control_queue_expires`): its
  binding goes into the table alone, with a deadline its TTL from now by the server's
  clock (x-expires times BINDING_EXPIRES_FACTOR, never under the channel's
  `ocr_binding_min_ttl`, an hour: a worker whose loop stalls on a long task keeps its
  routing), in `_kombu.binding_expiry` (`layout.BINDING_EXPIRY_KEY`: sorted set,
  `[exchange, member]` as JSON -> ms). kombu 5.7's `_kombu.binding_deadlines`
  (exchange -> ms) is raised to it too, so that a stock kombu client's sweep, which
  drops whole tables, never drops one that a consumer of ours keeps.
- A channel that consumes such a queue raises its bindings' deadlines every third of
  their TTL (one script a binding, in one pipeline), adding a binding swept meanwhile
  back. A deadline is only ever raised (ZADD GT).
- The sweep: at most every SWEEP_INTERVAL s in a process that consumes an expiring
  queue, one script: up to SWEEP_LIMIT bindings whose deadline has passed, each taken
  out of its table unless listed permanent, and their deadlines dropped. So a dead
  consumer's binding goes within its TTL and a sweep interval of its last refresh
  (while anyone consumes an expiring queue; else at the next one's first sweep).
- Nothing on a publish's path: a publish reads the table as before. A dead queue's
  lists expire by the PEXPIRE each publish gave them, once no publish reaches them.
- Bindings of stock kombu clients have no deadline in `_kombu.binding_expiry`: kombu's
  own sweep (of whole tables without a permanent binding) handles them.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import redis.exceptions

from tasks.broker import layout
from tasks.state import lua

log = logging.getLogger(__name__)

BINDING_EXPIRES_FACTOR = 2     # a binding's TTL: its queue's x-expires times this...
MIN_BINDING_TTL_MS = 3_600_000  # ...and never under this (the channel's default)
SWEEP_INTERVAL = 60.0          # seconds between one process's sweeps
SWEEP_LIMIT = 100              # bindings looked at by one sweep

_NOW_MS = """local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
"""

# KEYS: the exchange's table, BINDING_EXPIRY_KEY, kombu's deadlines; ARGV: the member,
# the binding as JSON, the exchange, the TTL in ms.
BIND = lua.Script(_NOW_MS + """redis.call('SADD', KEYS[1], ARGV[1])
local deadline = ms + tonumber(ARGV[4])
redis.call('ZADD', KEYS[2], 'GT', deadline, ARGV[2])
redis.call('ZADD', KEYS[3], 'GT', deadline, ARGV[3])
""")

# KEYS: BINDING_EXPIRY_KEY; ARGV: the tables' and the permanent sets' key prefixes, the
# most bindings to look at. Returns how many were taken out of their tables.
SWEEP = lua.Script(_NOW_MS + """local swept = 0
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ms, 'LIMIT', 0, tonumber(ARGV[3]))
for _, item in ipairs(due) do
    local binding = cjson.decode(item)
    if redis.call('SISMEMBER', ARGV[2] .. binding[1], binding[2]) == 0 then
        swept = swept + redis.call('SREM', ARGV[1] .. binding[1], binding[2])
    end
    redis.call('ZREM', KEYS[1], item)
end
return swept
""")


def ttl_ms(expires_ms: int, min_ttl_ms: int) -> int:
    """The TTL of the binding of a queue whose x-expires is `expires_ms`."""
    return max(int(expires_ms) * BINDING_EXPIRES_FACTOR, int(min_ttl_ms))


def member(sep: str, routing_key: str | None, pattern: str | None, queue: str) -> str:
    """A binding as an exchange's table holds it: routing key, pattern, queue."""
    return sep.join([routing_key or "", pattern or "", queue or ""])


def bind_command(table: str, exchange: str, entry: str, ttl: int) -> list[Any]:
    """The script that adds `entry` to `table` (`exchange`'s) with a deadline `ttl` ms out."""
    binding = json.dumps([exchange, entry], separators=(",", ":"))
    return BIND.command([table, layout.BINDING_EXPIRY_KEY, layout.KOMBU_DEADLINES_KEY],
                        [entry, binding, exchange, ttl])


def bind(channel: Any, exchange: str, binding: str, queue: str) -> None:
    """Bind `queue` (declared with x-expires on `channel`) by `binding`, with a deadline."""
    ttl = ttl_ms(channel._expires[queue], channel.ocr_binding_min_ttl)
    lua.run(channel.commands, bind_command(channel.keyprefix_queue % exchange,
                                           exchange, binding, ttl))


def sweep(client: Any, limit: int = SWEEP_LIMIT) -> int:
    """Take the bindings whose deadline passed out of their tables; how many were."""
    return int(SWEEP.run(client, [layout.BINDING_EXPIRY_KEY],
                         [layout.BINDING_PREFIX, layout.BINDING_PERMANENT_PREFIX, limit]))


def _expiring(channel: Any) -> dict[str, int]:
    """The queues `channel` consumes that were declared with x-expires -> their TTL."""
    return {queue: ttl_ms(channel._expires[queue], channel.ocr_binding_min_ttl)
            for queue in set(channel._active_queues) if queue in channel._expires}


def refresh(channel: Any, queues: dict[str, int]) -> None:
    """Raise the deadlines of the bindings of `queues` (-> TTL) on `channel`."""
    with channel.commands.pipeline(transaction=False) as pipe:
        for queue, ttl in queues.items():
            for exchange, routing_key, arguments in channel.state.queue_bindings(queue):
                _, pattern, _ = channel.typeof(exchange).prepare_bind(
                    queue, exchange, routing_key, arguments)
                lua.queue(pipe, bind_command(
                    channel.keyprefix_queue % exchange, exchange,
                    member(channel.sep, routing_key, pattern, queue), ttl))
        lua.execute(pipe)


class Keeper:
    """One process's refreshes of its consumed bindings, and its sweep of dead ones."""

    def __init__(self) -> None:
        self.swept_at = float("-inf")

    def keep(self, channels: Iterable[Any], now: float | None = None) -> None:
        """Refresh each channel's due bindings; sweep when due. Errors wait a turn."""
        now = time.monotonic() if now is None else now
        sweeper: Any = None
        for channel in channels:
            queues = _expiring(channel)
            if not queues:
                continue
            sweeper = sweeper or channel
            every = min(queues.values()) / 1000 / 3
            # Refreshed first, so that a sweep never drops this process's own. A failed
            # refresh is tried again a sweep interval later, a failed sweep at the next.
            if now - getattr(channel, "_bindings_refreshed_at", float("-inf")) >= every:
                done = _guarded(channel, partial(refresh, channel, queues))
                channel._bindings_refreshed_at = \
                    now if done else now - every + min(every, SWEEP_INTERVAL)
        if sweeper is not None and now - self.swept_at >= SWEEP_INTERVAL:
            _guarded(sweeper, partial(sweep, sweeper.commands))
            self.swept_at = now


def _guarded(channel: Any, step: Callable[[], Any]) -> bool:
    """Run `step`; False where Redis was lost or refused it (consuming goes on)."""
    try:
        step()
    except channel.connection_errors:
        log.debug("bindings' expiry: connection lost, next turn", exc_info=True)
        return False
    except redis.exceptions.ResponseError:
        # A refused script (a full noeviction server, a user without the right).
        log.warning("bindings' expiry: Redis refused, next turn", exc_info=True)
        return False
    return True
