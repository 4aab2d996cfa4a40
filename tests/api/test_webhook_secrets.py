# ruff: noqa: F811  (the fixtures of test_api.py are imported by name, as pytest needs)
"""Per-client webhook secrets through the real API server, a real worker and a receiver.

Each API client gets its own signing secret with its token (`submit.py tokens
create NAME --json` prints it once as `webhook_secret`); callbacks of its jobs are signed
with it. `tokens rotate-secret NAME --grace S` makes a new one; for S seconds each
callback also carries `X-OCR-Signature-Previous`, made with the old secret, so a
receiver still holding the old one verifies; after the grace only the new one signs.
Celery-protocol senders' callbacks stay signed with OCR_CALLBACK_SECRET.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import redis
import requests

from devkit.receivers import CallbackReceiver
from tasks.client import OcrClient
from tasks.lifecycle.callbacks import verify
from tests.api.test_api import (  # noqa: F401 - the module's fixtures, reused
    SECRET,
    api,
    callbacks,
    healed,
    png,
    roots,
    send,
    wait_end,
    worker,
)
from tests.api_server import ApiServer, session
from tests.harness import ROOT, eventually


def tokens(redis_url: str, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "submit.py", "tokens", *args, "--json"], cwd=ROOT,
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "REDIS_URL": redis_url, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def callback_of(receiver: CallbackReceiver, job_id: str) -> tuple[dict[str, str], bytes]:
    found = eventually(lambda: [(h, b) for h, b in receiver.posts
                                if json.loads(b).get("id") == job_id], 60, "the callback")
    return found[0]


def hooked_job(http: requests.Session, api: ApiServer, receiver: CallbackReceiver) -> str:
    job_id = send(http, api, png(), "hooked.png",
                  callback_url=f"http://127.0.0.1:{receiver.port}/hooks/ocr")
    assert wait_end(http, api, job_id)["status"] == "SUCCESS"
    return job_id


def test_each_client_signs_with_its_own_secret_and_rotation_has_grace(
        api: ApiServer, receiver: CallbackReceiver, redis_url: str) -> None:
    carol = tokens(redis_url, "create", "carol")
    dave = tokens(redis_url, "create", "dave")
    assert carol["webhook_secret"].startswith("whsec_")
    assert carol["webhook_secret"] != dave["webhook_secret"]
    listing = subprocess.run([sys.executable, "submit.py", "tokens", "list", "--json"],
                             cwd=ROOT, capture_output=True, text=True, timeout=60,
                             env={**os.environ, "REDIS_URL": redis_url,
                                  "PYTHONPATH": str(ROOT)})
    assert carol["webhook_secret"] not in listing.stdout  # shown once, at creation

    carol_http, dave_http = session(carol["token"]), session(dave["token"])
    headers, body = callback_of(receiver, hooked_job(carol_http, api, receiver))
    stamp, signature = headers["X-OCR-Timestamp"], headers["X-OCR-Signature"]
    assert verify(body, carol["webhook_secret"], stamp, signature)
    assert not verify(body, dave["webhook_secret"], stamp, signature)
    assert not verify(body, SECRET, stamp, signature)
    assert "X-OCR-Signature-Previous" not in headers
    headers, body = callback_of(receiver, hooked_job(dave_http, api, receiver))
    assert verify(body, dave["webhook_secret"], headers["X-OCR-Timestamp"],
                  headers["X-OCR-Signature"])

    # rotation with a grace period: the new secret signs, the old one too, in a second header
    rotated = tokens(redis_url, "rotate-secret", "carol", "--grace", "3600")["webhook_secret"]
    assert rotated.startswith("whsec_") and rotated != carol["webhook_secret"]
    headers, body = callback_of(receiver, hooked_job(carol_http, api, receiver))
    stamp = headers["X-OCR-Timestamp"]
    assert verify(body, rotated, stamp, headers["X-OCR-Signature"])
    assert verify(body, carol["webhook_secret"], stamp, headers["X-OCR-Signature-Previous"])
    assert not verify(body, carol["webhook_secret"], stamp, headers["X-OCR-Signature"])

    # after the grace (0 s here) only the new secret signs
    newest = tokens(redis_url, "rotate-secret", "carol", "--grace", "0")["webhook_secret"]
    headers, body = callback_of(receiver, hooked_job(carol_http, api, receiver))
    assert verify(body, newest, headers["X-OCR-Timestamp"], headers["X-OCR-Signature"])
    assert "X-OCR-Signature-Previous" not in headers

    # revoking the client removes its secret
    tokens(redis_url, "revoke", "carol")
    assert not redis.Redis.from_url(redis_url).exists("ocr:api:webhook:carol")


def test_celery_protocol_jobs_keep_the_service_secret(
        api: ApiServer, receiver: CallbackReceiver, redis_url: str) -> None:
    from tests.harness import make_client

    client: OcrClient = make_client(redis_url)
    try:
        job_id = client.submit(png(), filename="celery.png",
                               callback_url=f"http://127.0.0.1:{receiver.port}/hooks/ocr")
        assert client.wait([job_id], timeout=90)[job_id]["status"] == "SUCCESS"
    finally:
        client.close()
    headers, body = callback_of(receiver, job_id)
    assert verify(body, SECRET, headers["X-OCR-Timestamp"], headers["X-OCR-Signature"])
    assert "X-OCR-Signature-Previous" not in headers
