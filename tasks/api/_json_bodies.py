"""Every request body that is not a multipart upload is bounded and checked before a route.

Runs in the `api` process (ASGI middleware, inside `DrainRefused`). A POST, PUT or
PATCH whose body is not `multipart/form-data` (the only way files are uploaded) is
read here, up to MAX_JSON_BYTES (64 KB) and OCR_API_BODY_TIMEOUT: a longer body is
400 `bad_request` before a route parses any of it, a slower one 408 `body_timeout`.
A JSON body (or one without a content type, which FastAPI reads as JSON) that does
not parse, nests deeper than MAX_JSON_DEPTH or holds a number Python refuses to
convert (over 4,300 digits) is 400 `bad_request`. The route then reads the same
bytes, as they came.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio

from tasks.errors import BadRequest

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Message, Receive, Send], Awaitable[None]]

MAX_JSON_BYTES = 64 * 1024
MAX_JSON_DEPTH = 32  # a job's options are one flat object
TOO_LARGE = f"the body is over {MAX_JSON_BYTES // 1024} KB (upload files as multipart)"


def parse_json(raw: bytes) -> Any:
    """A JSON body, or BadRequest: invalid, or nested deeper than MAX_JSON_DEPTH."""
    if _depth(raw) > MAX_JSON_DEPTH:
        raise BadRequest(f"the JSON body is nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, ValueError):  # JSONDecodeError, or an integer too long
        raise BadRequest("the body is not valid JSON") from None


def _depth(raw: bytes) -> int:
    """How deep brackets nest in `raw` (strings skipped), without parsing it."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def _is_json(content_type: str) -> bool:
    """Whether FastAPI would read a body of this type as JSON (none given: it would)."""
    kind = content_type.split(";")[0].strip().lower()
    return not kind or kind == "application/json" or (
        kind.startswith("application/") and kind.endswith("+json"))


class JsonBodies:
    """ASGI middleware: bodies other than multipart uploads, bounded and checked."""

    def __init__(self, app: ASGIApp, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        content_type = headers.get(b"content-type", b"").decode("latin-1")
        if content_type.split(";")[0].strip().lower() == "multipart/form-data":
            await self.app(scope, receive, send)
            return
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > MAX_JSON_BYTES:
            await _answer(send, 400, "bad_request", TOO_LARGE)
            return
        body = bytearray()
        try:
            with anyio.fail_after(self.timeout):
                while True:
                    message = await receive()
                    if message["type"] != "http.request":
                        return  # the client hung up: nobody to answer
                    body += message.get("body", b"")
                    if len(body) > MAX_JSON_BYTES:
                        await _answer(send, 400, "bad_request", TOO_LARGE)
                        return
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            await _answer(send, 408, "body_timeout", "the request body did not arrive "
                          f"within {self.timeout:g} s (OCR_API_BODY_TIMEOUT)", True)
            return
        if body and _is_json(content_type):
            try:
                parse_json(bytes(body))
            except BadRequest as exc:
                await _answer(send, 400, exc.code, str(exc))
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: a disconnect, when it comes
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)


async def _answer(send: Send, status: int, code: str, message: str,
                  retryable: bool = False) -> None:
    payload = json.dumps({"error": {"code": code, "message": message,
                                    "retryable": retryable}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})
