"""Broker messages a worker must not take: the checks, the dead-letter list, their FAILUREs.

Runs in the worker parent: tasks/broker/fetching.py checks each message it fetches
before it is decoded. A message is refused when it is:

- larger than the inline input limit allows (`input_too_large`), by its raw length
  (such a message reaches the worker as its ends and its length alone: `oversized`),
  its task id read from those ends;
- not a kombu envelope (`malformed_message`): not JSON, not an object, no
  `properties.delivery_tag`/`delivery_info`, headers not an object, body not base64;
- a content type the app does not accept, e.g. pickle (`content_refused`).

A refused message is pushed to `DEAD_LETTER_KEY` (a capped list with a TTL; each
entry JSON with the reason, the time, the queue and the first bytes of the message)
and the channel's `ocr_on_refused` is told, with the task id when one could be read:
the queue layer's, which stores that job's FAILURE (tasks/queue/parent_endings.py:
`connect_refusals`).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from tasks.broker.layout import DEAD_LETTER_COUNT_KEY, DEAD_LETTER_KEY
from tasks.broker.oversized import ENDS, reply_size
from tasks.errors import ContentRefused, InputTooLarge, MalformedMessage, OcrError

# Told of each refused message (a transport option): its task id (None when unreadable),
# the error and the queue.
OnRefused = Callable[[str | None, OcrError, str], None]

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


def push_dead_letter(client: Any, entry: DeadLetter, keep: int, ttl: int) -> None:
    """Keep `entry` in the capped dead-letter list (`keep` entries, `ttl` s) and count it."""
    with client.pipeline() as pipe:
        pipe.lpush(DEAD_LETTER_KEY, json.dumps(asdict(entry)))
        pipe.ltrim(DEAD_LETTER_KEY, 0, keep - 1)
        pipe.expire(DEAD_LETTER_KEY, ttl)
        # counted past the list's cap (`ocr_dead_letters_total`: an alert's figure)
        pipe.incr(DEAD_LETTER_COUNT_KEY).expire(DEAD_LETTER_COUNT_KEY, ttl)
        pipe.execute()


def read_dead_letters(client: Any, count: int = 100) -> list[DeadLetter]:
    """The newest `count` dead-letter entries (for operators and tests)."""
    return [DeadLetter(**json.loads(entry))
            for entry in client.lrange(DEAD_LETTER_KEY, 0, count - 1)]
