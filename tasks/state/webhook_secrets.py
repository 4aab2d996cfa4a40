"""Per-client webhook signing secrets of the HTTP API's clients.

Runs in `submit.py tokens` (operators create and rotate them) and in the workers that
POST callbacks (`ocr.http_callback`: the pool children and the `control` worker), which
sign each callback of an API client's job with that client's secret. One hash per
client, `ocr:api:webhook:<name>`: `secret`, and after a rotation `previous` with
`previous_until` (epoch seconds): during that grace period each callback carries a
second signature made with the previous secret, so a receiver still configured with it
keeps verifying. Secrets are kept in the clear: the workers need them to sign (the
token, which only authenticates, is stored as a hash). Needs only redis.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

import redis

from tasks.state.keys import api_webhook_key

SECRET_PREFIX = "whsec_"
DEFAULT_GRACE_SECONDS = 86400


@dataclass(frozen=True)
class SigningSecrets:
    """What a callback is signed with: the current secret, and the previous one in grace."""

    current: str
    previous: str | None = None


class WebhookSecrets:
    """The signing secrets of API clients in Redis."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def create(self, name: str) -> str:
        """A fresh secret for a new client (any earlier one is dropped)."""
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        key = api_webhook_key(name)
        with self._redis.pipeline() as pipe:
            pipe.delete(key)
            pipe.hset(key, "secret", secret)
            pipe.execute()
        return secret

    def rotate(self, name: str, grace_seconds: float = DEFAULT_GRACE_SECONDS) -> str | None:
        """A new secret; the old one still signs (second header) for `grace_seconds`.

        None when the client has no secret (no such client).
        """
        key = api_webhook_key(name)
        old = self._redis.hget(key, "secret")
        if old is None:
            return None
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        self._redis.hset(key, mapping={
            "secret": secret, "previous": old,
            "previous_until": f"{time.time() + max(0.0, grace_seconds):.3f}"})
        return secret

    def delete(self, name: str) -> None:
        self._redis.delete(api_webhook_key(name))

    def signing(self, name: str, now: float | None = None) -> SigningSecrets | None:
        """The secrets a callback of client `name` is signed with (None: no secret)."""
        raw = {_text(k): _text(v)
               for k, v in self._redis.hgetall(api_webhook_key(name)).items()}
        if "secret" not in raw:
            return None
        until = float(raw.get("previous_until", "0") or 0)
        previous = raw.get("previous") if until > (time.time() if now is None else now) \
            else None
        return SigningSecrets(raw["secret"], previous)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
