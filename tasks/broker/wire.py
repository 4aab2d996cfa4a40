"""A fetch's bytes on the wire: what every fetch repeats, encoded once per channel.

Runs in the worker parent (tasks/broker/fetching.py). A worker's fetch names the same
keys and lane arguments at every poll (tasks/broker/fetch_script.py, `fetch_parts`); only the
time, the flags, the delivery tag and the acknowledgements change. redis-py's packer
encodes every argument of a command each time it is sent; here the RESP form of the
repeated parts is kept (tasks/state/resp.py) and the command goes out whole with
`send_packed_command`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tasks.state.resp import resp


class FetchBytes:
    """The RESP bytes of a channel's fetches, their repeated parts kept encoded."""

    def __init__(self) -> None:
        self._parts: tuple[tuple[Any, ...], tuple[str, ...]] | None = None
        self._head = self._lanes = b""

    def fetch(self, encoder: Any, parts: tuple[tuple[Any, ...], tuple[str, ...]],
              now: str, tail: Sequence[str]) -> bytes:
        """`[*head, now, *lane arguments, *tail]` as one RESP command (`parts`: the two)."""
        head, lanes = parts
        if parts is not self._parts:  # the lists consumed changed (or the first fetch)
            self._parts, self._head, self._lanes = parts, resp(encoder, head), resp(encoder, lanes)
        count = len(head) + 1 + len(lanes) + len(tail)
        return b"".join((b"*%d\r\n" % count, self._head, resp(encoder, (now,)), self._lanes,
                         resp(encoder, tail)))

