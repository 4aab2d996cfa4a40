"""Security headers on every `/v1` answer: a CSP under which a browser runs and loads nothing.

Runs in the `api` process (a pure ASGI middleware, added in tasks/api/app.py). A
browser may render a `/v1` answer: hOCR is served as text/html, and an error may echo
what a client sent. Their text is escaped; the CSP is a second wall: no script, no
style, nothing loaded, never in a frame, in a sandbox of its own. `nosniff` keeps a
browser from reading a text answer as HTML. The console's pages have their own
(tasks/console/_web.py).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

PREFIX = "/v1"
CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'; sandbox"
HEADERS = [(b"content-security-policy", CSP.encode()),
           (b"x-content-type-options", b"nosniff")]
_NAMES = {name for name, _ in HEADERS}


class ApiSecurityHeaders:
    """HEADERS on every answer under `/v1`, in place of any the route set."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not (path == PREFIX or path.startswith(PREFIX + "/")):
            await self.app(scope, receive, send)
            return

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", [])
                           if h[0].lower() not in _NAMES]
                message = {**message, "headers": [*headers, *HEADERS]}
            await send(message)

        await self.app(scope, receive, sending)
