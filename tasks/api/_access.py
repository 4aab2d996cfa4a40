"""Who is asking the HTTP API: bearer tokens and each client's requests per minute.

Runs in the `api` process, for every request before its route (tasks/api/_routes.py).
"""

from __future__ import annotations

import time

import redis

from tasks.api._errors import RateLimited, Unauthorized
from tasks.api.tokens import ApiClient, TokenStore
from tasks.settings import Settings
from tasks.state.keys import api_rate_key


class ClientAccess:
    """Authentication and the per-client request rate (thread-safe)."""

    def __init__(self, settings: Settings, tokens: TokenStore, redis_client: redis.Redis) -> None:
        self.settings = settings
        self.tokens = tokens
        self._redis = redis_client

    def authenticate(self, authorization: str | None) -> ApiClient:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized()
        caller = self.tokens.authenticate(token.strip())
        if caller is None:
            raise Unauthorized("the token is unknown or revoked")
        return caller

    def is_client(self, authorization: str | None) -> bool:
        """Whether the header carries a valid client token (no 401, not counted)."""
        try:
            self.authenticate(authorization)
        except Unauthorized:
            return False
        return True

    def count_request(self, caller: ApiClient) -> None:
        """One request against the client's requests-per-minute (fixed one-minute window)."""
        limit = own_limit(caller.requests_per_minute, self.settings.api_requests_per_minute)
        if not limit:
            return
        now = time.time()
        key = api_rate_key(caller.name, int(now // 60))
        pipe = self._redis.pipeline()
        pipe.incr(key)
        pipe.expire(key, 120)
        count, _ = pipe.execute()
        if int(count) > limit:
            retry = max(1, int(60 - now % 60) + 1)
            raise RateLimited(f"more than {limit} requests a minute",
                              headers={"Retry-After": str(retry)})


def own_limit(own: int | None, default: int) -> int:
    """A client's own limit, else the service-wide default (0: no limit)."""
    return default if own is None else own
