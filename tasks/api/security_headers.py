"""Security headers on every answer under a path prefix: `/v1`'s, the console's, the docs'.

Runs in the `api` process, as pure ASGI middleware. A browser may render a `/v1`
answer: hOCR is served as text/html, and an error may echo what a client sent. Their
text is escaped; the CSP is a second wall: no script, no style, nothing loaded, never
in a frame, in a sandbox of its own. `nosniff` keeps a browser from reading a text
answer as HTML. The console's pages set their own headers through the same class
(tasks/console/_web.py).

The API's own documentation (`/docs`, `/redoc`, their files and `/openapi.json`) is
never in a frame either (`DocsHeaders`). Its pages load only this site's files, and
run only those and the one inline script each page carries, named by its hash.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

API_PREFIX = "/v1"
API_CSP = ("default-src 'none'; frame-ancestors 'none'; base-uri 'none'; "
           "form-action 'none'; sandbox")
API_HEADERS = ((b"content-security-policy", API_CSP.encode()),
               (b"x-content-type-options", b"nosniff"))
NO_STORE = (b"cache-control", b"no-store")
# Swagger UI and ReDoc style their pages inline and draw icons as data: images; ReDoc
# reads the schema in a worker it makes from a blob.
DOCS_CSP = ("default-src 'self'; script-src 'self'{scripts}; style-src 'self' "
            "'unsafe-inline'; img-src 'self' data:; worker-src 'self' blob:; "
            "object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
DOCS_PAGES = ("/docs", "/docs/oauth2-redirect", "/redoc")
DOCS_FILES = ("/openapi.json", "/static-offline-docs")  # FastAPIOffline's files
_INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.S)


def under(path: str, prefix: str) -> bool:
    """Whether `path` is `prefix` or below it."""
    return path == prefix or path.startswith(prefix + "/")


class SecurityHeaders:
    """`headers` on every answer under `prefix`, in place of any the route set.

    `no_store`: `Cache-Control: no-store` too, but under `cacheable` (static files).
    """

    def __init__(self, app: ASGIApp, prefix: str = API_PREFIX,
                 headers: Sequence[tuple[bytes, bytes]] = API_HEADERS,
                 no_store: bool = False, cacheable: str | None = None) -> None:
        self.app = app
        self.prefix = prefix
        self.headers = list(headers)
        self.names = {name for name, _ in self.headers}
        self.no_store = no_store
        self.cacheable = cacheable

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not under(path, self.prefix):
            await self.app(scope, receive, send)
            return
        added = list(self.headers)
        if self.no_store and not (self.cacheable and under(path, self.cacheable)):
            added.append(NO_STORE)  # a client's own answers: never kept by a cache

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [h for h in message.get("headers", [])
                        if h[0].lower() not in self.names]
                message = {**message, "headers": [*kept, *added]}
            await send(message)

        await self.app(scope, receive, sending)


def docs_csp(page: bytes) -> bytes:
    """The docs' CSP for `page`: its inline scripts allowed by their SHA-256, no other."""
    scripts = "".join(
        f" 'sha256-{base64.b64encode(hashlib.sha256(script).digest()).decode()}'"
        for script in _INLINE_SCRIPT.findall(page))
    return DOCS_CSP.format(scripts=scripts).encode()


class DocsHeaders:
    """The documentation's answers: a CSP, never in a frame, nosniff.

    A page (DOCS_PAGES, a few KB) is held until its end, so that its CSP names its own
    inline script; a file (DOCS_FILES) passes through with the `/v1` CSP.
    """

    FRAMING = ((b"x-frame-options", b"DENY"), (b"x-content-type-options", b"nosniff"))

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        files: ASGIApp = app
        for prefix in DOCS_FILES:
            files = SecurityHeaders(files, prefix, [*API_HEADERS, self.FRAMING[0]])
        self.files = files

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path not in DOCS_PAGES:
            await self.files(scope, receive, send)  # under DOCS_FILES: their headers
            return
        start: Message = {}
        body: list[bytes] = []

        async def sending(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                return
            if message["type"] != "http.response.body":
                await send(message)
                return
            body.append(message.get("body", b""))
            if message.get("more_body"):
                return
            page = b"".join(body)
            headers = [(b"content-security-policy", docs_csp(page)), *self.FRAMING]
            names = {name for name, _ in headers}
            kept = [h for h in start.get("headers", []) if h[0].lower() not in names]
            await send({**start, "headers": [*kept, *headers]})
            await send({"type": "http.response.body", "body": page})

        await self.app(scope, receive, sending)
