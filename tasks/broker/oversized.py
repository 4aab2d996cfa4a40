"""A message too long for a worker to hold: Redis hands over its ends and its length only.

Runs on the Redis server (`BOUND_LUA`, part of each script that pops a message for a
worker: the fetch, `fetch_script.FETCH`, and `POP`, kombu's basic_get) and in the worker parent
(tasks/broker/fetching.py reads the scripts' replies with `received`;
tasks/broker/refusals.py refuses by `reply_size`). A message longer than the worker's
bound (`ocr_max_message_bytes`; 0: none) is popped by the script and never sent whole:
its reply is its first and last `ENDS` bytes and its real length, which the worker
reads as an `OversizedReply`, refuses by that length (`input_too_large`) and finds the
task id in (its headers and properties end the envelope, its id may open it). So the
worker parent never holds such a message, whatever bound Redis itself keeps.
"""

from __future__ import annotations

from typing import Any

from tasks.state.lua import Script

ENDS = 65536          # bytes kept from each end of an oversized message

# `bounded(item, limit)`: `item` as a script returns it to a worker: whole within `limit`
# bytes (0: no bound), else {its first ENDS bytes, its last ENDS bytes, its length}.
BOUND_LUA = f"""
local function bounded(item, limit)
  if limit == 0 or #item <= limit then return item end
  return {{string.sub(item, 1, {ENDS}), string.sub(item, -{ENDS}), #item}}
end
"""

# Pops the tail of the list KEYS[1], as kombu's basic_get (RPOP) does, bounded by
# ARGV[1] bytes (0: none). Returns the message (or its ends and length), or nil.
POP = Script(BOUND_LUA + """
local item = redis.call('RPOP', KEYS[1])
if not item then return nil end
return bounded(item, tonumber(ARGV[1]))
""")


def pop_command(list_key: str, max_bytes: int) -> list[Any]:
    """The EVALSHA of `POP` over `list_key` (named in full), bounded by `max_bytes`."""
    return POP.command([list_key], [str(int(max_bytes or 0))])


class OversizedReply(bytes):
    """The ends of a message too long to hold: first ENDS bytes, a newline, last ENDS."""

    size: int

    def __new__(cls, head: bytes, tail: bytes, size: int) -> OversizedReply:
        reply = super().__new__(cls, head + b"\n" + tail)
        reply.size = size
        return reply


def received(reply: Any) -> Any:
    """A message as a bounding script returned it: its bytes, or an `OversizedReply`.

    None (nothing popped) stays None.
    """
    if isinstance(reply, list):
        head, tail, size = reply
        return OversizedReply(bytes(head), bytes(tail), int(size))
    return reply


def reply_size(raw: bytes) -> int:
    """The real length of a message: `size` of an `OversizedReply`, else its length."""
    return raw.size if isinstance(raw, OversizedReply) else len(raw)
