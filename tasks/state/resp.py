"""Redis commands as RESP bytes, for callers that keep parts of a command packed.

A command sent many times with mostly the same arguments (the broker's fetch, a waiting
client's look at its jobs' notices) keeps those parts packed and sends the whole with
redis-py's `send_packed_command`, instead of having redis-py pack every argument at each
send. Pure: runs in whichever process imports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def resp(encoder: Any, args: Sequence[Any]) -> bytes:
    """The RESP bulk strings of `args`, each encoded as redis-py's `encoder` does."""
    out = []
    for arg in args:
        data = encoder.encode(arg)
        out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(out)
