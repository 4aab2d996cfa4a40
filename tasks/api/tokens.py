"""Per-client bearer tokens of the HTTP API: create, list, revoke, authenticate.

Runs in the `api` process (authentication on every request) and in `submit.py tokens`
(operators). Only the SHA-256 of a token is stored (tokens are 256 random bits, so a
fast hash is enough); the token itself is shown once, when it is created. Needs only
redis: no web framework is imported here.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any, TextIO

import redis

from tasks.errors import BadRequest
from tasks.state.keys import API_CLIENTS_KEY, API_TOKEN_PREFIX

TOKEN_PREFIX = "ocr_"
CLIENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


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


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenStore:
    """Clients and the hashes of their tokens in Redis (thread-safe)."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def create(self, name: str, jobs_in_flight: int | None = None,
               requests_per_minute: int | None = None) -> str:
        """Make a client and return its token (stored only as a hash)."""
        if not CLIENT_NAME.match(name):
            raise BadRequest("a client name is 1-64 characters of [A-Za-z0-9_.-], "
                             "starting with a letter or digit")
        for limit in (jobs_in_flight, requests_per_minute):
            if limit is not None and limit < 0:
                raise BadRequest("limits are 0 (none) or more")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        digest = token_hash(token)
        record = ApiClient(name, round(time.time(), 3), digest, jobs_in_flight,
                           requests_per_minute)
        if not self._redis.hsetnx(API_CLIENTS_KEY, name, json.dumps(asdict(record))):
            raise BadRequest(f"client {name!r} exists; revoke it first to make a new token")
        # The record again under the hash: a request is authenticated in one GET.
        self._redis.set(API_TOKEN_PREFIX + digest, json.dumps(asdict(record)))
        return token

    def clients(self) -> list[ApiClient]:
        raw = self._redis.hgetall(API_CLIENTS_KEY)
        return sorted((ApiClient(**json.loads(v)) for v in raw.values()),
                      key=lambda c: c.name)

    def get(self, name: str) -> ApiClient | None:
        raw = self._redis.hget(API_CLIENTS_KEY, name)
        return ApiClient(**json.loads(raw)) if raw else None

    def revoke(self, name: str) -> bool:
        """Remove a client and its token; False when there was no such client."""
        client = self.get(name)
        if client is None:
            return False
        pipe = self._redis.pipeline()
        pipe.delete(API_TOKEN_PREFIX + client.token_sha256)
        pipe.hdel(API_CLIENTS_KEY, name)
        pipe.execute()
        return True

    def authenticate(self, token: str) -> ApiClient | None:
        """The client a token belongs to, or None (unknown or revoked)."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            return None
        raw = self._redis.get(API_TOKEN_PREFIX + token_hash(token))
        return None if raw is None else ApiClient(**json.loads(raw))


def build_tokens_parser(parser: argparse.ArgumentParser) -> None:
    """`tokens create NAME | list | revoke NAME`, with --json on each."""
    commands = parser.add_subparsers(dest="tokens_command", required=True, metavar="COMMAND")
    create = commands.add_parser("create", help="make a client and print its token once")
    create.add_argument("name", metavar="NAME")
    create.add_argument("--jobs-in-flight", type=int, metavar="N",
                        help="most unfinished jobs at once (0: none; default "
                             "OCR_API_JOBS_IN_FLIGHT)")
    create.add_argument("--requests-per-minute", type=int, metavar="N",
                        help="most requests a minute (0: none; default "
                             "OCR_API_REQUESTS_PER_MINUTE)")
    create.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help='print {"name": …, "token": …}')
    listing = commands.add_parser("list", help="list clients (never their tokens)")
    listing.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                         help="one JSON object per client")
    revoke = commands.add_parser("revoke", help="remove a client and its token")
    revoke.add_argument("name", metavar="NAME")
    revoke.add_argument("--json", action="store_true", default=argparse.SUPPRESS)


def run_tokens(args: argparse.Namespace, store: TokenStore, out: TextIO) -> int:
    """Carry out a parsed `tokens` command; returns the exit status."""
    as_json = bool(getattr(args, "json", False))
    if args.tokens_command == "create":
        token = store.create(args.name, args.jobs_in_flight, args.requests_per_minute)
        if as_json:
            print(json.dumps({"name": args.name, "token": token}), file=out)
        else:
            print(f"token for {args.name} (shown once; only its hash is stored):\n{token}",
                  file=out)
        return 0
    if args.tokens_command == "list":
        clients = store.clients()
        for client in clients:
            if as_json:
                print(json.dumps(asdict(client)), file=out)
            else:
                print(f"{client.name}\t{_limits(client)}\tcreated "
                      f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(client.created))} UTC"
                      f"\tsha256 {client.token_sha256[:12]}", file=out)
        if not clients and not as_json:
            print("no clients", file=out)
        return 0
    revoked = store.revoke(args.name)
    if as_json:
        print(json.dumps({"name": args.name, "revoked": revoked}), file=out)
    else:
        print(f"revoked {args.name}" if revoked else f"no client {args.name}", file=out)
    return 0 if revoked else 1


def _limits(client: ApiClient) -> str:
    parts: list[Any] = []
    if client.jobs_in_flight is not None:
        parts.append(f"jobs-in-flight={client.jobs_in_flight}")
    if client.requests_per_minute is not None:
        parts.append(f"requests-per-minute={client.requests_per_minute}")
    return " ".join(parts) or "default limits"
