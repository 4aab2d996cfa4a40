"""Multipart uploads streamed into Redis as they arrive, never whole in memory or on disk.

Runs in the `api` process. The file part (`file`) is appended to an upload key in
1 MiB pieces; the other parts are the job's options (small text fields). A body that
ends before its closing boundary is `bad_request`, and what it stored is deleted. Past
OCR_MAX_INPUT_MB the upload key is deleted and the request ends with 413: nothing
stays stored. A file that is no PDF or image, told by its first bytes
(tasks/records/formats.py), ends it the same way with 415 `unsupported_format`. A
request whose Content-Length already says too much is refused before its body is read
(clients that send `Expect: 100-continue`, as curl does, then never send it).

`DrainRefused` makes every client read such a refusal: a refused request's body, up to
twice the upload limit in all, is read and dropped before the answer goes out, so a
client that reads only after sending everything (Python's `urllib`) reads the coded
413/429 instead of a reset connection. A larger body is cut off (closing is then the
only answer), and a client waiting on `Expect: 100-continue` is answered at once.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import anyio
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from tasks.api._errors import BodyTimeout
from tasks.api._schemas import ENGINE_NAME, ENGINE_NAME_MAX
from tasks.api._service import JobService
from tasks.api.tokens import ApiClient
from tasks.errors import BadRequest, UnsupportedFormat
from tasks.records.formats import SNIFF_BYTES, UNSUPPORTED, input_format

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Message, Receive, Send], Awaitable[None]]

FILE_FIELD = "file"
ENGINE_FIELD = "engine"
FLUSH_BYTES = 1024 * 1024
MAX_FIELDS = 32
MAX_FIELD_BYTES = 8192
ENVELOPE_BYTES = 64 * 1024  # multipart headers and option fields beside the file


@dataclass
class Received:
    """What a multipart request carried: its option fields and the stored file."""

    fields: dict[str, str] = field(default_factory=dict)
    upload: str | None = None
    filename: str = ""
    size: int = 0
    head: bytearray = field(default_factory=bytearray)  # the file's first SNIFF_BYTES
    format: str | None = None  # told by `head` (tasks/records/formats.py)


@dataclass
class _Part:
    name: str = ""
    filename: str | None = None
    data: bytearray = field(default_factory=bytearray)


class _Collector:
    """python-multipart callbacks: fields into memory, file bytes into `pending`."""

    def __init__(self, received: Received) -> None:
        self.received = received
        self.part = _Part()
        self.header_name = b""
        self.header_value = b""
        self.disposition = b""
        self.pending = bytearray()
        self.files = 0
        self.engine: str | None = None  # an `engine` field received, not yet checked
        self.ended = False  # the closing boundary was read

    def on_end(self) -> None:
        self.ended = True

    def on_part_begin(self) -> None:
        self.part = _Part()
        self.disposition = b""

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        if self.header_name.lower() == b"content-disposition":
            self.disposition = self.header_value
        self.header_name = self.header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.disposition)
        self.part.name = options.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" in options:
            if self.part.name != FILE_FIELD or self.files:
                raise BadRequest("send one file, in the form field `file`")
            self.files += 1
            self.part.filename = options[b"filename"].decode("utf-8", "replace")
            self.received.filename = self.part.filename.replace("\\", "/").rsplit("/", 1)[-1]
        elif self.part.name == FILE_FIELD:
            raise BadRequest("the form field `file` must be a file (with a filename)")
        elif len(self.received.fields) >= MAX_FIELDS:
            raise BadRequest("too many form fields")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.part.filename is not None:
            self.pending += data[start:end]
            self.received.size += end - start
            head = self.received.head
            if len(head) < SNIFF_BYTES:
                head += data[start:min(end, start + SNIFF_BYTES - len(head))]
            return
        self.part.data += data[start:end]
        if len(self.part.data) > MAX_FIELD_BYTES:
            raise BadRequest(f"form field {self.part.name!r} is too long")

    def on_part_end(self) -> None:
        if self.part.filename is None:
            if self.part.name in self.received.fields:
                raise BadRequest(f"form field {self.part.name!r} is given twice")
            value = self.part.data.decode("utf-8", "replace")
            self.received.fields[self.part.name] = value
            if self.part.name == ENGINE_FIELD and len(value) <= ENGINE_NAME_MAX \
                    and re.fullmatch(ENGINE_NAME, value):
                self.engine = value  # to check before more of the file is stored


async def receive_multipart(request: Request, service: JobService,
                            caller: ApiClient) -> Received:
    """Parse a multipart body, streaming its file into a fresh upload key.

    The file counts against the client's bytes quota as it arrives (the upload key is
    one of its keys); the whole body must arrive within OCR_API_BODY_TIMEOUT. On any
    error the upload key (and its bytes record) is deleted before the error propagates.
    An `engine` field is checked as soon as it has arrived, before any more of the
    file is stored (`JobService.check_engine`: `engine=tesserakt` sent before its
    file is refused with nothing stored at all), unless the request carries an
    Idempotency-Key: a replay answers its job as the key made it, checked at `submit`.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit():
        service.check_upload_size(max(0, int(declared) - ENVELOPE_BYTES))
        await run_in_threadpool(service.check_room, caller,
                                max(0, int(declared) - ENVELOPE_BYTES))
    _, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if not boundary:
        raise BadRequest("a multipart body needs a boundary")
    received = Received()
    collector = _Collector(received)
    check_engine = "idempotency-key" not in request.headers
    parser = MultipartParser(boundary, {
        "on_part_begin": collector.on_part_begin,
        "on_part_data": collector.on_part_data,
        "on_part_end": collector.on_part_end,
        "on_header_field": collector.on_header_field,
        "on_header_value": collector.on_header_value,
        "on_header_end": collector.on_header_end,
        "on_headers_finished": collector.on_headers_finished,
        "on_end": collector.on_end,
    })
    try:
        async for chunk in body_chunks(request, service.settings.api_body_timeout):
            parser.write(chunk)
            if collector.engine is not None and check_engine:
                engine, collector.engine = collector.engine, None
                await run_in_threadpool(service.check_engine, engine)
            service.check_upload_size(received.size)
            if received.format is None and len(received.head) >= SNIFF_BYTES:
                check_format(received)
            if len(collector.pending) >= FLUSH_BYTES:
                await _flush(service, received, collector, caller)
        parser.finalize()
        if not collector.ended:  # cut short: its last part may be any prefix of itself
            raise BadRequest("the multipart body ends before its closing boundary")
        if received.format is None and received.head:
            check_format(received)
        if collector.pending or (collector.files and received.upload is None):
            await _flush(service, received, collector, caller)
    except MultipartParseError as exc:
        await run_in_threadpool(service.discard, caller, received.upload)
        raise BadRequest(f"the multipart body is malformed ({type(exc).__name__})") from None
    except BaseException:
        await run_in_threadpool(service.discard, caller, received.upload)
        raise
    return received


def check_format(received: Received) -> None:
    """The file's format from its first bytes; `unsupported_format` when it is none."""
    received.format = input_format(bytes(received.head))
    if received.format is None:
        raise UnsupportedFormat(f"{received.filename or 'the file'} is {UNSUPPORTED}; "
                                "nothing was stored")


async def body_chunks(request: Request, timeout: float) -> AsyncIterator[bytes]:
    """The request's body as it arrives; BodyTimeout once `timeout` s have passed.

    Only the wait for the next piece is cut short, never a write to Redis that has
    begun (a cancelled write could land after the upload was discarded).
    """
    deadline = anyio.current_time() + timeout
    chunks = request.stream().__aiter__()
    while True:
        try:
            with anyio.fail_after(max(0.0, deadline - anyio.current_time())):
                chunk = await chunks.__anext__()
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise BodyTimeout(f"the request body did not arrive within {timeout:g} s "
                              "(OCR_API_BODY_TIMEOUT); nothing of it was kept") from None
        yield chunk


async def _flush(service: JobService, received: Received, collector: _Collector,
                 caller: ApiClient) -> None:
    if received.upload is None:
        received.upload = service.new_upload()
    data = bytes(collector.pending)
    collector.pending.clear()
    await run_in_threadpool(service.append, caller, received.upload, data)


class DrainRefused:
    """ASGI middleware: a refused request's unread body is read and dropped, bounded.

    An answer of 400 or more (408 excepted: its body is what did not come) that goes
    out before the request's body was read to its end first reads the rest, up to
    `limit` body bytes in all and for at most `timeout` s; past either, the answer goes
    out as it is and the server closes the connection. A request that asked for
    `Expect: 100-continue` and sent nothing yet is answered at once (reading would
    invite its body).
    """

    def __init__(self, app: ASGIApp, limit: int, timeout: float) -> None:
        self.app = app
        self.limit = limit
        self.timeout = timeout

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        declared = headers.get(b"content-length", b"")
        expects = headers.get(b"expect", b"").lower() == b"100-continue"
        seen = {"bytes": 0, "ended": False}

        async def counting() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                seen["bytes"] += len(message.get("body", b""))
                seen["ended"] = not message.get("more_body", False)
            else:  # http.disconnect
                seen["ended"] = True
            return message

        async def answering(message: Message) -> None:
            if (message["type"] == "http.response.start" and message["status"] >= 400
                    and message["status"] != 408 and not seen["ended"]
                    and not (expects and not seen["bytes"])
                    and not (declared.isdigit() and int(declared) > self.limit)):
                with anyio.move_on_after(self.timeout):
                    while not seen["ended"] and seen["bytes"] <= self.limit:
                        await counting()
            await send(message)

        await self.app(scope, counting, answering)
