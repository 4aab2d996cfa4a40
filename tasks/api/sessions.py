"""The console's sign-in sessions: a token exchanged for a cookie, and its CSRF token.

Runs in the `api` process. A person signs in to the console (`/console`) with an API
token; the server keeps a session in Redis (`ocr:api:session:<sha256 of the cookie>`,
`SESSION_SECONDS` long) naming the token's hash and a CSRF token made for it, and the
browser holds only a random cookie (HttpOnly, SameSite=Strict). Every request with the
cookie reads the token's current record, so a revoked token ends its sessions at once.
A state-changing request with the cookie must also carry the session's CSRF token (a
form's hidden field or the `X-CSRF-Token` header), compared in constant time.
Needs only redis: no web framework is imported here.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass

import redis

from tasks.api._errors import ApiError
from tasks.api.tokens import ApiClient
from tasks.state.keys import api_session_key, api_token_key

COOKIE = "ocr_console"
CSRF_HEADER = "X-CSRF-Token"
SESSION_SECONDS = 8 * 3600
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class CsrfFailed(ApiError):
    """A state-changing request with a session cookie but without its CSRF token."""

    code = "csrf_failed"
    status = 403
    default_message = "the request lacks the session's CSRF token"


@dataclass(frozen=True)
class Session:
    """A signed-in person: the client of the token they signed in with, and the CSRF token."""

    client: ApiClient
    csrf: str

    def check_csrf(self, sent: str | None) -> None:
        """CsrfFailed unless `sent` is this session's CSRF token."""
        if not sent or not hmac.compare_digest(sent.encode(), self.csrf.encode()):
            raise CsrfFailed()


def _digest(cookie: str) -> str:
    return hashlib.sha256(cookie.encode()).hexdigest()


class Sessions:
    """Console sessions in Redis (thread-safe)."""

    def __init__(self, client: redis.Redis, seconds: int = SESSION_SECONDS) -> None:
        self._redis = client
        self.seconds = seconds

    def start(self, caller: ApiClient) -> str:
        """A new session for an authenticated client: the cookie's value."""
        cookie = secrets.token_urlsafe(32)
        record = {"token_sha256": caller.token_sha256, "csrf": secrets.token_urlsafe(32)}
        self._redis.set(api_session_key(_digest(cookie)), json.dumps(record), ex=self.seconds)
        return cookie

    def find(self, cookie: str | None) -> Session | None:
        """The session a cookie names, or None (unknown, expired, or its token revoked)."""
        if not cookie or len(cookie) > 100:
            return None
        raw = self._redis.get(api_session_key(_digest(cookie)))
        if raw is None:
            return None
        record = json.loads(raw)
        client = self._redis.get(api_token_key(str(record["token_sha256"])))
        if client is None:
            return None
        return Session(ApiClient(**json.loads(client)), str(record["csrf"]))

    def end(self, cookie: str | None) -> None:
        if cookie and len(cookie) <= 100:
            self._redis.delete(api_session_key(_digest(cookie)))
