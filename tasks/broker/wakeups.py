"""Wake-ups: how a publish wakes an idle worker without the worker polling its lists.

Runs in every process that publishes through the project's transport (a publish and a
restore wake their queues) and in the worker parent (a woken fetch that leaves messages
wakes the next worker). A queue's wake-up (`layout.queue_wake_key`, `{<queue>}:wake`) is
a list of one item at most: idle workers wait on their queues' wake-ups in one long
BLPOP (tasks/broker/fetching.py), since taking a message is a Lua script, which cannot
block. A client's message wakes its queue in the script that pushes it to its lane
(tasks/broker/lanes.py, `PUSH`), where a wake-up already there costs one PEXPIRE;
`wake` wakes the others. A fetch that finds nothing in a queue's lists and rings
empties its wake-up in the same script (tasks/broker/fetch_script.py): every wake-up
follows its push, so one left then was for messages taken already.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import redis

from tasks.broker.layout import WAKE_TTL_MS, queue_wake_key

log = logging.getLogger(__name__)


def wake(pipe: Any, queues: Iterable[str]) -> None:
    """Wake `queues` in `pipe` (a channel's pipeline)."""
    for command in wake_commands(queues):
        pipe.execute_command(*command)


def wake_commands(queues: Iterable[str]) -> list[list[Any]]:
    """The commands that wake `queues` (`wake`'s)."""
    commands: list[list[Any]] = []
    for queue in queues:
        key = queue_wake_key(queue)
        commands += [["LPUSH", key, "1"], ["LTRIM", key, 0, 0], ["PEXPIRE", key, WAKE_TTL_MS]]
    return commands


def wake_now(channel: Any, queue: str) -> None:
    """Wake `queue` through `channel`, without waiting for replicas.

    A failure is logged and dropped: the message is taken, and the next idle worker's
    wait ends on its own.
    """
    errors = (*channel.connection_errors, redis.exceptions.ResponseError)
    try:
        with channel.conn_or_acquire() as client, \
                client.pipeline(transaction=False) as pipe:
            wake(pipe, [queue])
            pipe.execute()
    except errors as exc:
        log.debug("could not wake queue %s: %r", queue, exc)


def drop_wait(connection: Any, errors: tuple[type[BaseException], ...]) -> None:
    """End a closing channel's wake-up wait at once: its connection is dropped, unread.

    Read to its end as the channel closes, a pending wait would hold a
    warm shutdown for up to `ocr_idle_wait` s. A wake-up that wait would have taken is
    lost: the message waits for another worker's next fetch or the end of its wait.
    """
    try:
        connection.disconnect()
    except errors as exc:
        log.debug("wake-up wait dropped: %s", exc)
