"""The Redis broker transport: kombu's, with atomic fetches and refused messages dead-lettered.

Runs in the worker parent (the only process that consumes from the broker; clients
load the class too, and only publish through it). kombu's Redis channel turns every
message it pops into a JSON object and hands it on; a body that is not a JSON object,
an envelope without its properties, a body that is not base64 or a pickled message
either kills the worker parent ("Unrecoverable error") or leaves the job PENDING.
This channel checks each raw message first, before any decoding, and dead-letters
what a worker must not take (tasks/broker/refusals.py); the worker then goes on.

Taking a message is one atomic step on the server (`lanes.FETCH_SCRIPT`): the script
records it in kombu's `unacked` hash and index, under its delivery tag, and pops it
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

Selected through Celery's `broker_transport` (tasks/queue/celery_config.py), for
redis:// and rediss:// brokers (behind Sentinel: tasks/broker/sentinel_transport.py);
AMQP brokers deliver typed frames and Celery's own decode-error path covers them (junk
is acked or rejected, the worker goes on); a pickled message's FAILURE is stored there
from Celery's `task_rejected` signal.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import redis.exceptions
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps

from tasks.broker import doorbells, holders, lanes, unsettled
from tasks.broker.bounded_reply import bounded_parser
from tasks.broker.layout import DEAD_LETTER_KEY, wake_key
from tasks.broker.queue_depth import PUBLISHED_HEADER
from tasks.broker.refusals import (
    Refused,
    check_envelope,
    check_message,
    dead_letter,
    message_refused,
    push_dead_letter,
)
from tasks.broker.unsettled import QoS
from tasks.errors import ReplicaMissing
from tasks.records.clients import CLIENT_HEADER, client_name
from tasks.state.connection import check_replicas, wait_replicas

log = logging.getLogger(__name__)

TRANSPORT = "tasks.broker.transport:Transport"
SETTLE_WAIT = 1.0  # seconds of a first doorbell wait after a woken fetch took the last

class Channel(kombu_redis.Channel):
    """kombu's Redis channel: atomic fetches; each message checked before it is decoded."""

    QoS = QoS

    from_transport_options: tuple[str, ...] = (  # type: ignore[assignment]
        *kombu_redis.Channel.from_transport_options,
        "ocr_max_message_bytes", "ocr_accept_content", "ocr_dead_letter_max",
        "ocr_dead_letter_ttl", "ocr_min_replicas", "ocr_replica_timeout",
        "ocr_refuse_unkept", "ocr_idle_wait")
    ocr_max_message_bytes = 0            # 0: no size check
    # A publish waits for this many replicas (WAIT), at most `ocr_replica_timeout` s;
    # short of them a client's publish raises ReplicaMissing, a worker's goes on.
    ocr_min_replicas = 0
    ocr_replica_timeout = 2.0
    ocr_refuse_unkept = True
    _replicas_missed_at = float("-inf")
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
        # Every connection of this channel reads a reply longer than the largest
        # message it would decode in pieces, keeping only its ends (`bounded_reply`).
        params: dict[str, Any] = super()._connparams(asynchronous)
        if self.ocr_max_message_bytes:
            params["parser_class"] = bounded_parser(params.get("protocol"),
                                                    int(self.ocr_max_message_bytes))
        return params

    _waiting = False  # the next poll waits on the doorbells (the last fetch found none)
    _short = False  # that wait is SETTLE_WAIT s at most (a message published unrung)
    _woken = False  # the last wait ended with a ring: a fetch that leaves messages rings
    _busy = False   # the last fetch took a message (or a ring woke it): no idle probe
    _taken: str | None = None  # the delivering message's tag, as fetched (`QoS.append`)
    _fetch_refused_at = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._no_ack: dict[str, bool] = {}   # queue -> consumed without acknowledgements
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

    def close(self) -> None:
        if self.active_queues and not self.closed:
            unsettled.lost()  # recent acknowledgements are looked at on the next server
        if self._in_poll and self._waiting:  # kombu would read a doorbell wait to its end
            doorbells.drop_wait(self._in_poll, self.connection_errors)
            self._in_poll = None  # type: ignore[assignment]
        super().close()

    def _settle(self) -> None:
        """Acknowledge and restore what a lost connection left (tasks/broker/unsettled.py)."""
        if unsettled.pending():
            with self.conn_or_acquire() as client:
                unsettled.settle(self.qos, client, self.connection_errors)

    @property
    def supports_batch_publish(self) -> bool:
        # One publish at a time, so that each rings its queue's doorbell (`_put`).
        return False

    def basic_consume(self, queue: str, *args: Any, **kwargs: Any) -> Any:
        self._no_ack[queue] = bool(kwargs.get("no_ack", args[0] if args else False))
        return super().basic_consume(queue, *args, **kwargs)

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        # When it was published (the age of the oldest waiting message: queue_depth.py).
        headers = message.get("headers")
        client = ""
        if isinstance(headers, dict):
            headers[PUBLISHED_HEADER] = round(time.time(), 3)
            client = client_name(headers.get(CLIENT_HEADER))
        if client and lanes.laned(queue) and not (self._expires and queue in self._expires):
            # A client's message goes to its lane of the list (tasks/broker/lanes.py).
            step = self.priority(self._get_message_priority(message, reverse=False))
            with self.conn_or_acquire() as conn:
                conn.execute_command(*lanes.push_command(
                    self._key(""), self._q_for_pri(queue, step), step, client, dumps(message)))
        else:
            super()._put(queue, message, **kwargs)
        self._ring(queue)

    def _do_restore_message(self, payload: Any, exchange: str, routing_key: str, pipe: Any,
                            leftmost: bool = False) -> None:
        # kombu's restore (in its WATCH/MULTI), a client's message back to its lane.
        headers = payload.get("headers") if isinstance(payload, dict) else None
        client = client_name(headers.get(CLIENT_HEADER)) if isinstance(headers, dict) else ""
        queues = list(self._lookup(exchange, routing_key)) if client else []
        if not isinstance(headers, dict) or not queues or \
                not all(map(lanes.laned, queues)) or \
                not isinstance(payload.get("properties"), dict):
            super()._do_restore_message(payload, exchange, routing_key, pipe, leftmost)
            try:  # as kombu's restore, a message without a route is logged, not raised
                queues = queues or list(self._lookup(exchange, routing_key))
            except Exception:  # noqa: BLE001
                queues = []
            doorbells.ring(pipe, self._key, queues)
            return
        headers["redelivered"] = True
        payload["properties"].setdefault("delivery_info", {})["redelivered"] = True
        step = self.priority(self._get_message_priority(payload, reverse=False))
        for queue in queues:
            pipe.execute_command(*lanes.push_command(
                self._key(""), self._q_for_pri(queue, step), step, client, dumps(payload),
                first=not leftmost))
        doorbells.ring(pipe, self._key, queues)

    def _size(self, queue: str) -> int:
        # kombu's count (queue_declare's message count) with the lanes' messages.
        size = int(super()._size(queue))
        if lanes.laned(queue):
            with self.conn_or_acquire() as conn:
                size += int(conn.execute_command(*lanes.sizes_command(self._key(""), [
                    (self._q_for_pri(queue, pri), self.priority(pri))
                    for pri in self.priority_steps])))
        return size

    def _ring(self, queue: str) -> None:
        """Wake one worker waiting on `queue` (a missed ring costs up to `ocr_idle_wait`).

        With `ocr_min_replicas`, the ring's WAIT holds the publish until that many
        replicas have the message (the ring is written after it: its WAIT covers it).
        """
        replicas = int(self.ocr_min_replicas or 0)
        if not self.ocr_refuse_unkept and time.monotonic() - self._replicas_missed_at < 10:
            replicas = 0  # a worker's replicas were missing just now: no wait per publish
        timeout = float(self.ocr_replica_timeout)
        try:
            with self.conn_or_acquire() as client, \
                    client.pipeline(transaction=False) as pipe:
                doorbells.ring(pipe, self._key, [queue])
                replies = wait_replicas(pipe, replicas, timeout).execute()
            check_replicas(replies, replicas, timeout, f"a message to queue {queue}")
        except ReplicaMissing:
            if self.ocr_refuse_unkept:
                raise
            Channel._replicas_missed_at = time.monotonic()
            log.warning("a message to queue %s reached no Redis replica within %g s; "
                        "publishing without waiting for replicas for 10 s", queue, timeout)
        except (*self.connection_errors, redis.exceptions.ResponseError) as exc:
            if replicas and self.ocr_refuse_unkept:
                raise ReplicaMissing(f"a message to queue {queue} was sent, and Redis went "
                                     f"away before a replica confirmed it ({exc!r})") from exc
            if replicas and isinstance(exc, self.connection_errors):
                # A worker's message the primary may have taken to its grave: kombu sends
                # it again on the new connection (a second copy is read once: claims).
                raise
            # The message is published; it is taken at the next fetch.
            log.debug("could not ring the doorbell of %s: %r", queue, exc)

    def _key(self, name: str) -> str:
        """`name` with kombu's global key prefix (commands sent raw are not prefixed)."""
        return f"{self.global_keyprefix or ''}{name}"

    def _brpop_start(self, timeout: float | None = None) -> None:
        # kombu sends BRPOP over the queues' lists; this channel sends the fetch script over
        # them in the same order, or, after a fetch found them empty, a BLPOP on doorbells.
        if timeout is None:
            timeout = self.brpop_timeout
        if unsettled.pending():
            self._settle()
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        command: list[Any]
        if self._waiting:  # after a woken fetch took the last message, briefly first
            wait = min(timeout or SETTLE_WAIT, SETTLE_WAIT) if self._short else timeout or 0
            self._short = False
            command = ["BLPOP", *(self._key(wake_key(queue)) for queue in queues), wait]
        else:
            # Each list's lanes served by weighted round robin (tasks/broker/lanes.py).
            lists = [(self._q_for_pri(queue, pri), self.priority(pri), lanes.laned(queue),
                      not self._no_ack.get(queue))
                     for pri in self.priority_steps
                     for queue in sorted(queues, key=lambda q: not lanes.laned(q))]
            command = lanes.fetch_command(self._key(""), (self.unacked_key,
                                                          self.unacked_index_key),
                                          lists, time.time(), self.ocr_max_message_bytes,
                                          probe=not (self._busy or self._woken), woken=self._woken,
                                          holder=holders.holder())
        self._in_poll = self.client.connection
        self._brpop_sent_at = time.monotonic()  # type: ignore[assignment]
        self.client.connection.send_command(*command)

    def _brpop_read(self, **options: Any) -> bool:
        # kombu's `_brpop_read` for the fetch (or the doorbell's wait), with `_admit`
        # between the fetch and the delivery.
        waiting = self._waiting
        try:
            try:
                reply = self.client.parse_response(self.client.connection,
                                                   "BLPOP" if waiting else "EVAL",
                                                   **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                self._waiting = False
                raise
            except redis.exceptions.ReadOnlyError as exc:
                # A replica now (a managed endpoint demoted the server under us): connect
                # again, to the address's new primary.
                self.client.connection.disconnect()
                self._waiting = False
                raise redis.exceptions.ConnectionError(f"the broker is a replica now: {exc}") \
                    from None
            except redis.exceptions.ResponseError as exc:
                # Nothing was taken (the script writes the record before it pops):
                # e.g. a server out of memory. Wait a turn, then fetch again.
                self._waiting = True
                if time.monotonic() - self._fetch_refused_at > 60:
                    self._fetch_refused_at = time.monotonic()
                    log.error("the broker refused to hand out a message: %s", exc)
                raise kombu_redis.Empty() from None
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
            return self._deliver_taken(item, dest, bytes_to_str(tag) or None)
        finally:
            self._in_poll = None  # type: ignore[assignment]
            self._flush_brpop_reauth()

    def _deliver_taken(self, item: bytes, dest: str, tag: str | None) -> bool:
        """Check and deliver a fetched message; `tag`: the delivery tag it was recorded by."""
        message = self._admit(item, dest)
        if message is not None and tag is not None \
                and message["properties"]["delivery_tag"] == tag:
            self._taken = tag
            try:
                self.connection._deliver(message, dest)
            finally:
                self._taken = None
            return True
        if tag is not None:
            # Refused, or recorded under a tag that is not its envelope's: not restored.
            self.qos._remove_from_indices(tag).execute()
        if message is None:
            return False
        self.connection._deliver(message, dest)
        return True

    def _poll_error(self, type: str, **options: Any) -> None:
        if type == "BRPOP":  # the fetch's or the doorbell's reply
            self.client.parse_response(self.client.connection, "BLPOP" if self._waiting else "EVAL")
            return
        super()._poll_error(type, **options)

    def _get(self, queue: str, timeout: float | None = None) -> dict[str, Any]:
        # kombu's `_get` (basic_get and the polling fallback), with `_admit`.
        with self.conn_or_acquire() as client:
            for pri in self.priority_steps:
                item = client.rpop(self._q_for_pri(queue, pri))
                if item:
                    self._maybe_update_queues_expire(client, queue)
                    message = self._admit(item, queue)
                    if message is None:
                        raise kombu_redis.Empty()
                    return message
            self._maybe_update_queues_expire(client, queue)
            raise kombu_redis.Empty()

    def _deliver_fanout_message(self, message: Any, exchange: str) -> bool:
        # Broadcasts (remote control) arrive by PUBLISH, already decoded by kombu.
        try:
            check_envelope(message, tuple(self.ocr_accept_content))
        except Refused as refused:
            # A broadcast is no job: no FAILURE is stored for it.
            self._refuse(json.dumps(message).encode(), f"fanout:{exchange}",
                         Refused(refused.error, None))
            return False
        return bool(super()._deliver_fanout_message(message, exchange))

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

    The server became a replica: kombu connects again, and retries a publish on the new primary.
    """

    Channel = Channel
    connection_errors = (*kombu_redis.Transport.connection_errors,
                         redis.exceptions.ReadOnlyError)
