"""The consuming side of the broker's channel: atomic fetches, each message checked first.

Runs in the worker parent (the only process that consumes task messages; clients,
Flower and the exporter load it too, and consume only replies and events). A body that
is not a JSON object, an envelope without its properties, a body that is not base64 or
a pickled message would either kill the worker parent ("Unrecoverable error") or leave
the job PENDING. This channel checks each raw message first, before any decoding, and
dead-letters what a worker must not take (tasks/broker/refusals.py); the worker then
goes on. A message longer than the largest it would decode reaches it as its ends and
its length alone (tasks/broker/oversized.py).

Taking a message is one atomic step on the server (`fetch_script.FETCH`): the script
holds it in one record (tasks/broker/unacked.py), under a delivery tag the worker chose
(the one it delivers the message under: Lua never reads the envelope), and pops it
(a BRPOP, then a record written by the worker, would lose a message when Redis or the
worker parent dies between the two); one whose worker never reads the reply is
restored after the visibility timeout. The script also chooses whose message: each
client has a lane of each list, served in weighted fair shares (tasks/broker/lanes.py).
Lua cannot block, so an idle worker waits on its queues' wake-ups (wakeups.py) in one
BLPOP of `ocr_idle_wait` s (10 s in workers: about a command a second idle). A publish
and a restore wake their queue; a woken fetch that leaves messages wakes it again (a
burst's wake-ups stand in one item), one that leaves none waits again (SETTLE_WAIT s
first, for a message pushed without a wake-up, a stock kombu client's, which waits for
the end of a wait); one that takes nothing empties its queues' wake-ups. A fetch after an
empty one first asks one EXISTS over every list and ring: its whole cost.

A `Fetcher` is a part of the channel (tasks/broker/channel.py), beside its publisher
(tasks/broker/publishing.py); the event loop drives each channel's fetches through
tasks/broker/poller.py (kombu's `register_with_event_loop`).

AMQP brokers deliver typed frames, and Celery's own decode-error path covers them (junk
is acked or rejected, the worker goes on: tasks/queue/parent_endings.py).
"""

from __future__ import annotations

import logging
import threading
import time
from queue import Empty
from typing import Any

import redis.exceptions
from kombu.utils.encoding import bytes_to_str

from tasks.broker import fetch_script, holders, lanes, oversized, qos, wakeups
from tasks.broker.layout import DEAD_LETTER_KEY, list_held_key, queue_list, queue_wake_key
from tasks.broker.refusals import (
    Refused,
    check_message,
    dead_letter,
    push_dead_letter,
)
from tasks.broker.wire import FetchBytes
from tasks.state import lua

log = logging.getLogger(__name__)

SETTLE_WAIT = 1.0  # seconds of a first wake-up wait after a woken fetch took the last


class Fetcher:
    """A channel's consuming side: atomic fetches; each message checked before it is decoded."""

    _waiting = False  # the next poll waits on the wake-ups (the last fetch found none)
    _short = False  # that wait is SETTLE_WAIT s at most (a message published without one)
    _woken = False  # the last wait ended with a wake-up: a fetch that leaves messages wakes
    _busy = False   # the last fetch took a message (or a wake-up came): no idle probe
    _reached = False  # the server this channel reached was told to the QoS (`qos.connected`)
    _fetch_refused_at = 0.0
    _sent_at: float | None = None
    taken: str | None = None  # the delivering message's tag, as fetched (`QoS.append`)
    got_from = ""  # the list `basic_get` took its last message from (`QoS.append`)

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.no_ack: dict[str, bool] = {}  # queue -> consumed without acks
        # the lists this channel saw named in HELD_LISTS_KEY (its fetch names the others
        # as it holds a message of them: tasks/broker/fetch_script.py), since its fetch
        # connection last connected: a server reached anew (a failover) may lack them
        self.held_lists: set[str] = set()
        self._fetch: list[Any] = []  # the last fetch sent (its script reloaded on NOSCRIPT)
        self._watched: Any = None
        self._packed = FetchBytes()

    def reach(self) -> None:
        """Tell the QoS which server this channel reached, once (`qos.connected`).

        A consuming channel's step: a channel that only publishes asks nothing.
        """
        if not self._reached:
            qos.connected(self._server_run_id())
            self._reached = True

    def _server_run_id(self) -> str:
        """The server process this channel reached (a failover or restart changes it)."""
        try:
            return str(self.channel.commands.info("server")["run_id"])
        except redis.exceptions.ResponseError:  # INFO not allowed: never the same
            return f"unknown-{id(self)}-{time.monotonic()}"

    def follows(self) -> bool:
        """Whether this channel's next poll is a fetch, on this loop's next turn.

        Then an acknowledgement rides on that fetch (`QoS.ack`): the worker's event
        loop starts a fetch on every turn a channel is consuming, can take a message,
        and has no fetch or wake-up wait in flight (an ack frees its place). An
        acknowledgement from another thread (the threads pool's) goes alone.
        """
        channel = self.channel
        return bool(getattr(channel.connection, "loop_thread", None) == threading.get_ident()
                    and not channel._in_poll and not self._waiting and not channel.closed
                    and channel.active_queues)

    def close(self) -> None:
        """The channel closes: what a fetch in flight took goes back, acks are sent."""
        channel = self.channel
        if channel.active_queues:
            qos.lost()  # recent acknowledgements are looked at on the next server
        if channel._in_poll and not self._waiting:
            # A fetch in flight holds a recorded message: read it, so that the close
            # puts it back on its queue now (no child started it).
            try:
                self.read()
            except (Empty, *channel.connection_errors):
                pass
        channel.qos.fetch_lost()  # a fetch unread carried these
        channel.qos.flush_due()
        if channel._in_poll and self._waiting:  # a wake-up wait is dropped, not read out
            wakeups.drop_wait(channel._in_poll, channel.connection_errors)
            channel._in_poll = None

    def dropped(self) -> None:
        """The fetch connection was dropped: its reply will never be read."""
        self._waiting = False
        self.channel.qos.fetch_lost()

    def check_health(self, now: float) -> None:
        """Drop a fetch connection whose reply is overdue (a half-open socket)."""
        channel = self.channel
        connection, sent = channel._in_poll, self._sent_at
        if not connection or sent is None or not channel.health_check_interval:
            return
        if now - sent > channel.brpop_timeout + SETTLE_WAIT + \
                float(channel.health_check_interval):
            log.warning("the broker did not answer a fetch for %.0f s; connecting again",
                        now - sent)
            connection.disconnect()

    def settle(self) -> None:
        """Acknowledge and restore what a lost connection left unacked (`qos.settle`)."""
        if qos.pending():
            self.reach()
            qos.settle(self.channel.qos, self.channel.commands,
                             self.channel.connection_errors)

    def start(self, timeout: float | None = None) -> None:
        """Send the fetch script over the queues' lists, or a wait on their wake-ups.

        The wait (a BLPOP) follows a fetch that found them empty; the poller reads the
        reply (`read`).
        """
        channel = self.channel
        if timeout is None:
            timeout = channel.brpop_timeout
        if qos.pending():
            self.settle()
        queues = channel._queue_cycle.consume(len(channel.active_queues))
        if not queues or self._waiting:
            channel.qos.flush_due()  # no fetch now to carry them
        if not queues:
            return
        command: list[Any]
        connection = channel.fetch_connection()
        if connection is not self._watched:
            connection.register_connect_callback(self._connected)
            self._watched = connection
        connection.connect()  # a reconnection first: it tells which lists to name
        packed: bytes | None = None  # a fetch, the parts every fetch repeats encoded once
        if self._waiting:  # after a woken fetch took the last message, briefly first
            wait = min(timeout or SETTLE_WAIT, SETTLE_WAIT) if self._short else timeout or 0
            self._short = False
            command = ["BLPOP", *(queue_wake_key(queue) for queue in queues), wait]
        else:
            # In the fetch order (fetch_script.fetch_order): the queues' lists.
            lists = tuple((queue_list(queue, pri, channel.sep), pri, lanes.laned(queue),
                           not self.no_ack.get(queue))
                          for pri in channel.priority_steps for queue in queues)
            parts = fetch_script.fetch_parts("", lists,
                                             int(channel.ocr_max_message_bytes or 0),
                                             channel.sep)
            riding, alone = fetch_script.split_acks(parts, channel.qos.take_due())
            channel.qos.carried_not([tag for _, tag in alone])
            now = repr(time.time())
            tail = fetch_script.fetch_tail(not (self._busy or self._woken), self._woken,
                                           holders.holder(), None, riding,
                                           fetch_script.unnamed(parts, self.held_lists))
            command = self._fetch = [*parts[0], now, *parts[1], *tail]
            packed = self._packed.fetch(connection.encoder, parts, now, tail)
        channel._in_poll = connection
        self._sent_at = time.monotonic()
        try:
            if packed is None:
                connection.send_command(*command)
            else:
                connection.send_packed_command([packed])  # chunks, as pack_command gives
        except channel.connection_errors:
            channel.qos.fetch_lost()
            raise

    def read(self, **options: Any) -> bool:
        """Read the fetch's reply (or the wake-up wait's) and deliver what it took.

        The message is checked (`_admit`) between the fetch and the delivery; Empty
        when nothing was taken.
        """
        channel = self.channel
        waiting = self._waiting
        try:
            try:
                reply = channel.client.parse_response(channel.fetch_connection(),
                                                      "BLPOP" if waiting else "EVALSHA",
                                                      **options)
            except channel.connection_errors:
                channel.fetch_connection().disconnect()
                self._waiting = False
                channel.qos.fetch_lost()
                raise
            except redis.exceptions.ReadOnlyError as exc:
                # A replica now (a managed endpoint demoted the server under us): connect
                # again, to the address's new primary.
                channel.fetch_connection().disconnect()
                self._waiting = False
                channel.qos.fetch_lost()
                raise redis.exceptions.ConnectionError(f"the broker is a replica now: {exc}") \
                    from None
            except redis.exceptions.NoScriptError:
                # A server that never ran the fetch (a new one, a restart, a failover):
                # nothing was taken; the script is loaded and the next poll fetches.
                channel.qos.fetch_not_run()
                lua.reload(channel.client, self._fetch)
                raise Empty() from None
            except redis.exceptions.ResponseError as exc:
                # Nothing was taken (the script writes the record before it pops):
                # e.g. a server out of memory. Wait a turn, then fetch again (the
                # acknowledgements it carried again: deleting twice is harmless).
                channel.qos.fetch_not_run()
                self._waiting = True
                if time.monotonic() - self._fetch_refused_at > 60:
                    self._fetch_refused_at = time.monotonic()
                    log.error("the broker refused to hand out a message: %s", exc)
                raise Empty() from None
            channel.qos.fetch_read()
            if waiting or not reply:
                self._waiting = not waiting  # after a wait fetch; after nothing, wait
                self._woken = waiting and bool(reply)
                self._busy = False
                raise Empty()
            self._busy = True
            name, item, tag = reply[:3]
            name = bytes_to_str(name)
            dest = name.rsplit(channel.sep, 1)[0]
            channel._queue_cycle.rotate(dest)
            # After a wait, what is left: a burst woke once, so wake the next idle
            # worker of a service queue; nothing, so wait on the wake-ups again.
            left = int(reply[3]) if self._woken and len(reply) > 3 else None
            if left and lanes.laned(dest):
                wakeups.wake_now(channel, dest)
            self._waiting, self._short, self._woken = left == 0, left == 0, False
            tag = bytes_to_str(tag) or None
            if tag is not None:
                qos.hold(tag, list_held_key(name))
                self.held_lists.add(name)  # the fetch named it
            return self._deliver(oversized.received(item), dest, tag)
        finally:
            channel._in_poll = None
            self._sent_at = None

    def _connected(self, connection: Any) -> None:
        """The fetch connection (re)connected: its fetches name their lists again."""
        self.held_lists.clear()

    def _deliver(self, item: bytes, dest: str, tag: str | None) -> bool:
        """Check and deliver a fetched message; `tag`: the delivery tag it was recorded by.

        A recorded message is delivered under that tag (the fetch's, not its envelope's),
        which its acknowledgement names.
        """
        channel = self.channel
        message = self._admit(item, dest)
        if message is not None and tag is not None:
            message["properties"]["delivery_tag"] = tag
            self.taken = tag
            try:
                channel.connection.on_message_ready(channel, message, dest)
            except KeyError:  # its consumer was cancelled meanwhile: back to its queue
                channel.qos.restore_by_tag(tag)
                return False
            finally:
                self.taken = None
            return True
        if tag is not None:  # refused: not restored
            channel.qos.unrecord(tag).execute()
            qos.forget(tag)
        if message is None:
            return False
        channel.connection.on_message_ready(channel, message, dest)
        return True

    def get(self, queue: str) -> dict[str, Any]:
        """basic_get: the tail of the highest step's list, checked (`_admit`).

        Popped by a script that hands over a message over the bound as its ends
        (`oversized.POP`).
        """
        channel = self.channel
        for pri in channel.priority_steps:
            self.got_from = queue_list(queue, pri, channel.sep)
            item = oversized.received(lua.run(channel.commands, oversized.pop_command(
                self.got_from, channel.ocr_max_message_bytes)))
            if item:
                message = self._admit(item, queue)
                if message is None:
                    raise Empty()
                return message
        raise Empty()

    def _admit(self, raw: bytes, queue: str) -> dict[str, Any] | None:
        """The decoded envelope, or None after dead-lettering a refused message."""
        try:
            return check_message(raw, int(self.channel.ocr_max_message_bytes),
                                 tuple(self.channel.ocr_accept_content))
        except Refused as refused:
            self.refuse(raw, queue, refused)
            return None

    def refuse(self, raw: bytes, queue: str, refused: Refused) -> None:
        """Dead-letter, log and announce one refused message."""
        channel = self.channel
        entry = dead_letter(raw, queue, refused)
        log.error("refused a message on queue %s (%s: %s), task id %s; kept in %s",
                  queue, entry.code, entry.reason, entry.task_id, DEAD_LETTER_KEY)
        push_dead_letter(channel.commands, entry, int(channel.ocr_dead_letter_max),
                         int(channel.ocr_dead_letter_ttl))
        if channel.ocr_on_refused is not None:
            channel.ocr_on_refused(refused.task_id, refused.error, queue)
