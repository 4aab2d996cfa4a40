"""The Redis broker transport: kombu's, with malformed and refused messages dead-lettered.

Runs in the worker parent (the only process that consumes from the broker; clients
load the class too, and only publish through it). kombu's Redis channel turns every
message it pops into a JSON object and hands it on; a body that is not a JSON object,
an envelope without its properties, a body that is not base64 or a pickled message
either kills the worker parent ("Unrecoverable error") or leaves the job PENDING.
This channel checks each raw message first, before any decoding:

- larger than the inline input limit allows (`input_too_large`), by its raw length,
  which the channel's connections read without holding such a message whole
  (`bounded_reply`: only its ends are kept, whatever Redis's own bound);
- not a kombu envelope (`malformed_message`): not JSON, not an object, no
  `properties.delivery_tag`/`delivery_info`, headers not an object, body not base64;
- a content type the app does not accept, e.g. pickle (`content_refused`).

A refused message is pushed to `DEAD_LETTER_KEY` (a capped list with a TTL; each
entry JSON with the reason, the time, the queue and the first bytes of the message)
and `message_refused` is sent with the task id when one could be read; the worker
stores that job's FAILURE (`connect_refusals`). The worker then goes on consuming.

Selected through Celery's `broker_transport` (tasks/queue/celery_config.py), for
redis:// brokers only; AMQP brokers deliver typed frames and Celery's own
decode-error path covers them (junk is acked or rejected, the worker goes on); a
pickled message's FAILURE is stored there from Celery's `task_rejected` signal.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import redis.exceptions
from celery.signals import task_rejected
from celery.utils.dispatch import Signal
from kombu.exceptions import ContentDisallowed
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from tasks.errors import ContentRefused, InputTooLarge, MalformedMessage, OcrError
from tasks.queue.bounded_reply import ENDS, bounded_parser, reply_size
from tasks.state.keys import DEAD_LETTER_KEY

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)

TRANSPORT = "tasks.queue.transport:Transport"
# Sent in the worker parent for each refused message: task_id (None when unreadable),
# error (an OcrError) and queue.
message_refused = Signal(name="message_refused", providing_args={"task_id", "error", "queue"})

RAW_KEPT = 4096          # bytes of a refused message kept in its dead-letter entry
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_CORRELATION_ID = re.compile(rb'"correlation_id"\s*:\s*"([\w.:-]{1,200})"')
_HEADER_ID = re.compile(rb'"id"\s*:\s*"([\w.:-]{1,200})"')


@dataclass(frozen=True)
class DeadLetter:
    """One refused message, as stored (JSON) in the dead-letter list."""

    time: float
    queue: str
    code: str
    reason: str
    task_id: str | None
    size: int
    raw: str          # the first RAW_KEPT bytes, undecodable bytes backslash-escaped
    truncated: bool


class Refused(Exception):
    """Internal: `check_message` refuses a message (carries the public error)."""

    def __init__(self, error: OcrError, task_id: str | None) -> None:
        super().__init__(error.code)
        self.error = error
        self.task_id = task_id


def check_message(raw: bytes, max_bytes: int, accept: tuple[str, ...]) -> dict[str, Any]:
    """The kombu envelope of `raw`, or `Refused` when a worker must not take it."""
    size = reply_size(raw)
    if max_bytes and size > max_bytes:
        raise Refused(InputTooLarge(f"the message is {size} bytes; an input within "
                                    "the limit makes a smaller one"), _id_from_raw(raw))
    try:
        payload = loads(bytes_to_str(raw))
    except (ValueError, UnicodeDecodeError):
        raise Refused(MalformedMessage("the message is not JSON"), None) from None
    return check_envelope(payload, accept)


def check_envelope(payload: Any, accept: tuple[str, ...]) -> dict[str, Any]:
    """`payload` when it is a kombu envelope of an accepted content type, else `Refused`."""
    if not isinstance(payload, dict):
        raise Refused(MalformedMessage("the message is not a JSON object"), None)
    headers = payload.get("headers")
    task_id = _task_id(payload)
    if headers is not None and not isinstance(headers, dict):
        raise Refused(MalformedMessage("the message's headers are not an object"), task_id)
    properties = payload.get("properties")
    if not isinstance(properties, dict) or "delivery_tag" not in properties:
        raise Refused(MalformedMessage("the message has no properties.delivery_tag"), task_id)
    info = properties.get("delivery_info")
    if not isinstance(info, dict) or not {"exchange", "routing_key"} <= set(info):
        raise Refused(MalformedMessage("the message has no properties.delivery_info"),
                      task_id)
    body = payload.get("body")
    if body is not None and not isinstance(body, str):
        raise Refused(MalformedMessage("the message body is not a string"), task_id)
    encoding = properties.get("body_encoding")
    if encoding not in (None, "base64"):
        raise Refused(MalformedMessage("the message body encoding is not base64"), task_id)
    if body and encoding == "base64" and (len(body) % 4 or not _BASE64.fullmatch(body)):
        raise Refused(MalformedMessage("the message body is not base64"), task_id)
    content_type = payload.get("content-type")
    if content_type not in accept:
        raise Refused(ContentRefused(f"content type {str(content_type)[:60]!r} is not "
                                     "accepted (JSON only)"), task_id)
    return payload


def _task_id(payload: dict[str, Any]) -> str | None:
    """The Celery task id of an envelope: protocol 2 headers, else the correlation id."""
    headers = payload.get("headers")
    if isinstance(headers, dict) and isinstance(headers.get("id"), str):
        return str(headers["id"])[:200]
    properties = payload.get("properties")
    if isinstance(properties, dict) and isinstance(properties.get("correlation_id"), str):
        return str(properties["correlation_id"])[:200]
    return None


def _id_from_raw(raw: bytes) -> str | None:
    """The task id of a message too large to decode, from its first and last bytes."""
    ends = raw[:ENDS] + b"\n" + raw[-ENDS:]
    found = _CORRELATION_ID.findall(ends) or _HEADER_ID.findall(ends)
    return found[-1].decode() if found else None


def dead_letter(raw: bytes, queue: str, refused: Refused) -> DeadLetter:
    head = raw[:RAW_KEPT]
    return DeadLetter(time=round(time.time(), 3), queue=queue, code=refused.error.code,
                      reason=refused.error.message, task_id=refused.task_id,
                      size=reply_size(raw), raw=head.decode("utf-8", "backslashreplace"),
                      truncated=reply_size(raw) > RAW_KEPT)


def read_dead_letters(client: Any, count: int = 100) -> list[DeadLetter]:
    """The newest `count` dead-letter entries (for operators and tests)."""
    return [DeadLetter(**json.loads(entry))
            for entry in client.lrange(DEAD_LETTER_KEY, 0, count - 1)]


class Channel(kombu_redis.Channel):
    """kombu's Redis channel; each popped message is checked before it is decoded."""

    from_transport_options: tuple[str, ...] = (  # type: ignore[assignment]
        *kombu_redis.Channel.from_transport_options,
        "ocr_max_message_bytes", "ocr_accept_content", "ocr_dead_letter_max",
        "ocr_dead_letter_ttl")
    ocr_max_message_bytes = 0            # 0: no size check
    ocr_accept_content: tuple[str, ...] = ("application/json",)
    ocr_dead_letter_max = 1000
    ocr_dead_letter_ttl = 7 * 86400

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        if self.connection.client is None:
            # Redis went away while this worker held unacknowledged messages: kombu
            # closes the channel of a connection it has already released, and its
            # restore of those messages finds no address (AttributeError), which
            # Celery takes for an "Unrecoverable error" and the worker parent exits
            # (found by the chaos soak, issue 43). A connection error instead is one
            # the close ignores: the worker reconnects, and the messages, still in
            # Redis's `unacked` set, are restored after the visibility timeout.
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

    def _brpop_read(self, **options: Any) -> bool:
        # kombu's `_brpop_read`, with `_admit` between the pop and the delivery.
        try:
            try:
                dest__item = self.client.parse_response(self.client.connection, "BRPOP",
                                                        **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if not dest__item:
                raise kombu_redis.Empty()
            dest, item = dest__item
            dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)
            message = self._admit(item, dest)
            if message is None:
                return False
            self.connection._deliver(message, dest)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]
            self._flush_brpop_reauth()

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
        self._push_dead_letter(entry)
        message_refused.send(sender=self, task_id=refused.task_id, error=refused.error,
                             queue=queue)

    def _push_dead_letter(self, entry: DeadLetter) -> None:
        with self.conn_or_acquire() as client, client.pipeline() as pipe:
            pipe.lpush(DEAD_LETTER_KEY, json.dumps(asdict(entry)))
            pipe.ltrim(DEAD_LETTER_KEY, 0, int(self.ocr_dead_letter_max) - 1)
            pipe.expire(DEAD_LETTER_KEY, int(self.ocr_dead_letter_ttl))
            pipe.execute()


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with the checking `Channel`."""

    Channel = Channel


def connect_refusals(app: Celery) -> None:
    """Store a FAILURE for each refused message whose task id was read (worker parent).

    Two sources: this transport's `message_refused` (Redis), and Celery's own
    `task_rejected` for a message it refused to deserialize (ContentDisallowed), which
    is how a pickled message ends on other brokers (AMQP) instead of staying PENDING.
    """

    def on_refused(sender: Any, task_id: str | None, error: OcrError, queue: str,
                   **_: Any) -> None:
        if task_id is not None:
            app.backend.mark_as_failure(task_id, error)

    def on_rejected(sender: Any, message: Any, exc: BaseException | None,
                    **_: Any) -> None:
        headers = getattr(message, "headers", None)
        if isinstance(exc, ContentDisallowed) and isinstance(headers, dict) \
                and isinstance(headers.get("id"), str):
            app.backend.mark_as_failure(headers["id"], ContentRefused(
                f"content type {str(message.content_type)[:60]!r} is not accepted "
                "(JSON only)"))

    message_refused.connect(on_refused, weak=False, dispatch_uid="ocr-refusals")
    task_rejected.connect(on_rejected, weak=False, dispatch_uid="ocr-rejected")
