"""Free loopback ports for the servers the tests and the benchmarks start.

Used by the process harness (devkit/harness.py) and by tests that start servers of
their own; runs in the test or benchmark process.
"""

from __future__ import annotations

import random
import socket


def free_port() -> int:
    """A loopback port no process holds now, from below the kernel's ephemeral range.

    Drawn at random and checked by binding it. A port from bind(0) could be handed out
    again, before the server that was to take it binds it, to another test's bind(0) or
    outgoing connection (both come from the ephemeral range): one of these never is.
    """
    low = _ephemeral_low()
    draw = random.SystemRandom()
    for _ in range(200):
        port = draw.randrange(max(1024, low - 12_000), low)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port below {low}")


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (32768 where it cannot be read)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ports:
            return int(ports.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768
