"""What a lost broker connection left unsettled, settled by the next channel.

Runs in the worker parent, the one process that consumes (tasks/broker/fetching.py).
When Redis goes away under it (a restart, a failover to a promoted replica, a managed
endpoint that moves), kombu closes the broker channel and Celery connects a new one.
Acknowledgements near the loss cannot be trusted: the new primary may lack the last
writes of the old one, a task's own writes among them. So, process-wide:

- an acknowledgement that failed (its task ended around the loss) is done on the next
  channel if that one reaches the same server process (`run_id`), and otherwise the
  message goes back to its queue: the task runs again, and its claims and the page
  join make a second run harmless (a redelivered ended job is ignored);
- acknowledgements done in the RECENT seconds before a loss are looked at on the next
  server: a record still there (the ack was lost with the primary's tail) sends its
  message back to its queue now, rather than after the visibility timeout;
- a message the worker had taken but no child had started (Celery forgets those at
  the loss) goes back to its queue now.

A task running at the loss is never restored then (it would run twice at once): its
acknowledgement, when it ends, follows the first rule. Only delivery tags are kept,
each with the held hash of its record (`held_in`: the hash of the list it was taken
from); the records they name are on the server, so one lost with the primary (its
message still queued there: the fetch records and pops in one step) settles as nothing.
"""

from __future__ import annotations

import collections
import logging
import time
from typing import Any

log = logging.getLogger(__name__)

RECENT = 10.0     # seconds of acknowledgements before a loss that are looked at again
RECENT_MAX = 5000

_server = ""                          # run_id of the server the live channel reached
_acks: dict[str, str] = {}            # failed ack -> run_id of the server it was for
_restores: set[str] = set()           # messages to put back on their queues
_recent: collections.deque[tuple[float, str, str]] = collections.deque(maxlen=RECENT_MAX)
_held_in: dict[str, str] = {}         # a delivery tag -> the hash its record is held in


def hold(tag: str, key: str) -> None:
    """The record of `tag` is held in the hash `key` (the fetch held it there)."""
    _held_in[tag] = key


def held_in(tag: str) -> str:
    """The hash `tag`'s record is held in ("" where none was told: nothing is held)."""
    return _held_in.get(tag, "")


def forget(tag: str) -> None:
    """`tag` is settled: nothing of it is looked at again."""
    if tag not in _acks and tag not in _restores:
        _held_in.pop(tag, None)


def connected(run_id: str) -> None:
    """A channel reached the server process `run_id` (INFO server)."""
    global _server
    _server = run_id


def acked(tag: str) -> None:
    now = time.monotonic()
    _recent.append((now, tag, _server))
    while _recent and _recent[0][0] < now - RECENT:  # past the look after a loss
        forget(_recent.popleft()[1])


def defer_ack(tag: str) -> None:
    """Acknowledge `tag` on the next channel (if it reaches the same server)."""
    _acks[tag] = _server


def defer_restore(tag: str) -> None:
    """Put the message of `tag` back on its queue once a channel can."""
    _restores.add(tag)


def lost() -> None:
    """The channel closed: recent acknowledgements are looked at again on the next one."""
    since = time.monotonic() - RECENT
    for at, tag, server in _recent:
        if at >= since:
            _acks.setdefault(tag, server + "+done")  # done there: never acked again
    _recent.clear()


def pending() -> bool:
    return bool(_acks or _restores)


def running_task_ids() -> set[str]:
    """Ids of the tasks this worker's pool children run now (Celery's worker state)."""
    from celery.worker import state

    return {str(request.id) for request in tuple(state.active_requests)}


def split_running(delivered: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Delivery tags of `delivered` (tag -> message): (running in a child, not started)."""
    running = running_task_ids()
    started: list[str] = []
    waiting: list[str] = []
    for tag, message in delivered.items():
        headers = getattr(message, "headers", None) or {}
        (started if headers.get("id") in running else waiting).append(tag)
    return started, waiting


def settle(qos: Any, client: Any, connection_errors: tuple[type[BaseException], ...]) -> None:
    """Do what earlier channels left, through `qos` (a live channel's) and `client`.

    What fails again (the server went away once more) stays for the next channel.
    """
    try:
        for tag, server in list(_acks.items()):
            if server == _server:  # the same server process: its writes are all there
                qos.unrecord(tag, client.pipeline(transaction=False)).execute()
            elif not server.endswith("+done") or server[:-5] != _server:
                _restore(qos, client, tag)
            del _acks[tag]
            forget(tag)
        for tag in list(_restores):
            _restore(qos, client, tag)
            _restores.discard(tag)
            forget(tag)
    except connection_errors:
        return


def _restore(qos: Any, client: Any, tag: str) -> None:
    if held_in(tag) and client.hexists(held_in(tag), tag):
        qos.restore_by_tag(tag, client)
        log.warning("message %s, unsettled when the broker connection was lost, is back "
                    "on its queue", tag)
