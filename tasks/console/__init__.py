"""The console at `/console`: a person looks at what was read and corrects it.

Runs in the `api` process, mounted into the HTTP API's app (`install`). Pages are
rendered on the server from Jinja2 templates with autoescaping (document text and
file names are only ever text), and one small script of its own
(`static/console.js`) draws each page's line boxes and edits lines through the JSON
page endpoints, signed in by the session cookie (tasks/api/sessions.py). Every
console answer carries a Content-Security-Policy that allows no inline script; no
file comes from anywhere but this package. Its icon (`static/favicon.svg`) also answers
`/favicon.ico`, which browsers ask of any page of the service.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import FileResponse

from tasks.api.security_headers import SecurityHeaders
from tasks.console._batches import router as batches_router
from tasks.console._views import router
from tasks.console._web import HEADERS, PREFIX, STATIC, SignInFirst, StaticFiles, to_sign_in

ICON = "favicon.svg"


def install(app: FastAPI) -> None:
    """The console's routes, its static files and its security headers on `app`."""
    app.include_router(router)
    app.include_router(batches_router)
    app.mount("/console/static", StaticFiles(directory=STATIC), name="console-static")
    app.add_api_route("/favicon.ico", favicon, include_in_schema=False)
    app.add_middleware(SecurityHeaders, prefix=PREFIX, headers=HEADERS, no_store=True,
                       cacheable=PREFIX + "/static")
    app.add_exception_handler(SignInFirst, to_sign_in)


def favicon() -> FileResponse:
    """The service's icon, where browsers look for it first."""
    return FileResponse(STATIC / ICON, media_type="image/svg+xml",
                        headers={"Cache-Control": "public, max-age=86400"})
