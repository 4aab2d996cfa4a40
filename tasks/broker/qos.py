"""The transport's QoS: unacked messages held until acknowledged, restored when lost.

Runs in the worker parent, the one process that consumes (kombu makes it for
each channel, tasks/broker/channel.py). Each message a worker took is held in one
unacked record (tasks/broker/unacked.py) in the hash of the list it was taken from; the
acknowledgement drops it (riding on the next fetch where one follows), a restore puts
the message back on its queue, and the visibility timeout's look (one worker of the
fleet an interval) restores those held too long.

What a lost connection leaves unacked is settled by the next channel (`settle`). When
Redis goes away under it (a restart, a failover to a promoted replica, a managed
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
each with the unacked hash of its record (`held_in`: the hash of the list it was taken
from); the records they name are on the server, so one lost with the primary (its
message still queued there: the fetch records and pops in one step) settles as nothing.
"""

from __future__ import annotations

import collections
import logging
import time
from typing import Any

from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads

from tasks.broker import unacked
from tasks.broker.layout import HELD_LISTS_KEY, list_held_key
from tasks.state.lua import Script

log = logging.getLogger(__name__)

HELD_LISTS_SECONDS = 60.0  # how long a worker's view of the lists with unacked records lasts

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


def split_running(delivered: dict[str, Any], running: set[str],
                  ) -> tuple[list[str], list[str]]:
    """Delivery tags of `delivered` (tag -> message): (its task in `running`, not started).

    `running`: the ids of the tasks running now (the channel's `ocr_running_tasks`).
    """
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
        log.warning("message %s, unacked when the broker connection was lost, is back "
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


class QoS(virtual.QoS):  # the channel's (tasks/broker/channel.py)
    """Taken messages held (tasks/broker/unacked.py) until acknowledged, restored when lost.

    A message the fetch took is held by the fetch itself (`fetch_script.FETCH`, with its
    holder); one taken by `basic_get` is held here (`append`: only a message the
    channel's checks took), without a holder. An acknowledgement drops the unacked
    record, one HDEL.
    """

    restore_at_shutdown = True
    _restore_calls = 0

    def append(self, message: Any, delivery_tag: str) -> None:
        if delivery_tag is not None and delivery_tag != self.channel.fetcher.taken:
            # a message `basic_get` took (the fetch holds its own): held in the hash of
            # the list it was taken from
            info = message.delivery_info
            got_from = self.channel.fetcher.got_from
            key = list_held_key(got_from)
            if got_from not in self.channel.fetcher.held_lists:
                self._client().sadd(HELD_LISTS_KEY, got_from)  # named before it holds one
                self.channel.fetcher.held_lists.add(got_from)
            self._client().hset(key, delivery_tag, unacked.value(time.time(), dumps(
                [message.serializable(), info["exchange"], info["routing_key"]])))
            hold(delivery_tag, key)
        super().append(message, delivery_tag)

    _lists: tuple[float, list[str]] = (float("-inf"), [])

    def held_keys(self, client: Any) -> list[str]:
        """Every hash of unacked records.

        Each list's a consumer told of (`HELD_LISTS_KEY`, read again every
        HELD_LISTS_SECONDS).
        """
        read_at, lists = self._lists
        if time.monotonic() - read_at > HELD_LISTS_SECONDS:
            # its fetches name their lists again (a set lost with a failed-over primary)
            self.channel.fetcher.held_lists.clear()
            lists = unacked.unacked_hashes(client)
            self._lists = (time.monotonic(), lists)
        return lists

    def unrecord(self, delivery_tag: str, pipe: Any = None) -> Any:
        """Drop the unacked record of `delivery_tag` (one HDEL).

        In the caller's MULTI (a restore), or alone (an ack, a reject). A worker
        acknowledges only messages it took, each held where it told `hold`.
        """
        if pipe is None:
            pipe = self._client().pipeline(transaction=False)
        key = held_in(delivery_tag)
        return pipe.hdel(key, delivery_tag) if key else pipe

    def restore_by_tag(self, tag: str, client: Any = None, leftmost: bool = False,
                       key: str | None = None) -> None:
        """The message of `tag` back on its queues, its record dropped, in one MULTI.

        Its unacked record in `key` (the hash it is held in: by default, where this worker
        held it). A held value without its head is dropped, not restored.
        """
        key = key or held_in(tag)

        def restore(pipe: Any) -> None:
            raw = pipe.hget(key, tag)
            if raw is None:
                return
            found = unacked.parse(raw)
            if found is None:
                log.error("unacked record %s has no head; dropped", tag)
            pipe.multi()
            pipe.hdel(key, tag)
            if found is not None:
                payload, exchange, routing_key = loads(bytes_to_str(found.record))
                self.channel.restore_payload(payload, exchange, routing_key, pipe, leftmost)

        if key:
            with self.channel.conn_or_acquire(client) as conn:
                conn.transaction(restore, key)
        forget(tag)

    def _client(self) -> Any:
        """The channel's client for acknowledgements and restores."""
        return self.channel.commands

    # Acknowledgements that ride on the channel's next fetch (`fetch_script.FETCH` drops them
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

    def take_due(self) -> list[tuple[str, str]]:
        """The acknowledgements the fetch being sent carries, each with its unacked hash.

        Sent until the fetch's reply is read.
        """
        self._sent, self._due = self._due, []
        for tag in self._sent:
            acked(tag)
        return [(held_in(tag), tag) for tag in self._sent]

    def carried_not(self, tags: list[str]) -> None:
        """Of the acknowledgements taken for a fetch, those it cannot carry go now."""
        if tags:
            self._sent = [tag for tag in self._sent if tag not in tags]
            self._due = [*self._due, *tags]
            self.flush_due()

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
                forget(delivery_tag)
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
        `LOOK`), so that one worker of the fleet looks each interval (the look,
        `unacked.VISIBLE`, reads every unacked record's head on the server and sends back the
        delivery tags past the timeout; each restore is atomic, `restore_by_tag`). A channel that
        acknowledges nothing (Flower's) leaves the restores to the workers.
        """
        interval = interval or int(self.channel.unacked_restore_throttle) or 1
        self._restore_calls += 1
        if (self._restore_calls - 1) % interval:
            return
        if all(self.channel.fetcher.no_ack.values()):
            return
        client = self._client()
        ceiling = time.time() - float(self.channel.visibility_timeout)
        keys = self.held_keys(client)
        if not keys or not client.exists(*keys):  # nothing held (an idle fleet): one command
            return
        every = float(self.channel.unacked_restore_interval) * interval
        mutex, timeout = str(self.channel.unacked_mutex_key), repr(float(
            self.channel.visibility_timeout))
        if not LOOK.run(client, [mutex],
                        [timeout, max(int((every - LOOK_SLACK) * 1000), 1)]):
            return  # another worker looked within the interval
        try:
            limit = num if num is not None else self.channel.unacked_restore_limit
            visible = unacked.VISIBLE.run(client, keys,
                                       [repr(ceiling), start + limit if limit else 0])
            for k, tag in list(zip(visible[::2], visible[1::2], strict=True))[start:]:
                self.restore_by_tag(bytes_to_str(tag), client, key=keys[int(k) - 1])
        except BaseException:
            # A look that failed (a connection lost under it) is not the interval's
            # look: the next worker's ask, or this one's next, looks again.
            RELEASE.run(client, [mutex], [timeout])
            raise

    def restore_unacked(self, client: Any = None) -> None:
        # At the channel's close: messages no child started go back to their queues
        # (now, or through the next channel); running tasks keep theirs.
        ids = self.channel.ocr_running_tasks
        running, waiting = split_running(dict(self._delivered), ids() if ids else set())
        self._delivered.clear()
        try:
            with self.channel.conn_or_acquire(client) as conn:
                # a stop: running tasks keep the visibility timeout alone
                by_key: dict[str, list[str]] = {}
                for tag in running:
                    by_key.setdefault(held_in(tag), []).append(tag)
                for key, tags in by_key.items():
                    if key:
                        unacked.UNHOLD.run(conn, [key], tags)
                while waiting:
                    self.restore_by_tag(waiting[0], client=conn)
                    waiting.pop(0)
        except self.channel.connection_errors:
            for tag in waiting:
                defer_restore(tag)
