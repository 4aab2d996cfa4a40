"""What the broker lets the floors above it see: the keys its figures are counted from.

The metrics floor (queue depth, fleet health), the API, the command lines and the
console reach the Redis broker's keys through this module alone (import contracts in
pyproject.toml); the key names stay the broker's own (`layout`, `unacked`). Nothing
here writes: the API's tokens write a client's lane weight under `LANE_WEIGHTS_KEY`,
and a backup tells lanes and held records apart by `is_lane` and `is_held_hash`.
"""

from __future__ import annotations

from typing import Any

from tasks.broker import layout
from tasks.broker.publishing import PUBLISHED_HEADER

__all__ = ["LANE_WEIGHTS_KEY", "PRIORITY_STEPS", "PUBLISHED_HEADER", "SEP", "dead_letters",
           "held_key", "is_held_hash", "is_lane", "lane_prefix", "priority_suffixes",
           "queue_lists", "ring_key"]

SEP = layout.SEP
LANE_WEIGHTS_KEY = layout.LANE_WEIGHTS_KEY
is_lane = layout.is_lane
is_held_hash = layout.is_held_hash
PRIORITY_STEPS = layout.PRIORITY_STEPS
queue_lists = layout.queue_lists
priority_suffixes = layout.priority_suffixes


def ring_key(list_key: str) -> str:
    """The list's ring: the clients with a lane of it, "" for the list itself."""
    return layout.list_ring_key(list_key)


def lane_prefix(list_key: str) -> str:
    """The start of each lane's key of the list; a client's name ends it."""
    return layout.list_lane_key(list_key, "")


def held_key(list_key: str) -> str:
    """The hash of the messages held that were taken from the list: counted, never read."""
    return layout.list_held_key(list_key)


def dead_letters(client: Any) -> tuple[int, int]:
    """Refused messages kept (a capped list), and how many were ever refused."""
    kept = int(client.llen(layout.DEAD_LETTER_KEY))
    return kept, int(client.get(layout.DEAD_LETTER_COUNT_KEY) or 0)
