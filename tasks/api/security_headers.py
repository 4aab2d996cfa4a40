"""Security headers on every answer under a path prefix: `/v1`'s, and the console's.

Runs in the `api` process, as pure ASGI middleware. A browser may render a `/v1`
answer: hOCR is served as text/html, and an error may echo what a client sent. Their
text is escaped; the CSP is a second wall: no script, no style, nothing loaded, never
in a frame, in a sandbox of its own. `nosniff` keeps a browser from reading a text
answer as HTML. The console's pages set their own headers through the same class
(tasks/console/_web.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

API_PREFIX = "/v1"
API_CSP = ("default-src 'none'; frame-ancestors 'none'; base-uri 'none'; "
           "form-action 'none'; sandbox")
API_HEADERS = ((b"content-security-policy", API_CSP.encode()),
               (b"x-content-type-options", b"nosniff"))
NO_STORE = (b"cache-control", b"no-store")


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
