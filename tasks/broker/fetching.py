"""The broker's consuming channel: atomic fetches, each message checked before it is decoded.

Runs in the worker parent (the only process that consumes task messages; clients,
Flower and the exporter load it too, and consume only replies and events). A body that
is not a JSON object, an envelope without its properties, a body that is not base64 or
a pickled message would either kill the worker parent ("Unrecoverable error") or leave
the job PENDING. This channel checks each raw message first, before any decoding, and
dead-letters what a worker must not take (tasks/broker/refusals.py); the worker then goes on. A
message longer than the largest it would decode (`ocr_max_message_bytes`) reaches it
as its ends and its length alone: the scripts that pop it (the fetch, and `_get`'s)
never send it whole (tasks/broker/oversized.py).

Taking a message is one atomic step on the server (`fetch_script.FETCH`): the script
holds it in one record (tasks/broker/held.py), under a delivery tag the worker chose
(the one it delivers the message under: Lua never reads the envelope), and pops it
(a BRPOP, then a record written by the worker, would lose a message when Redis or the
worker parent dies between the two); one whose worker never reads the reply is
restored after the visibility timeout. The script also chooses whose message: each
client has a lane of each list, served in weighted fair shares (tasks/broker/lanes.py).
Lua cannot block, so an idle worker waits on its queues' doorbells (doorbells.py) in one
BLPOP of `ocr_idle_wait` s (10 s in workers: about a command a second idle). A publish
and a restore ring; a woken fetch that leaves messages rings again (a burst's rings
stand in one item), one that leaves none waits again (SETTLE_WAIT s first, for a message
pushed without a ring, a stock kombu client's, which waits for the end of a wait); one
that takes nothing empties its queues' doorbells (doorbells.py). A fetch after an
empty one first asks one EXISTS over every list and ring: its whole cost.

Publishing (lanes, doorbells' rings, replicas' WAIT) is the channel of
tasks/broker/publishing.py, which this one extends; the event loop drives each
channel's fetches through tasks/broker/poller.py (kombu's `register_with_event_loop`).

The transport that makes these channels is tasks/broker/transport.py, selected
through Celery's `broker_transport` (tasks/queue/celery_config.py), for redis:// and
rediss:// brokers (behind Sentinel: tasks/broker/sentinel_transport.py);
AMQP brokers deliver typed frames and Celery's own decode-error path covers them (junk
is acked or rejected, the worker goes on); a pickled message's FAILURE is stored there
from Celery's `task_rejected` signal.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from queue import Empty
from typing import Any

import redis.exceptions
from kombu.utils.encoding import bytes_to_str

from tasks.broker import doorbells, fetch_script, holders, lanes, oversized, unsettled
from tasks.broker.layout import DEAD_LETTER_KEY, list_held_key, queue_list, queue_wake_key
from tasks.broker.publishing import PublishingChannel
from tasks.broker.qos import QoS
from tasks.broker.refusals import (
    Refused,
    check_envelope,
    check_message,
    dead_letter,
    message_refused,
    push_dead_letter,
)
from tasks.broker.wire import FetchBytes
from tasks.state import lua

log = logging.getLogger(__name__)

SETTLE_WAIT = 1.0  # seconds of a first doorbell wait after a woken fetch took the last


class Channel(PublishingChannel):
    """The consuming channel: atomic fetches; each message checked before it is decoded."""

    QoS = QoS

    from_transport_options: tuple[str, ...] = (
        *PublishingChannel.from_transport_options,
        "ocr_max_message_bytes", "ocr_accept_content", "ocr_dead_letter_max",
        "ocr_dead_letter_ttl", "ocr_idle_wait")
    ocr_max_message_bytes = 0            # 0: no size check
    ocr_accept_content: tuple[str, ...] = ("application/json",)
    ocr_dead_letter_max = 1000
    ocr_dead_letter_ttl = 7 * 86400
    # Seconds an idle consumer waits on its doorbells in one BLPOP (0: kombu's
    # `brpop_timeout`, 1 s; workers: tasks/queue/celery_config.py IDLE_WAIT).
    ocr_idle_wait = 0.0

    _waiting = False  # the next poll waits on the doorbells (the last fetch found none)
    _short = False  # that wait is SETTLE_WAIT s at most (a message published unrung)
    _woken = False  # the last wait ended with a ring: a fetch that leaves messages rings
    _busy = False   # the last fetch took a message (or a ring woke it): no idle probe
    _taken: str | None = None  # the delivering message's tag, as fetched (`QoS.append`)
    _fetch: list[Any] = []  # the last fetch command sent (its script reloaded on NOSCRIPT)
    _fetch_refused_at = 0.0
    got_from = ""  # the list `basic_get` took its last message from (`QoS.append`)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.no_ack: dict[str, bool] = {}  # queue -> consumed unacknowledged (unsettled.py)
        # the lists this channel saw named in HELD_LISTS_KEY (its fetch names the others
        # as it holds a message of them: tasks/broker/fetch_script.py), since its fetch
        # connection last connected: a server reached anew (a failover) may lack them
        self.held_lists: set[str] = set()
        self._watched: Any = None
        self._packed = FetchBytes()
        super().__init__(*args, **kwargs)
        if self.ocr_idle_wait:
            # the health check allows a wait `brpop_timeout` plus its interval
            self.brpop_timeout = float(self.ocr_idle_wait)
        self._settle()

    _reached = False  # the server this channel reached was told to `unsettled`

    def _reach(self) -> None:
        """Tell `unsettled` which server this channel reached, once.

        A consuming channel's step: a channel that only publishes asks nothing.
        """
        if not self._reached:
            unsettled.connected(self._server_run_id())
            self._reached = True

    def _server_run_id(self) -> str:
        """The server process this channel reached (a failover or restart changes it)."""
        try:
            return str(self.commands.info("server")["run_id"])
        except redis.exceptions.ResponseError:  # INFO not allowed: never the same
            return f"unknown-{id(self)}-{time.monotonic()}"

    def fetch_follows(self) -> bool:
        """Whether this channel's next poll is a fetch, on this loop's next turn.

        Then an acknowledgement rides on that fetch (`QoS.ack`): the worker's event
        loop starts a fetch on every turn a channel is consuming, can take a message,
        and has no fetch or doorbell wait in flight (an ack frees its place). An
        acknowledgement from another thread (the threads pool's) goes alone.
        """
        return bool(getattr(self.connection, "loop_thread", None) == threading.get_ident()
                    and not self._in_poll and not self._waiting and not self.closed
                    and self.active_queues)

    def close(self) -> None:
        if self.active_queues and not self.closed:
            unsettled.lost()  # recent acknowledgements are looked at on the next server
        if self._in_poll and not self._waiting and not self.closed:
            # A fetch in flight holds a recorded message: read it, so that the close
            # puts it back on its queue now (no child started it).
            try:
                self.fetch_read()
            except (Empty, *self.connection_errors):
                pass
        if not self.closed:
            self.qos.fetch_lost()  # a fetch unread carried these
            self.qos.flush_due()
        if self._in_poll and self._waiting:  # a doorbell wait is dropped, not read out
            doorbells.drop_wait(self._in_poll, self.connection_errors)
            self._in_poll = None
        super().close()

    def fetch_dropped(self) -> None:
        self._waiting = False
        self.qos.fetch_lost()

    def check_health(self, now: float) -> None:
        super().check_health(now)
        connection, sent = self._in_poll, self._fetch_sent_at
        if not connection or sent is None or not self.health_check_interval:
            return
        if now - sent > self.brpop_timeout + SETTLE_WAIT + float(self.health_check_interval):
            log.warning("the broker did not answer a fetch for %.0f s; connecting again",
                        now - sent)
            connection.disconnect()

    def _settle(self) -> None:
        """Acknowledge and restore what a lost connection left (tasks/broker/unsettled.py)."""
        if unsettled.pending():
            self._reach()
            with self.conn_or_acquire() as client:
                unsettled.settle(self.qos, client, self.connection_errors)

    def basic_consume(self, queue: str, *args: Any, **kwargs: Any) -> Any:
        self.no_ack[queue] = bool(kwargs.get("no_ack", args[0] if args else False))
        self._reach()
        return super().basic_consume(queue, *args, **kwargs)

    def deliver_broadcast(self, message: Any, exchange: str, queue: str) -> bool:
        # Broadcasts (remote control) are checked as task messages are: a refused one
        # is dead-lettered (a broadcast is no job: no FAILURE is stored for it).
        try:
            check_envelope(message, tuple(self.ocr_accept_content))
        except Refused as refused:
            raw = message if isinstance(message, bytes) else json.dumps(message).encode()
            self._refuse(raw, f"fanout:{exchange}", Refused(refused.error, None))
            return False
        return super().deliver_broadcast(message, exchange, queue)

    _fetch_sent_at: float | None = None

    def fetch_start(self, timeout: float | None = None) -> None:
        """Send the fetch script over the queues' lists, or a wait on their doorbells.

        The wait (a BLPOP) follows a fetch that found them empty; the poller reads the
        reply (`fetch_read`).
        """
        if timeout is None:
            timeout = self.brpop_timeout
        if unsettled.pending():
            self._settle()
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues or self._waiting:
            self.qos.flush_due()  # no fetch now to carry them
        if not queues:
            return
        command: list[Any]
        connection = self.fetch_connection()
        if connection is not self._watched:
            connection.register_connect_callback(self._connected)
            self._watched = connection
        connection.connect()  # a reconnection first: it tells which lists to name
        packed: bytes | None = None  # a fetch, the parts every fetch repeats encoded once
        if self._waiting:  # after a woken fetch took the last message, briefly first
            wait = min(timeout or SETTLE_WAIT, SETTLE_WAIT) if self._short else timeout or 0
            self._short = False
            command = ["BLPOP", *(queue_wake_key(self._key(queue)) for queue in queues),
                       wait]
        else:
            # Each list's lanes served by weighted round robin (tasks/broker/lanes.py).
            lists = tuple((queue_list(queue, pri, self.sep), pri, lanes.laned(queue),
                           not self.no_ack.get(queue))
                          for pri in self.priority_steps
                          for queue in sorted(queues, key=lambda q: not lanes.laned(q)))
            parts = fetch_script.fetch_parts(self._key(""), lists,
                                             int(self.ocr_max_message_bytes or 0), self.sep)
            riding, alone = fetch_script.split_acks(parts, self.qos.take_due())
            self.qos.carried_not([tag for _, tag in alone])
            now = repr(time.time())
            tail = fetch_script.fetch_tail(not (self._busy or self._woken), self._woken,
                                           holders.holder(), None, riding,
                                           fetch_script.unnamed(parts, self.held_lists))
            command = self._fetch = [*parts[0], now, *parts[1], *tail]
            packed = self._packed.fetch(connection.encoder, parts, now, tail)
        self._in_poll = connection
        self._fetch_sent_at = time.monotonic()
        try:
            if packed is None:
                connection.send_command(*command)
            else:
                connection.send_packed_command([packed])  # chunks, as pack_command gives
        except self.connection_errors:
            self.qos.fetch_lost()
            raise

    def fetch_read(self, **options: Any) -> bool:
        """Read the fetch's reply (or the doorbell wait's) and deliver what it took.

        The message is checked (`_admit`) between the fetch and the delivery; Empty
        when nothing was taken.
        """
        waiting = self._waiting
        try:
            try:
                reply = self.client.parse_response(self.fetch_connection(),
                                                   "BLPOP" if waiting else "EVALSHA",
                                                   **options)
            except self.connection_errors:
                self.fetch_connection().disconnect()
                self._waiting = False
                self.qos.fetch_lost()
                raise
            except redis.exceptions.ReadOnlyError as exc:
                # A replica now (a managed endpoint demoted the server under us): connect
                # again, to the address's new primary.
                self.fetch_connection().disconnect()
                self._waiting = False
                self.qos.fetch_lost()
                raise redis.exceptions.ConnectionError(f"the broker is a replica now: {exc}") \
                    from None
            except redis.exceptions.NoScriptError:
                # A server that never ran the fetch (a new one, a restart, a failover):
                # nothing was taken; the script is loaded and the next poll fetches.
                self.qos.fetch_not_run()
                lua.reload(self.client, self._fetch)
                raise Empty() from None
            except redis.exceptions.ResponseError as exc:
                # Nothing was taken (the script writes the record before it pops):
                # e.g. a server out of memory. Wait a turn, then fetch again (the
                # acknowledgements it carried again: deleting twice is harmless).
                self.qos.fetch_not_run()
                self._waiting = True
                if time.monotonic() - self._fetch_refused_at > 60:
                    self._fetch_refused_at = time.monotonic()
                    log.error("the broker refused to hand out a message: %s", exc)
                raise Empty() from None
            self.qos.fetch_read()
            if waiting or not reply:
                self._waiting = not waiting  # after a wait fetch; after nothing, wait
                self._woken = waiting and bool(reply)
                self._busy = False
                raise Empty()
            self._busy = True
            name, item, tag = reply[:3]
            name = bytes_to_str(name)
            dest = name.rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)
            # After a wait, what is left: a burst rang one item, so wake the next idle
            # worker of a service queue; nothing, so wait on the doorbells again.
            left = int(reply[3]) if self._woken and len(reply) > 3 else None
            if left and lanes.laned(dest):
                doorbells.ring_now(self, dest)
            self._waiting, self._short, self._woken = left == 0, left == 0, False
            tag = bytes_to_str(tag) or None
            if tag is not None:
                unsettled.hold(tag, list_held_key(name))
                self.held_lists.add(name)  # the fetch named it
            return self._deliver_taken(oversized.received(item), dest, tag)
        finally:
            self._in_poll = None
            self._fetch_sent_at = None

    def _connected(self, connection: Any) -> None:
        """The fetch connection (re)connected: its fetches name their lists again."""
        self.held_lists.clear()

    def _deliver_taken(self, item: bytes, dest: str, tag: str | None) -> bool:
        """Check and deliver a fetched message; `tag`: the delivery tag it was recorded by.

        A recorded message is delivered under that tag (the fetch's, not its envelope's),
        which its acknowledgement names.
        """
        message = self._admit(item, dest)
        if message is not None and tag is not None:
            message["properties"]["delivery_tag"] = tag
            self._taken = tag
            try:
                self.connection.on_message_ready(self, message, dest)
            except KeyError:  # its consumer was cancelled meanwhile: back to its queue
                self.qos.restore_by_tag(tag)
                return False
            finally:
                self._taken = None
            return True
        if tag is not None:  # refused: not restored
            self.qos.unrecord(tag).execute()
            unsettled.forget(tag)
        if message is None:
            return False
        self.connection.on_message_ready(self, message, dest)
        return True

    def _get(self, queue: str, timeout: float | None = None) -> dict[str, Any]:
        # basic_get: the tail of the highest step's list, by a script that hands over a
        # message over the bound as its ends (`oversized.POP`), checked (`_admit`).
        with self.conn_or_acquire() as client:
            for pri in self.priority_steps:
                self.got_from = self._key(queue_list(queue, pri, self.sep))
                item = oversized.received(lua.run(client, oversized.pop_command(
                    self.got_from, self.ocr_max_message_bytes)))
                if item:
                    message = self._admit(item, queue)
                    if message is None:
                        raise Empty()
                    return message
            raise Empty()

    def _admit(self, raw: bytes, queue: str) -> dict[str, Any] | None:
        """The decoded envelope, or None after dead-lettering a refused message."""
        try:
            return check_message(raw, int(self.ocr_max_message_bytes),
                                 tuple(self.ocr_accept_content))
        except Refused as refused:
            self._refuse(raw, queue, refused)
            return None

    def _refuse(self, raw: bytes, queue: str, refused: Refused) -> None:
        """Dead-letter, log and announce one refused message."""
        entry = dead_letter(raw, queue, refused)
        log.error("refused a message on queue %s (%s: %s), task id %s; kept in %s",
                  queue, entry.code, entry.reason, entry.task_id, DEAD_LETTER_KEY)
        with self.conn_or_acquire() as client:
            push_dead_letter(client, entry, int(self.ocr_dead_letter_max),
                             int(self.ocr_dead_letter_ttl))
        message_refused.send(sender=self, task_id=refused.task_id, error=refused.error,
                             queue=queue)
