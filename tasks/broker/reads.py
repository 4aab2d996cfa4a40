"""What the broker lets other rooms read: the keys its figures are counted from.

The metrics room (tasks/metrics/: queue depth, fleet health) reads the Redis broker
through this module alone; the key names stay the broker's own (`layout`, `unacked`).
Nothing here writes.
"""

from __future__ import annotations

from typing import Any

from tasks.broker import layout, unacked
from tasks.broker.publishing import PUBLISHED_HEADER

__all__ = ["PRIORITY_STEPS", "PUBLISHED_HEADER", "SEP", "bindings_key", "dead_letters",
           "unacked_hashes", "lane_prefix", "priority_suffixes", "queue_lists", "ring_key"]

SEP = layout.SEP
PRIORITY_STEPS = layout.PRIORITY_STEPS
queue_lists = layout.queue_lists
priority_suffixes = layout.priority_suffixes
unacked_hashes = unacked.unacked_hashes


def ring_key(list_key: str) -> str:
    """The list's ring: the clients with a lane of it, "" for the list itself."""
    return layout.list_ring_key(list_key)


def lane_prefix(list_key: str) -> str:
    """The start of each lane's key of the list; a client's name ends it."""
    return layout.list_lane_key(list_key, "")


def bindings_key(exchange: str) -> str:
    """The set of an exchange's bindings (kombu's `routing_key<sep>pattern<sep>queue`)."""
    return layout.BINDING_PREFIX + exchange


def dead_letters(client: Any) -> tuple[int, int]:
    """Refused messages kept (a capped list), and how many were ever refused."""
    kept = int(client.llen(layout.DEAD_LETTER_KEY))
    return kept, int(client.get(layout.DEAD_LETTER_COUNT_KEY) or 0)
