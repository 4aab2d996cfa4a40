"""Per-client bearer tokens of the HTTP API: create, list, revoke, authenticate.

Runs in the `api` process (authentication on every request) and in `submit.py tokens`
(operators). Only the SHA-256 of a token is stored (tokens are 256 random bits, so a
fast hash is enough); the token itself is shown once, when it is created. Each client
also gets its own webhook signing secret with its token, shown once too, and rotatable
with a grace period (tasks/state/webhook_secrets.py). Needs only redis: no web
framework is imported here.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import redis

from tasks.broker.reads import LANE_WEIGHTS_KEY
from tasks.errors import BadRequest
from tasks.lifecycle.url_policy import parse_url
from tasks.queue.routing import PRIORITIES
from tasks.records.clients import CLIENT_NAME, ClientRules
from tasks.settings import Settings
from tasks.state.client_rules import rules_of
from tasks.state.keys import API_CLIENTS_KEY, api_token_key
from tasks.state.webhook_secrets import WebhookSecrets

TOKEN_PREFIX = "ocr_"


@dataclass(frozen=True)
class ApiClient:
    """One client of the API: its name, when its token was made, and its own limits.

    `jobs_in_flight` and `requests_per_minute` override the service-wide defaults
    (OCR_API_JOBS_IN_FLIGHT, OCR_API_REQUESTS_PER_MINUTE) when not None; 0 is no limit.
    `token_sha256` is the hash the token is found by (listings show its start).
    """

    name: str
    created: float
    token_sha256: str
    jobs_in_flight: int | None = None
    requests_per_minute: int | None = None
    # Bytes the client may have stored in Redis (OCR_API_CLIENT_MAX_BYTES).
    max_bytes: int | None = None
    # URL prefixes this client reads and writes under, within OCR_ALLOWED_URLS; None:
    # none, so it reads only OCR_SHARED_READ_URLS (`url_policy.readable`).
    allowed_urls: list[str] | None = None
    # Pages the client may have read a day and a month (UTC; tasks/state/usage.py);
    # None or 0: no cap.
    pages_per_day: int | None = None
    pages_per_month: int | None = None
    # Pages one engine may read for the client a day, by engine (`--engine-pages-per-day
    # vlm-api=500`): a job naming it is refused past it, an escalated page keeps its
    # first reading. None: no such cap.
    engine_pages_per_day: dict[str, int] | None = None
    # The client's share of the broker's fetch beside other clients' (tasks/broker/lanes.py,
    # also kept in `ocr:lane-weights`), and the highest priority its jobs may have
    # (interactive, normal, batch; None: any).
    weight: int = 1
    max_priority: str | None = None
    # Batches the client may run at once (`tokens create --batches`; None: RUNNING_BATCHES).
    batches: int | None = None

    def rules(self, settings: Settings) -> ClientRules:
        """What the gate holds this client's jobs to (tasks/admission.py)."""
        return rules_of(self.name, asdict(self), settings)


def _url_prefix(prefix: str) -> str:
    """A client's URL prefix, normalised as OCR_ALLOWED_URLS entries are matched."""
    parsed = parse_url(prefix, "an allowed URL prefix", prefix_ok=True)
    if not parsed.url.endswith("/"):
        raise BadRequest("an allowed URL prefix ends in / (s3://bucket/ or https://host/)")
    return parsed.url


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenStore:
    """Clients and the hashes of their tokens in Redis (thread-safe)."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self.webhook_secrets = WebhookSecrets(client)

    def create_client(self, name: str, jobs_in_flight: int | None = None,
                      requests_per_minute: int | None = None,
                      allowed_urls: Sequence[str] | None = None,
                      max_bytes: int | None = None,
                      pages_per_day: int | None = None,
                      pages_per_month: int | None = None, weight: int = 1,
                      max_priority: str | None = None,
                      batches: int | None = None,
                      engine_pages_per_day: Mapping[str, int] | None = None,
                      ) -> tuple[str, str]:
        """Make a client: its token and its webhook signing secret."""
        if not CLIENT_NAME.match(name):
            raise BadRequest("a client name is 1-64 characters of [A-Za-z0-9_.-], "
                             "starting with a letter or digit")
        _check_limits(jobs_in_flight, requests_per_minute, max_bytes, pages_per_day,
                      pages_per_month, batches)
        _check_share(weight, max_priority)
        engine_caps = _engine_caps(None, engine_pages_per_day)
        prefixes = None if allowed_urls is None else [_url_prefix(p) for p in allowed_urls]
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        digest = token_hash(token)
        record = ApiClient(name, round(time.time(), 3), digest, jobs_in_flight,
                           requests_per_minute, allowed_urls=prefixes, max_bytes=max_bytes,
                           pages_per_day=pages_per_day, pages_per_month=pages_per_month,
                           weight=weight, max_priority=max_priority, batches=batches,
                           engine_pages_per_day=engine_caps)
        if not self._redis.hsetnx(API_CLIENTS_KEY, name, json.dumps(asdict(record))):
            raise BadRequest(f"client {name!r} exists; revoke it first to make a new token")
        # The record again under the hash: a request is authenticated in one GET.
        self._redis.set(api_token_key(digest), json.dumps(asdict(record)))
        self._redis.hset(LANE_WEIGHTS_KEY, name, weight)
        return token, self.webhook_secrets.create(name)

    def clients(self) -> list[ApiClient]:
        raw = self._redis.hgetall(API_CLIENTS_KEY)
        return sorted((ApiClient(**json.loads(v)) for v in raw.values()),
                      key=lambda c: c.name)

    def get(self, name: str) -> ApiClient | None:
        raw = self._redis.hget(API_CLIENTS_KEY, name)
        return ApiClient(**json.loads(raw)) if raw else None

    def set_limits(self, name: str, **limits: Any) -> ApiClient | None:
        """Change a client's own quotas; None when there is no such client.

        `limits`: any of `jobs_in_flight`, `requests_per_minute`, `max_bytes` (None:
        back to the service-wide default, 0: no limit), `pages_per_day`,
        `pages_per_month` (None or 0: no cap), `weight`, `max_priority`,
        `engine_pages_per_day` (engine -> cap, merged into the client's; 0: none).
        """
        client = self.get(name)
        if client is None:
            return None
        share: dict[str, Any] = {k: limits.pop(k) for k in ("weight", "max_priority")
                                 if k in limits}
        if "engine_pages_per_day" in limits:
            share["engine_pages_per_day"] = _engine_caps(
                client.engine_pages_per_day, limits.pop("engine_pages_per_day"))
        _check_limits(*limits.values())
        updated = replace(client, **limits, **share)
        _check_share(updated.weight, updated.max_priority)
        raw = json.dumps(asdict(updated))
        pipe = self._redis.pipeline()
        pipe.hset(API_CLIENTS_KEY, name, raw)
        pipe.set(api_token_key(client.token_sha256), raw)
        pipe.hset(LANE_WEIGHTS_KEY, name, updated.weight)
        pipe.execute()
        return updated

    def revoke(self, name: str) -> bool:
        """Remove a client and its token; False when there was no such client."""
        client = self.get(name)
        if client is None:
            return False
        pipe = self._redis.pipeline()
        pipe.delete(api_token_key(client.token_sha256))
        pipe.hdel(API_CLIENTS_KEY, name)
        pipe.hdel(LANE_WEIGHTS_KEY, name)
        pipe.execute()
        self.webhook_secrets.delete(name)
        return True

    def authenticate(self, token: str) -> ApiClient | None:
        """The client a token belongs to, or None (unknown or revoked)."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            return None
        raw = self._redis.get(api_token_key(token_hash(token)))
        return None if raw is None else ApiClient(**json.loads(raw))


def _check_limits(*limits: int | None) -> None:
    if any(limit is not None and limit < 0 for limit in limits):
        raise BadRequest("limits are 0 (none) or more")


def _engine_caps(old: Mapping[str, int] | None,
                 new: Mapping[str, int] | None) -> dict[str, int] | None:
    """`old` caps by engine with `new` ones over them (0: that engine's cap goes)."""
    if new is not None and any(not isinstance(cap, int) or cap < 0 for cap in new.values()):
        raise BadRequest("a cap on an engine's pages is 0 (none) or more")
    merged = {**(old or {}), **(new or {})}
    return {engine: cap for engine, cap in sorted(merged.items()) if cap} or None


def _check_share(weight: object, max_priority: object) -> None:
    if not isinstance(weight, int) or isinstance(weight, bool) or not 1 <= weight <= 1000:
        raise BadRequest("a client's weight is a whole number from 1 to 1000")
    if max_priority is not None and max_priority not in PRIORITIES:
        raise BadRequest(f"a highest priority is one of {', '.join(PRIORITIES)}")
