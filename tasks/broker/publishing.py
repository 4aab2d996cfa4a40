"""The publishing side of the broker's channel: lanes, wake-ups, replicas.

Runs in every process that publishes (clients, the API, beat, workers sending page
tasks and retries; the worker parent too, when it restores a message). A client's
message goes to its lane of its queue's list for its priority step (tasks/broker/lanes.py),
any other to the list itself, kombu's; either way stamped with the time it was sent
(`PUBLISHED_HEADER`: the age of the oldest waiting message, tasks/metrics/queue_depth.py)
and wakes its queue (wakeups.py; a lane's push wakes it in the same script), so that
an idle worker wakes. A restored message goes back to its lane the same way. With
`ocr_min_replicas`, a WAIT sent after the message on its own connection holds a
publish until that many replicas have it (OCR_REDIS_MIN_REPLICAS).

A `Publisher` is a part of the channel (tasks/broker/channel.py), which hands it
kombu's `_put` and the QoS's restores.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import redis.exceptions
from kombu.utils.json import dumps
from redis.exceptions import NoScriptError

from tasks.broker import lanes, layout, wakeups
from tasks.broker.pending_publishes import PendingPublish, PendingPublishes
from tasks.errors import ReplicaMissing
from tasks.records.clients import CLIENT_HEADER, client_name
from tasks.state import lua
from tasks.state.replicas import (
    address_of,
    check_replicas,
    replaced_at,
    sentinel_named,
    wait_command,
)

log = logging.getLogger(__name__)

MISSED_SECONDS = 10.0  # a server short of replicas: a worker's publishes to it skip WAIT
# The header a message is stamped with when published (epoch seconds).
PUBLISHED_HEADER = "ocr_published"


class Publisher:
    """A channel's publishing side: a message to its lane or list, the wake-up, the WAIT."""

    # The servers whose replicas were missing, and when: a worker's publish to one of
    # them skips its WAIT for MISSED_SECONDS. By server, never for the whole process:
    # a publish on another connection, still on a primary the Sentinels replaced, must
    # still wait, and so be found out (`_send_kept`).
    _replicas_missed: ClassVar[dict[Any, float]] = {}
    # A worker's publishes no replica confirmed, to send again after a switch.
    _pending: ClassVar[PendingPublishes] = PendingPublishes()

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self._held: list[tuple[str, int, str, str]] | None = None  # what `together` holds

    def put(self, queue: str, message: Any) -> None:
        """`message` to its client's lane of `queue`, or to the queue's list (kombu's)."""
        channel = self.channel
        headers = message.get("headers")
        client = ""
        if isinstance(headers, dict):  # when it was published: the oldest message's age
            headers[PUBLISHED_HEADER] = round(time.time(), 3)
            client = client_name(headers.get(CLIENT_HEADER))
        if client and lanes.laned(queue) and queue not in channel._expires:
            # A client's message goes to its lane of the list (tasks/broker/lanes.py),
            # its queue woken by the same script.
            step = layout.message_step(message, channel.priority_steps)
            if self._held is not None:  # `together`: pushed with the others at its end
                self._held.append((queue, step, client, dumps(message)))
            else:
                self._push(queue, step, client, [dumps(message)])
            return
        put = self._list_commands(queue, message)
        if int(channel.ocr_min_replicas or 0):
            self._send_kept(queue, [*(put if len(put) == 1 else [["MULTI"], *put, ["EXEC"]]),
                                    *wakeups.wake_commands([queue])])
            return
        with channel.commands.pipeline() as pipe:
            for command in put:
                pipe.execute_command(*command)
            pipe.execute()
        wakeups.wake_now(channel, queue)

    def _list_commands(self, queue: str, message: Any) -> list[list[Any]]:
        """A kombu LPUSH of `message` to its step's list, an expiring queue's PEXPIREs."""
        channel = self.channel
        name = layout.queue_list(queue, layout.message_step(message, channel.priority_steps),
                                 channel.sep)
        expires = channel._expires.get(queue)
        lists = channel._lists(queue) if expires else ()
        return [["LPUSH", name, dumps(message)], *(["PEXPIRE", each, expires] for each in lists)]

    @contextlib.contextmanager
    def together(self) -> Iterator[None]:
        """Hold this channel's client pushes, and send them at the end, a script a lane.

        Runs in a worker child splitting a document: its page tasks, all to one lane,
        go in one push (one LPUSH of all, one count, one wake-up, one WAIT for
        replicas) in the order they were published. Nothing is sent when the block
        raises. Other messages (no client, not a service queue) go as they come.
        """
        if self._held is not None:
            yield
            return
        self._held = []
        try:
            yield
            held = self._held
        finally:
            self._held = None
        for (queue, step, client), bodies in _lanes_in_order(held):
            self._push(queue, step, client, bodies)

    def _push(self, queue: str, step: int, client: str, bodies: list[str]) -> None:
        """`bodies`, in their order, to `client`'s lane of `queue` (priority `step`).

        One push script, which wakes the queue; with `ocr_min_replicas`, the
        replicas' WAIT after it on its connection.
        """
        command = lanes.push_command(
            "", layout.queue_list(queue, step, self.channel.sep), client, bodies[0],
            ring_queue=queue, more=bodies[1:])
        if int(self.channel.ocr_min_replicas or 0):
            self._send_kept(queue, [command])
            return
        lua.run(self.channel.commands, command)

    def restore(self, payload: Any, exchange: str, routing_key: str, pipe: Any,
                leftmost: bool = False) -> None:
        """Queue `payload` back on the queues its route names, in `pipe` (a MULTI).

        Redelivered; first in line (`leftmost`: a rejected message) or last. A client's
        message goes back to its lane; the queues are woken.
        """
        channel = self.channel
        queues = list(channel._lookup(exchange, routing_key))
        headers = payload.get("headers") if isinstance(payload, dict) else None
        client = client_name(headers.get(CLIENT_HEADER)) if isinstance(headers, dict) else ""
        with contextlib.suppress(KeyError, TypeError, AttributeError):
            payload["headers"]["redelivered"] = True
            payload["properties"].setdefault("delivery_info", {})["redelivered"] = True
        step = layout.message_step(payload, channel.priority_steps)
        laned = client and queues and all(map(lanes.laned, queues)) and \
            isinstance(payload.get("properties"), dict)
        for queue in queues:
            name = layout.queue_list(queue, step, channel.sep)
            if laned:
                lua.queue(pipe, lanes.push_command(
                    "", name, client, dumps(payload), first=not leftmost))
            else:
                (pipe.lpush if leftmost else pipe.rpush)(name, dumps(payload))
        wakeups.wake(pipe, queues)

    def holding_keys(self, queue: str) -> tuple[str, ...]:
        """Keys of which one exists wherever a message of `queue` waits.

        Its lists, and their rings: a message in a lane has its client in its list's
        ring (the push adds it, the fetch takes it out only once none waits).
        """
        keys = self.channel._lists(queue)
        if not lanes.laned(queue):
            return keys
        return (*keys, *(layout.list_ring_key(name) for name in keys))

    def count(self, queue: str) -> int:
        """The messages waiting in `queue`'s lists and lanes."""
        lists = self.channel._lists(queue)
        with self.channel.commands.pipeline(transaction=False) as pipe:
            for name in lists:
                pipe.llen(name)
            size = sum(int(each) for each in pipe.execute())
        if lanes.laned(queue):
            size += int(lua.run(self.channel.commands, lanes.sizes_command("", lists)))
        return size

    def _send_kept(self, queue: str, commands: list[list[Any]]) -> None:
        """A publish's `commands`, then the replicas' WAIT, on one connection.

        With `ocr_min_replicas`. WAIT counts the writes of its own connection on its
        own server, so the message and its WAIT share a connection: whatever the pool
        names meanwhile, the WAIT speaks for the server that took the message. Short of
        replicas, a client's publish raises ReplicaMissing; a worker's goes on (logged,
        and that server's publishes skip their WAIT for MISSED_SECONDS; kept, to be sent
        again after a switch: tasks/broker/pending_publishes.py), unless that server is a primary
        the Sentinels have replaced: it takes writes until they demote it, then throws
        them away. That publish fails as a lost connection, so that kombu sends it again
        on a new one, which asks the Sentinels (a copy that survives after all is read
        once: the end claim, the page join).
        """
        what = f"a message to queue {queue}"
        timeout = float(self.channel.ocr_replica_timeout)
        with self.channel.conn_or_acquire() as client:
            lua.preload(client, commands[0])
            for loads in range(lua.LOADS + 1):
                started = time.monotonic()
                sent = self._sent(client, commands, int(self.channel.ocr_min_replicas), timeout)
                failed = next((r for r in sent.replies[:len(commands)]
                               if isinstance(r, redis.exceptions.ResponseError)), None)
                if failed is None:
                    break
                if not isinstance(failed, NoScriptError) or loads == lua.LOADS:
                    raise failed
                lua.reload(client, commands[0])
        reached = sent.replies[-1] if sent.waited else None
        if isinstance(reached, redis.exceptions.ResponseError):  # the message is sent
            if self.channel.ocr_refuse_pending:
                raise ReplicaMissing(f"{what} was sent, and no replica could be waited "
                                     f"for ({reached!r})")
            log.debug("could not wait for the replicas of %s: %r", what, reached)
        elif reached is not None and reached >= int(self.channel.ocr_min_replicas):
            self._pending.confirmed(sent.server, started)
        elif self.channel.ocr_refuse_pending:
            check_replicas([reached], int(self.channel.ocr_min_replicas), timeout, what)
        elif sent.replaced:
            raise redis.exceptions.ConnectionError(
                f"{what} went to a Redis primary the Sentinels have replaced")
        else:  # short of replicas, or in its server's window (sent without a WAIT)
            if sentinel_named(client):  # (an address that moves stays the same address)
                self._pending.add(sent.server, PendingPublish(started, queue, commands))
            if reached is not None:
                Publisher._replicas_missed[sent.server] = time.monotonic()
                log.warning("%s reached no Redis replica within %g s; publishing to that "
                            "server without waiting for replicas for %g s",
                            what, timeout, MISSED_SECONDS)
        if not self.channel.ocr_refuse_pending:
            self._send_again(client, sent.server)

    def _sent(self, client: Any, commands: list[list[Any]], replicas: int,
              timeout: float) -> _Sent:
        """`commands` and their WAIT (unless in its server's window) on one connection.

        Where replicas came up short on a primary the Sentinels have replaced, its
        connection is dropped.
        """
        pool = client.connection_pool
        connection = pool.get_connection()
        try:
            server = address_of(connection)
            waited = self.channel.ocr_refuse_pending or time.monotonic() - \
                self._replicas_missed.get(server, -MISSED_SECONDS) >= MISSED_SECONDS
            if waited:  # else its replicas were missing just now: no wait per publish
                commands = [*commands, wait_command(replicas, timeout)]
            replies = _replies(connection, commands)
            replaced = waited and not self.channel.ocr_refuse_pending and \
                isinstance(replies[-1], int) and replies[-1] < replicas and \
                replaced_at(client, server)
            if replaced:
                connection.disconnect()
        except BaseException:
            connection.disconnect()  # no later command may read this one's replies
            raise
        finally:
            pool.release(connection)
        return _Sent(server, waited, replies, replaced)

    def _send_again(self, client: Any, server: tuple[Any, ...]) -> None:
        """Send again what went unconfirmed to a primary the Sentinels have since replaced.

        `server`: where this process's publishes go now. Each other server with kept
        publishes is looked up (at most once a second); where a Sentinel names another
        primary, its publishes go again, now. One that fails is kept again, with the rest.
        """
        now = time.monotonic()
        for other in self._pending.due(server, now):
            if not replaced_at(client, other):
                self._pending.looked_up(other, now)
                continue
            publishes = self._pending.take(other)
            log.warning("%d message(s) went to a Redis primary the Sentinels have since "
                        "replaced, confirmed by no replica: sent again", len(publishes))
            for index, publish in enumerate(publishes):
                try:
                    self._send_kept(publish.queue, publish.commands)
                except BaseException:
                    self._pending.give_back(other, publishes[index:])
                    raise


@dataclasses.dataclass(frozen=True)
class _Sent:
    """A publish sent: its connection's server, whether it waited, the replies, replaced."""

    server: tuple[Any, ...]
    waited: bool
    replies: list[Any]
    replaced: bool


def _replies(connection: Any, commands: list[list[Any]]) -> list[Any]:
    """`commands` sent in one write on `connection`; a reply each, an error as its exception."""
    connection.send_packed_command(connection.pack_commands(commands))
    replies: list[Any] = []
    for _ in commands:
        try:
            replies.append(connection.read_response())
        except redis.exceptions.ResponseError as exc:
            replies.append(exc)
    return replies


def _lanes_in_order(held: list[tuple[str, int, str, str]],
                    ) -> list[tuple[tuple[str, int, str], list[str]]]:
    """Held pushes grouped by lane (queue, step, client), each lane's in their order."""
    grouped: dict[tuple[str, int, str], list[str]] = {}
    for queue, step, client, body in held:
        grouped.setdefault((queue, step, client), []).append(body)
    return list(grouped.items())


@contextlib.contextmanager
def pushes_together(channel: Any) -> Iterator[None]:
    """`Publisher.together` on `channel`; on another broker's channel, nothing."""
    hold = getattr(channel, "together", None)
    if hold is None:
        yield
        return
    with hold():
        yield
