"""Every client reads a refusal: Python's urllib, requests and httpx.

The Procfile's `api` process on a real Redis, no worker (nothing here is run). An
upload refused for its size (413 input_too_large), its client's bytes quota (429
quota_exceeded) or its format (415 unsupported_format: a text file) is answered once
the body within twice the upload limit has been read and dropped, so a client that
only reads the answer after sending the whole body (as urllib does) reads the coded
JSON error instead of a reset connection. Bodies are larger than loopback's socket
buffers, so the old early answer did reset urllib.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import requests

from tests.api_server import ApiServer, create_token

MAX_MB = 8
TOO_BIG = (MAX_MB + 2) * 1024 * 1024  # over the limit, within twice the limit
QUOTA_BYTES = 1024 * 1024
OVER_QUOTA = 6 * 1024 * 1024  # within the upload limit, over the client's quota


@pytest.fixture(scope="module")
def api(start_api: Callable[..., ApiServer]) -> ApiServer:
    return start_api(OCR_MAX_INPUT_MB=str(MAX_MB))


@pytest.fixture(scope="module")
def tokens(api: ApiServer, redis_url: str) -> dict[str, str]:
    return {"roomy": create_token(redis_url, "roomy"),
            "tight": create_token(redis_url, "tight", "--max-bytes", str(QUOTA_BYTES))}


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"  # an upload's first bytes tell its format


def multipart(size: int, data: bytes = PNG_SIGNATURE, name: str = "big.png"
              ) -> tuple[bytes, str]:
    """A multipart body whose file is `size` bytes: `data`, then zeros."""
    boundary = uuid.uuid4().hex
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{name}"\r\nContent-Type: image/png\r\n\r\n').encode()
    return head + data + bytes(size - len(data)) + f"\r\n--{boundary}--\r\n".encode(), \
        f"multipart/form-data; boundary={boundary}"


def by_urllib(url: str, token: str, body: bytes, content_type: str) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Authorization": f"Bearer {token}", "Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read())


def by_requests(url: str, token: str, body: bytes, content_type: str) -> tuple[int, Any]:
    answer = requests.post(url, data=body, timeout=60, headers={
        "Authorization": f"Bearer {token}", "Content-Type": content_type})
    return answer.status_code, answer.json()


def by_httpx(url: str, token: str, body: bytes, content_type: str) -> tuple[int, Any]:
    answer = httpx.post(url, content=body, timeout=60, headers={
        "Authorization": f"Bearer {token}", "Content-Type": content_type})
    return answer.status_code, answer.json()


CLIENTS: dict[str, Callable[[str, str, bytes, str], tuple[int, Any]]] = {
    "urllib": by_urllib, "requests": by_requests, "httpx": by_httpx}


def stored(store: redis.Redis) -> set[bytes]:
    return {key for pattern in ("ocr:blob:*", "ocr:api:upload:*", "ocr:api:job:*")
            for key in store.scan_iter(match=pattern, count=1000)}


@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_every_client_reads_413_and_429(client: str, api: ApiServer, tokens: dict[str, str],
                                        redis_url: str, tmp_path: Path) -> None:
    store = redis.Redis.from_url(redis_url)
    before = stored(store)
    post = CLIENTS[client]
    for token, size, status, code in ((tokens["roomy"], TOO_BIG, 413, "input_too_large"),
                                      (tokens["tight"], OVER_QUOTA, 429, "quota_exceeded")):
        body, content_type = multipart(size)
        for _ in range(3):  # the same connection pool, again: every answer read
            got, error = post(f"{api.url}/v1/jobs", token, body, content_type)
            assert (got, error["error"]["code"]) == (status, code), (client, got, error)
            assert error["error"]["message"]
    assert stored(store) <= before  # nothing stored


def test_clients_bytes_set_keeps_its_ttl(api: ApiServer, tokens: dict[str, str],
                                         redis_url: str) -> None:
    """The set of a client's waiting inputs keeps a TTL (docs: every `ocr:` key has one).

    An upload in one piece is appended, then renamed into the job's blob: removing the
    upload from the set emptied it, and the blob's SADD made it anew without a TTL
    (found by the chaos soak).
    """
    store = redis.Redis.from_url(redis_url)
    body, content_type = multipart(1000)
    got, answer = by_requests(f"{api.url}/v1/jobs", tokens["roomy"], body, content_type)
    assert got == 202, answer
    assert store.ttl("ocr:api:bytes:roomy") > 0


@pytest.mark.parametrize("size", [60, 2 * 1024 * 1024])
def test_a_file_that_is_no_image_or_pdf_is_refused_at_the_door(
        size: int, api: ApiServer, tokens: dict[str, str], redis_url: str) -> None:
    """A text file: 415 `unsupported_format`, told by its first bytes, nothing stored.

    A large one is refused once its first KiB has arrived; every client reads it.
    """
    store = redis.Redis.from_url(redis_url)
    before = stored(store)
    body, content_type = multipart(size, b"Dear reader,\nthis is a ground-truth text.\n",
                                   "page.gt.txt")
    for client in sorted(CLIENTS):
        got, error = CLIENTS[client](f"{api.url}/v1/jobs", tokens["roomy"], body,
                                     content_type)
        assert (got, error["error"]["code"]) == (415, "unsupported_format"), (client, error)
        assert "page.gt.txt" in error["error"]["message"]
        assert "nothing was stored" in error["error"]["message"]
    assert stored(store) <= before
