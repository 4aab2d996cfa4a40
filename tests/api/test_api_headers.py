"""The API's own bounds and headers: a slow head is cut, /v1 and the docs carry a CSP.

A real `api` process (the Procfile's, OCR_API_HEADER_TIMEOUT a few seconds) and a real
worker with the fake and the bundled engine (hOCR needs word boxes), on a real Redis.
The slow client is a raw socket that sends its request's head a byte at a time.
"""

from __future__ import annotations

import base64
import hashlib
import re
import socket
import time
from collections.abc import Callable

import pytest
import requests

from tests.api.test_api import send, text_png
from tests.api_server import ApiServer, create_token, session, wait_end
from tests.harness import FAST_PAGES, Worker, fake_env

HEAD_TIMEOUT = 2  # the API's OCR_API_HEADER_TIMEOUT here
CSP = "default-src 'none'"


@pytest.fixture(scope="module")
def api(start_worker: Callable[..., Worker], start_api: Callable[..., ApiServer]
        ) -> ApiServer:
    start_worker(**fake_env("fake", "tesseract", **FAST_PAGES))
    return start_api(OCR_API_HEADER_TIMEOUT=str(HEAD_TIMEOUT))


@pytest.fixture(scope="module")
def carol(api: ApiServer, redis_url: str) -> requests.Session:
    return session(create_token(redis_url, "carol"))


def dripped_until_closed(api: ApiServer, head: bytes, every: float,
                         most: float) -> tuple[bool, bytes]:
    """Send `head` a byte each `every` s, for `most` s at most.

    Whether the API closed the connection first, and what it answered.
    """
    answered = b""
    with socket.create_connection(("127.0.0.1", api.port), timeout=5) as sock:
        sock.settimeout(every)
        until = time.monotonic() + most
        for byte in head:
            if time.monotonic() > until:
                return False, answered
            try:
                sock.sendall(bytes([byte]))
                piece = sock.recv(4096)  # waits `every` s at most: the drip's pace
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                return True, answered
            if not piece:
                return True, answered
            answered += piece
    return False, answered


def test_a_connection_sending_its_head_a_byte_at_a_time_is_closed(api: ApiServer) -> None:
    # 0.5 s a byte: a head of 120 bytes would take a minute.
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: drip\r\n" \
           + b"X-Pad: " + b"x" * 60 + b"\r\n\r\n"
    closed, answered = dripped_until_closed(api, head, every=0.5, most=45)
    assert closed, "the API still held the connection"
    assert answered == b""  # closed, never answered
    # A request whose head arrives at once is served as ever, on a kept-alive connection
    # too (its second request's head is timed afresh).
    with requests.Session() as http:
        for _ in range(2):
            assert http.get(f"{api.url}/healthz", timeout=10).status_code == 200


def test_v1_answers_carry_a_csp_hocr_and_json_alike(api: ApiServer,
                                                    carol: requests.Session) -> None:
    job_id = send(carol, api, text_png(), "line.png", output="hocr", engine="tesseract",
                  lang="eng")
    assert wait_end(carol, api, job_id)["status"] == "SUCCESS"
    hocr = carol.get(f"{api.url}/v1/jobs/{job_id}/result?format=hocr", timeout=10)
    assert hocr.status_code == 200 and hocr.headers["content-type"].startswith("text/html")
    status = carol.get(f"{api.url}/v1/jobs/{job_id}", timeout=10)
    missing = carol.get(f"{api.url}/v1/jobs/no-such-job", timeout=10)
    assert missing.status_code == 404
    for answer in (hocr, status, missing):
        policy = answer.headers.get("content-security-policy", "")
        assert policy.startswith(CSP) and "frame-ancestors 'none'" in policy, answer.url
        assert answer.headers.get("x-content-type-options") == "nosniff", answer.url


def test_the_docs_carry_a_csp_and_are_never_framed(api: ApiServer) -> None:
    """/docs, /redoc and /openapi.json: no frame, only this site's files and own script.

    A browser renders /docs under this CSP in test_integration.py (chromium).
    """
    pages = {path: requests.get(f"{api.url}{path}", timeout=10)
             for path in ("/docs", "/redoc", "/docs/oauth2-redirect", "/openapi.json")}
    swagger = pages["/docs"].text
    files = re.findall(r'(?:src|href)="(/static-offline-docs/[^"]+)"', swagger)
    assert files, swagger
    pages.update({path: requests.get(f"{api.url}{path}", timeout=10) for path in files})
    for path, answer in pages.items():
        assert answer.status_code == 200, path
        policy = answer.headers.get("content-security-policy", "")
        assert "frame-ancestors 'none'" in policy, (path, policy)
        assert answer.headers.get("x-frame-options") == "DENY", path
        assert answer.headers.get("x-content-type-options") == "nosniff", path
    policy = pages["/docs"].headers["content-security-policy"]
    scripts = dict(part.strip().split(" ", 1) for part in policy.split(";"))["script-src"]
    assert "'unsafe-inline'" not in scripts and "'unsafe-eval'" not in scripts, scripts
    # the page's one inline script (Swagger UI's start) is allowed by its hash alone
    inline = re.findall(r"<script>(.*?)</script>", swagger, re.S)
    assert len(inline) == 1, swagger
    digest = base64.b64encode(hashlib.sha256(inline[0].encode()).digest()).decode()
    assert scripts.split() == ["'self'", f"'sha256-{digest}'"], scripts
    assert not re.search(r'(?:src|href)="(?!/)', swagger)  # nothing from elsewhere
