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
acknowledgement, when it ends, follows the first rule. Only delivery tags are kept;
the records they name are on the server, so one lost with the primary (its message
still queued there: the fetch records and pops in one step) settles as nothing.
"""

from __future__ import annotations

import collections
import logging
import time
from functools import cached_property
from typing import Any

from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads

from tasks.broker import held
from tasks.broker.layout import held_key, holders_key
from tasks.broker.scripts import Script

log = logging.getLogger(__name__)

RECENT = 10.0     # seconds of acknowledgements before a loss that are looked at again
RECENT_MAX = 5000

_server = ""                          # run_id of the server the live channel reached
_acks: dict[str, str] = {}            # failed ack -> run_id of the server it was for
_restores: set[str] = set()           # messages to put back on their queues
_recent: collections.deque[tuple[float, str, str]] = collections.deque(maxlen=RECENT_MAX)


def connected(run_id: str) -> None:
    """A channel reached the server process `run_id` (INFO server)."""
    global _server
    _server = run_id


def acked(tag: str) -> None:
    _recent.append((time.monotonic(), tag, _server))


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
        for tag in list(_restores):
            _restore(qos, client, tag)
            _restores.discard(tag)
    except connection_errors:
        return


def _restore(qos: Any, client: Any, tag: str) -> None:
    if client.hexists(qos.held_key, tag):
        qos.restore_by_tag(tag, client)
        log.warning("message %s, unsettled when the broker connection was lost, is back "
                    "on its queue", tag)


# The restore's mutex lapses this long before the next worker's look is due: one look
# of the fleet an interval, on the tick nearest it.
LOOK_SLACK = 0.5
# Whether this worker looks now: it takes the mutex (KEYS[1]) for the interval (ARGV[2]
# ms) with its visibility timeout (ARGV[1]) as the value, or finds it taken by a look
# with a longer timeout (which did not cover this worker's shorter one: a fleet whose
# workers differ, as during a change of OCR_VISIBILITY_TIMEOUT). 1: look.
LOOK = Script("""
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
local taken = tonumber(redis.call('GET', KEYS[1]))
if taken and taken > tonumber(ARGV[1]) then return 1 end
return 0
""")
# Gives the mutex back after a failed look, while it holds that look's value.
RELEASE = Script("if redis.call('GET', KEYS[1]) == ARGV[1] then "
                 "return redis.call('DEL', KEYS[1]) end return 0")


class QoS(virtual.QoS):  # the transport's (tasks/broker/fetching.py)
    """Taken messages held (tasks/broker/held.py) until acknowledged, restored when lost.

    A message the fetch took is held by the fetch itself (`lanes.FETCH`, with its
    holder); one taken by `basic_get` is held here, without a holder. An
    acknowledgement drops the held record, one HDEL.

    What a lost connection leaves unsettled (acknowledgements around it, messages no
    child started) is settled by the next channel (this module); a task running at
    the loss is never restored then. A restore reads each held record whole (HGET):
    only messages within the worker's bound are held (the fetch holds none larger;
    `append` only a message the channel's checks took). Records of layout version 1
    (`unacked`, its index and holders: a worker of the release before took the
    message) are restored too, by tag and by the visibility timeout.
    """

    restore_at_shutdown = True
    _restore_calls = 0

    def append(self, message: Any, delivery_tag: str) -> None:
        if delivery_tag is not None and delivery_tag != getattr(self.channel, "_taken", None):
            info = message.delivery_info
            self._client().hset(self.held_key, delivery_tag, held.value(time.time(), dumps(
                [message.serializable(), info["exchange"], info["routing_key"]])))
        super().append(message, delivery_tag)

    @cached_property
    def held_key(self) -> str:
        return held_key(self.unacked_key)

    @cached_property
    def unacked_key(self) -> str:
        return str(self.channel.unacked_key)

    @cached_property
    def unacked_index_key(self) -> str:
        return str(self.channel.unacked_index_key)

    def unrecord(self, delivery_tag: str, pipe: Any = None) -> Any:
        """Drop the held record of `delivery_tag` (one HDEL).

        In the caller's MULTI (a restore), or alone (an ack, a reject). A worker of this
        release acknowledges only messages it took: each one held by this layout.
        """
        if pipe is None:
            pipe = self._client().pipeline(transaction=False)
        return pipe.hdel(self.held_key, delivery_tag)

    def unrecord_v1(self, delivery_tag: str, pipe: Any) -> Any:
        """Drop layout version 1's record of `delivery_tag`: message, index entry, holder."""
        return pipe.hdel(self.unacked_key, delivery_tag) \
            .zrem(self.unacked_index_key, delivery_tag) \
            .hdel(holders_key(self.unacked_key), delivery_tag)

    def restore_by_tag(self, tag: str, client: Any = None, leftmost: bool = False) -> None:
        """The message of `tag` back on its queues, its record dropped, in one MULTI.

        Its held record, or else layout version 1's (a worker of the release before
        took it). A held value without its head is dropped, not restored.
        """

        def restore(pipe: Any) -> None:
            raw = pipe.hget(self.held_key, tag)
            if raw is not None:
                found = held.parse(raw)
                record = found.record if found else None
                if found is None:
                    log.error("held record %s has no head; dropped", tag)
                pipe.multi()
                self.unrecord(tag, pipe)
            else:
                record = pipe.hget(self.unacked_key, tag)
                pipe.multi()
                self.unrecord_v1(tag, pipe)
            if record:
                payload, exchange, routing_key = loads(bytes_to_str(record))
                self.channel.restore_payload(payload, exchange, routing_key, pipe, leftmost)

        with self.channel.conn_or_acquire(client) as conn:
            conn.transaction(restore, self.held_key, self.unacked_key)

    def _client(self) -> Any:
        """The channel's client for acknowledgements and restores."""
        return self.channel.commands

    # Acknowledgements that ride on the channel's next fetch (`lanes.FETCH` drops them
    # first, in the fetch's round trip): due, then sent until the fetch's reply is read.
    _due: list[str] = []
    _sent: list[str] = []

    def ack(self, delivery_tag: str) -> None:
        if self.channel.fetch_follows():
            self._due = [*self._due, delivery_tag]
            virtual.QoS.ack(self, delivery_tag)
            return
        try:
            self.unrecord(delivery_tag).execute()
        except self.channel.connection_errors:
            defer_ack(delivery_tag)
        else:
            acked(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)

    def take_due(self) -> list[str]:
        """The acknowledgements the fetch being sent carries (sent until it is read)."""
        self._sent, self._due = self._due, []
        for tag in self._sent:
            acked(tag)
        return list(self._sent)

    def fetch_read(self) -> None:
        """The fetch's reply came: its acknowledgements are done."""
        self._sent = []

    def fetch_not_run(self) -> None:
        """The server ran nothing of the fetch (NOSCRIPT, a refusal): the next carries them."""
        self._due, self._sent = [*self._sent, *self._due], []

    def fetch_lost(self) -> None:
        """The connection went with the fetch unread: settled by the next channel."""
        for tag in self._sent:
            defer_ack(tag)
        self._sent = []

    def flush_due(self) -> None:
        """Acknowledge now what waits for a fetch (none follows: a wait, a close)."""
        tags, self._due = self._due, []
        if not tags:
            return
        pipe = self._client().pipeline(transaction=False)
        for tag in tags:
            self.unrecord(tag, pipe)
        try:
            pipe.execute()
        except self.channel.connection_errors:
            for tag in tags:
                defer_ack(tag)
            return
        for tag in tags:
            acked(tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        try:
            if requeue:
                self.restore_by_tag(delivery_tag, leftmost=True)
            else:
                self.unrecord(delivery_tag).execute()
        except self.channel.connection_errors:
            (defer_restore if requeue else defer_ack)(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)

    def restore_visible(self, start: int = 0, num: int | None = None,
                        interval: int | None = None) -> None:
        """Messages taken longer ago than the visibility timeout back on their queues.

        Every `unacked_restore_throttle` call (every `unacked_restore_interval` s, on
        every worker): an EXISTS first (nothing held: its whole cost), then the mutex,
        taken for the interval and left to lapse (given back by a look that failed;
        a worker whose visibility timeout is shorter than the taker's looks anyway:
        `LOOK`), so that one worker of the fleet looks
        each interval (the look, `held.VISIBLE`, reads every held record's head and
        layout version 1's index on the server and sends back the delivery tags past
        the timeout; each restore is atomic, `restore_by_tag`). A channel that
        acknowledges nothing (Flower's) leaves the restores to the workers.
        """
        interval = interval or int(self.channel.unacked_restore_throttle) or 1
        self._restore_calls += 1
        if (self._restore_calls - 1) % interval:
            return
        if all(getattr(self.channel, "no_ack", {"": False}).values()):
            return
        client = self._client()
        ceiling = time.time() - float(self.channel.visibility_timeout)
        keys = [self.held_key, self.unacked_index_key]
        if not client.exists(*keys):  # nothing held (an idle fleet): one command
            return
        every = float(self.channel.unacked_restore_interval) * interval
        mutex, timeout = str(self.channel.unacked_mutex_key), repr(float(
            self.channel.visibility_timeout))
        if not LOOK.run(client, [mutex],
                        [timeout, max(int((every - LOOK_SLACK) * 1000), 1)]):
            return  # another worker looked within the interval
        try:
            limit = num if num is not None else self.channel.unacked_restore_limit
            visible = held.VISIBLE.run(client, keys,
                                       [repr(ceiling), start + limit if limit else 0])
            for tag in visible[start:]:
                self.restore_by_tag(bytes_to_str(tag), client)
        except BaseException:
            # A look that failed (a connection lost under it) is not the interval's
            # look: the next worker's ask, or this one's next, looks again.
            RELEASE.run(client, [mutex], [timeout])
            raise

    def restore_unacked(self, client: Any = None) -> None:
        # At the channel's close: messages no child started go back to their queues
        # (now, or through the next channel); running tasks keep theirs.
        running, waiting = split_running(dict(self._delivered))
        self._delivered.clear()
        try:
            with self.channel.conn_or_acquire(client) as conn:
                if running:  # a stop: running tasks keep the visibility timeout alone
                    held.UNHOLD.run(conn, [self.held_key], running)
                while waiting:
                    self.restore_by_tag(waiting[0], client=conn)
                    waiting.pop(0)
        except self.channel.connection_errors:
            for tag in waiting:
                defer_restore(tag)
