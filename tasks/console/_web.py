"""The console's web parts: its templates, its security headers, who is signed in.

Runs in the `api` process. The only module of the console that imports Jinja2: the
templates are rendered with autoescaping on for every file, so a value reaches the
page as text unless a template says otherwise (none does).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from tasks.api.services import JobService
from tasks.api.sessions import COOKIE, Session, Sessions

HERE = Path(__file__).parent
STATIC = HERE / "static"
PREFIX = "/console"
# No inline script or style, nothing from elsewhere, no plugins, never in a frame.
CSP = ("default-src 'self'; script-src 'self'; object-src 'none'; frame-ancestors 'none'; "
       "base-uri 'none'; form-action 'self'")
HEADERS = [(b"content-security-policy", CSP.encode()),
           (b"x-content-type-options", b"nosniff"),
           (b"referrer-policy", b"same-origin")]

templates = Jinja2Templates(env=jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
    undefined=jinja2.StrictUndefined))

__all__ = ["HEADERS", "PREFIX", "STATIC", "StaticFiles", "render", "templates"]


class SignInFirst(Exception):
    """A console page asked for without a session: the answer is the sign-in form."""


def service_of(request: Request) -> JobService:
    service: JobService = request.app.state.service
    return service


def sessions_of(request: Request) -> Sessions:
    sessions: Sessions = request.app.state.sessions
    return sessions


def signed_in(request: Request) -> Session:
    """The request's session (blocking: Redis); SignInFirst without one."""
    session = sessions_of(request).find(request.cookies.get(COOKIE))
    if session is None:
        raise SignInFirst()
    return session


def same_origin(request: Request, required: bool = False) -> bool:
    """Whether a form post comes from a page of this site (its Origin, when sent).

    `required`: a post without an Origin is refused too. The sign-in asks it: it has
    no session, so no CSRF token, and every browser sends Origin with a form's POST.
    """
    origin = request.headers.get("origin")
    if origin is None:
        return not required
    return origin == f"{request.url.scheme}://{request.url.netloc}"


def render(request: Request, name: str, status_code: int = 200,
           session: Session | None = None, **context: Any) -> HTMLResponse:
    """A template rendered with the signed-in client and its CSRF token."""
    context.update(client=None if session is None else session.client.name,
                   csrf="" if session is None else session.csrf)
    response: HTMLResponse = templates.TemplateResponse(request, name, context,
                                                        status_code=status_code)
    return response


def to_sign_in(request: Request, exc: Exception) -> Response:
    return RedirectResponse(f"{PREFIX}/signin", status_code=303)
