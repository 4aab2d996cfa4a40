"""What the broker holds: every held record, of every list's hash."""

from __future__ import annotations

from typing import Any

from tasks.broker.unacked import unacked_hashes


def held_items(client: Any) -> dict[bytes, bytes]:
    """Every held record, tag -> value, of every hash of held records."""
    found: dict[bytes, bytes] = {}
    for key in unacked_hashes(client):
        found.update(client.hgetall(key))
    return found


def held_count(client: Any) -> int:
    """How many messages are held (taken, not acknowledged)."""
    return sum(int(client.hlen(key)) for key in unacked_hashes(client))
