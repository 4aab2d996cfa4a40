"""Doorbells: how a publish wakes an idle worker without the worker polling its lists.

Runs in every process that publishes through the project's transport (a publish and a
restore ring) and in the worker parent (a fetch woken by a ring rings once more).
A queue's doorbell (`layout.queue_wake_key`, `{<queue>}:wake`) is a list of one item
at most: idle workers wait on their queues' doorbells in one long BLPOP
(tasks/broker/fetching.py), since taking a message is a Lua script, which cannot
block. A client's message is rung by the script
that pushes it to its lane (tasks/broker/lanes.py, `PUSH`), where a bell already rung
costs one PEXPIRE; `ring` rings the others. A fetch that finds nothing in a queue's
lists and rings empties its doorbell in the same script (tasks/broker/fetch_script.py):
every ring follows its push, so a ring left then was for messages taken already.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import redis

from tasks.broker.layout import WAKE_TTL_MS, queue_wake_key

log = logging.getLogger(__name__)


def ring(pipe: Any, prefixed: Callable[[str], str], queues: Iterable[str]) -> None:
    """Ring the doorbells of `queues` in `pipe` (a channel's pipeline).

    `prefixed`: a key's name as the channel's raw commands spell it (`_key`).
    """
    for command in ring_commands(prefixed, queues):
        pipe.execute_command(*command)


def ring_commands(prefixed: Callable[[str], str], queues: Iterable[str]) -> list[list[Any]]:
    """The commands that ring the doorbells of `queues` (`ring`'s arguments)."""
    commands: list[list[Any]] = []
    for queue in queues:
        key = queue_wake_key(prefixed(queue))
        commands += [["LPUSH", key, "1"], ["LTRIM", key, 0, 0], ["PEXPIRE", key, WAKE_TTL_MS]]
    return commands


def ring_now(channel: Any, queue: str) -> None:
    """Ring `queue`'s doorbell through `channel`, without waiting for replicas.

    A failure is logged and dropped: the message is taken, and the next idle worker's
    wait ends on its own.
    """
    errors = (*channel.connection_errors, redis.exceptions.ResponseError)
    try:
        with channel.conn_or_acquire() as client, \
                client.pipeline(transaction=False) as pipe:
            ring(pipe, str, [queue])
            pipe.execute()
    except errors as exc:
        log.debug("could not ring the doorbell of %s: %r", queue, exc)


def drop_wait(connection: Any, errors: tuple[type[BaseException], ...]) -> None:
    """End a closing channel's doorbell wait at once: its connection is dropped, unread.

    Read to its end as the channel closes, a pending wait would hold a
    warm shutdown for up to `ocr_idle_wait` s. A ring that wait would have taken is
    lost: the message waits for another worker's next fetch or the end of its wait.
    """
    try:
        connection.disconnect()
    except errors as exc:
        log.debug("doorbell wait dropped: %s", exc)
