"""redis-py's RESP2 parser with a bound on bulk replies (worker parent, broker connections).

kombu's Redis transport pops a message with BRPOP and redis-py reads the reply whole,
copying it twice on the way (a 400 MB message peaked the worker parent at 1.3 GB),
before the transport can refuse it by its length. With this parser a bulk reply longer
than `max_bulk` is read off the socket in pieces of at most `PIECE` bytes and dropped as
it comes: the reply is an `OversizedReply`, its first and last `ENDS` bytes (where the
transport looks for the task id) with its real length in `size`. Replies within the
bound are parsed exactly as redis-py parses them, in RESP2 or RESP3 (redis-py's
default) as the connection speaks.

This module leans on redis-py's `SocketBuffer` internals (`_buffer`, `_read_from_socket`,
`purge`); tests/queue/test_big_messages.py fails if they change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from redis._parsers import _RESP2Parser, _RESP3Parser
from redis._parsers.socket import SENTINEL, SocketBuffer
from redis.connection import DEFAULT_RESP_VERSION

ENDS = 65536          # bytes kept from each end of an oversized reply
PIECE = 2**20         # most bytes buffered at once while an oversized reply is dropped


class OversizedReply(bytes):
    """The ends of a bulk reply too long to hold: first ENDS bytes, a newline, last ENDS."""

    size: int

    def __new__(cls, head: bytes, tail: bytes, size: int) -> OversizedReply:
        reply = super().__new__(cls, head + b"\n" + tail)
        reply.size = size
        return reply


def reply_size(raw: bytes) -> int:
    """The real length of a reply: `size` of an `OversizedReply`, else its length."""
    return raw.size if isinstance(raw, OversizedReply) else len(raw)


class BoundedBuffer(SocketBuffer):
    """redis-py's socket buffer; `read` drops a bulk reply longer than `max_bulk`."""

    def __init__(self, sock: Any, socket_read_size: int, socket_timeout: Any,
                 max_bulk: int) -> None:
        super().__init__(sock, socket_read_size, socket_timeout)
        self.max_bulk = max_bulk

    def read(self, length: int, timeout: Any = SENTINEL) -> bytes:
        if length <= self.max_bulk:
            if timeout is SENTINEL:  # redis-py 6's `read` takes no timeout (7 on: one)
                return super().read(length)
            return super().read(length, timeout=timeout)
        return self._drop(length, timeout)

    def _drop(self, length: int, timeout: Any) -> OversizedReply:
        """Read `length` bytes and their CRLF in pieces, keeping only the two ends."""
        left = length + 2
        head = bytearray()
        tail = b""
        while left:
            waiting = self.unread_bytes()
            if not waiting:
                self.purge()  # everything read so far is consumed: empty the buffer
                self._read_from_socket(length=min(left, PIECE), timeout=timeout)
                waiting = self.unread_bytes()
            piece = self._buffer.read(min(left, waiting, PIECE))
            left -= len(piece)
            if len(head) < ENDS:
                head += piece[:ENDS - len(head)]
            tail = (tail + piece)[-(ENDS + 2):]
        return OversizedReply(bytes(head[:length]), tail[:-2], length)


class _BoundedParsing:
    """A parser reading through a `BoundedBuffer`; mixed into redis-py's RESP parsers."""

    max_bulk: int
    _buffer: SocketBuffer | None
    _sock: Any
    socket_read_size: int

    def on_connect(self, connection: Any) -> None:
        super().on_connect(connection)  # type: ignore[misc]
        self._buffer = BoundedBuffer(self._sock, self.socket_read_size,
                                     connection.socket_timeout, self.max_bulk)


class BoundedResp2Parser(_BoundedParsing, _RESP2Parser):
    """RESP2 (`protocol=2`)."""


class BoundedResp3Parser(_BoundedParsing, _RESP3Parser):
    """RESP3, redis-py's default protocol."""


def speaks_resp3(protocol: Any) -> bool:
    """Whether a connection given `protocol` speaks RESP3 (None: redis-py's default)."""
    if protocol is None or protocol is SENTINEL:
        protocol = DEFAULT_RESP_VERSION
    try:
        return int(protocol) == 3
    except (TypeError, ValueError):
        return False


def bounded_parser(protocol: Any, max_bulk: int) -> Callable[..., Any]:
    """The `parser_class` of a pool whose connections speak `protocol` (None: default)."""
    base = BoundedResp3Parser if speaks_resp3(protocol) else BoundedResp2Parser

    def make(socket_read_size: int) -> Any:
        parser = base(socket_read_size)
        parser.max_bulk = max_bulk
        return parser

    return make
