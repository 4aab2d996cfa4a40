"""The Redis broker transport: kombu's, with atomic fetches and refused messages dead-lettered.

Runs in the worker parent (the only process that consumes from the broker; clients
load the class too, and only publish through it). kombu's Redis channel turns every
message it pops into a JSON object and hands it on; a body that is not a JSON object,
an envelope without its properties, a body that is not base64 or a pickled message
either kills the worker parent ("Unrecoverable error") or leaves the job PENDING.
This channel checks each raw message first, before any decoding, and dead-letters
what a worker must not take (tasks/broker/refusals.py); the worker then goes on. A
message longer than the largest it would decode (`ocr_max_message_bytes`) reaches it
as its ends and its length alone: the scripts that pop it (the fetch, and `_get`'s)
never send it whole (tasks/broker/oversized.py).

Taking a message is one atomic step on the server (`lanes.FETCH`): the script
records it in kombu's `unacked` hash and index, under a delivery tag the worker chose
(the one it delivers the message under: Lua never reads the envelope), and pops it
(kombu's BRPOP, then a record written by the worker, loses a message when Redis or the
worker parent dies between the two); one whose worker never reads the reply is
restored after the visibility timeout. The script also chooses whose message: each
client has a lane of each list, served in weighted fair shares (tasks/broker/lanes.py).
Lua cannot block, so an idle worker waits on its queues' doorbells (doorbells.py) in one
BLPOP of `ocr_idle_wait` s (10 s in workers: about a command a second idle). A publish
and a restore ring; a woken fetch that leaves messages rings again (a burst's rings
stand in one item), one that leaves none waits again (SETTLE_WAIT s first, for a message
pushed without a ring, a stock kombu client's, which waits for the end of a wait). A
fetch after an empty one first asks one EXISTS over every list and ring: its whole cost.

Publishing (lanes, doorbells' rings, replicas' WAIT) is the channel of
tasks/broker/publishing.py, which this one extends.

Selected through Celery's `broker_transport` (tasks/queue/celery_config.py), for
redis:// and rediss:// brokers (behind Sentinel: tasks/broker/sentinel_transport.py);
AMQP brokers deliver typed frames and Celery's own decode-error path covers them (junk
is acked or rejected, the worker goes on); a pickled message's FAILURE is stored there
from Celery's `task_rejected` signal.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import redis.exceptions
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str

from tasks.broker import doorbells, holders, lanes, oversized, scripts, unsettled
from tasks.broker.layout import DEAD_LETTER_KEY, queue_list, wake_key
from tasks.broker.publishing import PublishingChannel
from tasks.broker.refusals import (
    Refused,
    check_envelope,
    check_message,
    dead_letter,
    message_refused,
    push_dead_letter,
)
from tasks.broker.unsettled import QoS

log = logging.getLogger(__name__)

TRANSPORT = "tasks.broker.transport:Transport"
SETTLE_WAIT = 1.0  # seconds of a first doorbell wait after a woken fetch took the last


class Channel(PublishingChannel):
    """kombu's Redis channel: atomic fetches; each message checked before it is decoded."""

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

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        if self.connection is None or self.connection.client is None:
            # Redis went away while this worker held unacknowledged messages: kombu
            # closes the channel of a released connection, and its restore finds no
            # address (AttributeError: Celery's "Unrecoverable error"). A connection
            # error the close ignores: the worker reconnects, and the messages, still
            # in `unacked`, are restored after the visibility timeout.
            raise redis.exceptions.ConnectionError(
                "the broker connection was released; its unacknowledged messages are "
                "restored after the visibility timeout")
        return super()._connparams(asynchronous)

    _waiting = False  # the next poll waits on the doorbells (the last fetch found none)
    _short = False  # that wait is SETTLE_WAIT s at most (a message published unrung)
    _woken = False  # the last wait ended with a ring: a fetch that leaves messages rings
    _busy = False   # the last fetch took a message (or a ring woke it): no idle probe
    _taken: str | None = None  # the delivering message's tag, as fetched (`QoS.append`)
    _fetch: list[Any] = []  # the last fetch command sent (its script reloaded on NOSCRIPT)
    _fetch_refused_at = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.no_ack: dict[str, bool] = {}  # queue -> consumed unacknowledged (unsettled.py)
        super().__init__(*args, **kwargs)
        if self.ocr_idle_wait:
            # kombu's BRPOP health check allows `brpop_timeout` plus its interval
            self.brpop_timeout = float(self.ocr_idle_wait)
        unsettled.connected(self._server_run_id())
        self._settle()

    def _server_run_id(self) -> str:
        """The server process this channel reached (a failover or restart changes it)."""
        try:
            return str(self.client.info("server")["run_id"])
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
        if not self.closed:
            self.qos.fetch_lost()  # a fetch unread carried these
            self.qos.flush_due()
        if self._in_poll and self._waiting:  # kombu would read a doorbell wait to its end
            doorbells.drop_wait(self._in_poll, self.connection_errors)
            self._in_poll = None  # type: ignore[assignment]
        super().close()

    def _settle(self) -> None:
        """Acknowledge and restore what a lost connection left (tasks/broker/unsettled.py)."""
        if unsettled.pending():
            with self.conn_or_acquire() as client:
                unsettled.settle(self.qos, client, self.connection_errors)

    def basic_consume(self, queue: str, *args: Any, **kwargs: Any) -> Any:
        self.no_ack[queue] = bool(kwargs.get("no_ack", args[0] if args else False))
        tag = super().basic_consume(queue, *args, **kwargs)
        if queue in self._fanout_queues:
            # Broadcasts (remote control) arrive by PUBLISH, decoded by kombu, which hands
            # them to this queue's callback: checked there first (kombu 5.6 has no hook
            # before it, and its Message would raise on junk and stop the worker).
            deliver = self.connection._callbacks[queue]
            exchange = self._fanout_queues[queue][0]
            self.connection._callbacks[queue] = (
                lambda message: self._deliver_broadcast(message, exchange, deliver))
        return tag

    def _deliver_broadcast(self, message: Any, exchange: str, deliver: Any) -> Any:
        try:
            check_envelope(message, tuple(self.ocr_accept_content))
        except Refused as refused:
            # A broadcast is no job: no FAILURE is stored for it.
            self._refuse(json.dumps(message).encode(), f"fanout:{exchange}",
                         Refused(refused.error, None))
            return None
        return deliver(message)

    def _brpop_start(self, timeout: float | None = None) -> None:
        # kombu sends BRPOP over the queues' lists; this channel sends the fetch script over
        # them in the same order, or, after a fetch found them empty, a BLPOP on doorbells.
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
        if self._waiting:  # after a woken fetch took the last message, briefly first
            wait = min(timeout or SETTLE_WAIT, SETTLE_WAIT) if self._short else timeout or 0
            self._short = False
            command = ["BLPOP", *(self._key(wake_key(queue)) for queue in queues), wait]
        else:
            # Each list's lanes served by weighted round robin (tasks/broker/lanes.py).
            lists = [(queue_list(queue, pri, self.sep), pri, lanes.laned(queue),
                      not self.no_ack.get(queue))
                     for pri in self.priority_steps
                     for queue in sorted(queues, key=lambda q: not lanes.laned(q))]
            command = lanes.fetch_command(
                self._key(""), (self.unacked_key, self.unacked_index_key), lists,
                time.time(), self.ocr_max_message_bytes,
                probe=not (self._busy or self._woken), woken=self._woken,
                holder=holders.holder(), sep=self.sep, acks=self.qos.take_due())
            self._fetch = command
        self._in_poll = self.client.connection
        self._brpop_sent_at = time.monotonic()  # type: ignore[assignment]
        try:
            self.client.connection.send_command(*command)
        except self.connection_errors:
            self.qos.fetch_lost()
            raise

    def _brpop_read(self, **options: Any) -> bool:
        # kombu's `_brpop_read` for the fetch (or the doorbell's wait), with `_admit`
        # between the fetch and the delivery.
        waiting = self._waiting
        try:
            try:
                reply = self.client.parse_response(self.client.connection,
                                                   "BLPOP" if waiting else "EVALSHA",
                                                   **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                self._waiting = False
                self.qos.fetch_lost()
                raise
            except redis.exceptions.ReadOnlyError as exc:
                # A replica now (a managed endpoint demoted the server under us): connect
                # again, to the address's new primary.
                self.client.connection.disconnect()
                self._waiting = False
                self.qos.fetch_lost()
                raise redis.exceptions.ConnectionError(f"the broker is a replica now: {exc}") \
                    from None
            except redis.exceptions.NoScriptError:
                # A server that never ran the fetch (a new one, a restart, a failover):
                # nothing was taken; the script is loaded and the next poll fetches.
                self.qos.fetch_not_run()
                scripts.reload(self.client, self._fetch)
                raise kombu_redis.Empty() from None
            except redis.exceptions.ResponseError as exc:
                # Nothing was taken (the script writes the record before it pops):
                # e.g. a server out of memory. Wait a turn, then fetch again (the
                # acknowledgements it carried again: deleting twice is harmless).
                self.qos.fetch_not_run()
                self._waiting = True
                if time.monotonic() - self._fetch_refused_at > 60:
                    self._fetch_refused_at = time.monotonic()
                    log.error("the broker refused to hand out a message: %s", exc)
                raise kombu_redis.Empty() from None
            self.qos.fetch_read()
            if waiting or not reply:
                self._waiting = not waiting  # after a wait fetch; after nothing, wait
                self._woken = waiting and bool(reply)
                self._busy = False
                raise kombu_redis.Empty()
            self._busy = True
            name, item, tag = reply[:3]
            name = bytes_to_str(name)[len(self.global_keyprefix or ""):]
            dest = name.rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)
            # After a wait, what is left: a burst rang one item, so wake the next idle
            # worker of a service queue; nothing, so wait on the doorbells again.
            left = int(reply[3]) if self._woken and len(reply) > 3 else None
            if left and lanes.laned(dest):
                doorbells.ring_again(self, dest)
            self._waiting, self._short, self._woken = left == 0, left == 0, False
            return self._deliver_taken(oversized.received(item), dest,
                                       bytes_to_str(tag) or None)
        finally:
            self._in_poll = None  # type: ignore[assignment]
            self._since_kombu_5_7("_flush_brpop_reauth")  # a re-auth token's AUTH

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
                self.connection._deliver(message, dest)
            finally:
                self._taken = None
            return True
        if tag is not None:  # refused: not restored
            self.qos._remove_from_indices(tag).execute()
        if message is None:
            return False
        self.connection._deliver(message, dest)
        return True

    def _poll_error(self, type: str, **options: Any) -> None:
        if type == "BRPOP":  # the fetch's or the doorbell's reply
            self.client.parse_response(self.client.connection,
                                       "BLPOP" if self._waiting else "EVALSHA")
            return
        super()._poll_error(type, **options)

    def _get(self, queue: str, timeout: float | None = None) -> dict[str, Any]:
        # kombu's `_get` (basic_get and the polling fallback), with `_admit`; its RPOP a
        # script that hands over a message over the bound as its ends (`oversized.POP`).
        with self.conn_or_acquire() as client:
            for pri in self.priority_steps:
                item = oversized.received(scripts.run(client, oversized.pop_command(
                    self._key(queue_list(queue, pri, self.sep)),
                    self.ocr_max_message_bytes)))
                if item:
                    self._since_kombu_5_7("_maybe_update_queues_expire", client, queue)
                    message = self._admit(item, queue)
                    if message is None:
                        raise kombu_redis.Empty()
                    return message
            self._since_kombu_5_7("_maybe_update_queues_expire", client, queue)
            raise kombu_redis.Empty()

    def _since_kombu_5_7(self, name: str, *args: Any) -> None:
        """Call kombu's method `name` where kombu has it (5.7 on; 5.6 has no such step)."""
        method = getattr(super(), name, None)
        if method is not None:
            method(*args)

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


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with the checking `Channel`; READONLY is a lost connection.

    The server became a replica: kombu connects again, and retries a publish on the new
    primary.
    """

    Channel = Channel
    connection_errors = (*kombu_redis.Transport.connection_errors,
                         redis.exceptions.ReadOnlyError)
    # The thread of the worker's event loop, whose channels' fetches carry their
    # acknowledgements (None: no loop, every acknowledgement goes alone).
    loop_thread: int | None = None

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        self.loop_thread = threading.get_ident()
        super().register_with_event_loop(connection, loop)
