"""A job's password and ground truth wait apart from its message, and go with the job.

This project's senders keep them out of the message: they sit in `ocr:sealed:<random>`,
which the message alone names and only workers read (tests/deploy/test_redis_acl_matrix.py
holds the Redis users to that). A message of a sender that still carries them in clear
(another language's client, the release before) is read as before. A real redis-server
and a real worker with the fake engine (queue mechanics: the PDF is opened for real).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path

import pymupdf
import pytest
import redis

from tasks.state.keys import SEALED_PREFIX
from tests.harness import Worker, corpus, fake_env, make_client
from tests.pdf_fixtures import image_pdf, plain_pages

PASSWORD, TRUTH = "openpassword", "Sealed ground truth 4f1e"


@pytest.fixture(scope="module")
def locked() -> Path:
    """The encrypted corpus PDF; its tests skip where no corpus is (a plain clone)."""
    return corpus("edge_encrypted_pw_openpassword.pdf")


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., Worker]) -> Worker:
    return start_worker(**fake_env(OCR_CONCURRENCY="1"))


def queued_bodies(store: redis.Redis) -> list[bytes]:
    """Every message waiting in a list (queues and lanes), its body decoded."""
    bodies = []
    for key in store.scan_iter():
        if store.type(key) != b"list":
            continue
        for item in store.lrange(key, 0, -1):
            try:
                message = json.loads(item)
            except ValueError:
                continue
            if isinstance(message, dict) and "body" in message:
                bodies.append(base64.b64decode(message["body"]))
    return bodies


def stored_values(store: redis.Redis) -> bytes:
    """Every string and hash value of the database, joined."""
    out = []
    for key in store.scan_iter():
        kind = store.type(key)
        if kind == b"string":
            out.append(store.get(key) or b"")
        elif kind == b"hash":
            out += [*store.hgetall(key).values()]
    return b" ".join(out)


def test_a_message_carries_no_password_nor_ground_truth(
        redis_url: str, request: pytest.FixtureRequest, locked: Path) -> None:
    store = redis.Redis.from_url(redis_url)
    client = make_client(redis_url)
    try:
        job = client.submit(locked, password=PASSWORD, ground_truth=TRUTH,
                            filename="locked.pdf")
        bodies = queued_bodies(store)  # no worker yet: the message waits
        assert len(bodies) == 1 and b'"sealed"' in bodies[0]
        assert PASSWORD.encode() not in bodies[0] and TRUTH.encode() not in bodies[0]
        (sealed,) = store.keys(SEALED_PREFIX + "*")
        assert store.hgetall(sealed) == {b"password": PASSWORD.encode(),
                                         b"ground_truth": TRUTH.encode()}
        assert store.ttl(sealed) > 0
        request.getfixturevalue("worker")
        result = client.wait([job], timeout=90)[job]
        assert result["status"] == "SUCCESS", result
        assert "cer" in result["scores"]  # the truth was read
        assert not store.exists(sealed)  # freed with the job
        assert PASSWORD.encode() not in stored_values(store)
    finally:
        client.close()
        store.close()


def test_a_sender_that_puts_them_in_the_message_is_read_as_before(
        redis_url: str, worker: Worker, locked: Path) -> None:
    client = make_client(redis_url)
    try:
        data = base64.b64encode(locked.read_bytes()).decode()
        job = client.app.send_task("ocr.document", kwargs={
            "data_b64": data, "password": PASSWORD, "ground_truth": TRUTH}).id
        result = client.wait([job], timeout=90)[job]
        assert result["status"] == "SUCCESS", result
        assert "cer" in result["scores"]
    finally:
        client.close()


def test_a_job_whose_sealed_arguments_are_gone_fails_input_not_found(
        redis_url: str, worker: Worker, locked: Path) -> None:
    client = make_client(redis_url)
    try:
        data = base64.b64encode(locked.read_bytes()).decode()
        job = client.app.send_task("ocr.document", kwargs={
            "data_b64": data, "sealed": "0" * 32}).id
        result = client.wait([job], timeout=90)[job]
        assert (result["status"], result["error"]["code"]) == ("FAILURE", "input_not_found")
    finally:
        client.close()


def test_a_fanned_out_pdf_reads_them_once_and_frees_them_at_its_split(
        redis_url: str, worker: Worker) -> None:
    """Its pages read the decrypted copy and its meta the truth: no page needs the key."""
    doc = pymupdf.open(stream=image_pdf(plain_pages(3)), filetype="pdf")
    locked = doc.tobytes(encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw=PASSWORD,
                         owner_pw=PASSWORD)
    store = redis.Redis.from_url(redis_url)
    client = make_client(redis_url)
    try:
        job = client.submit(locked, password=PASSWORD, ground_truth="\f\f",
                            filename="three.pdf", mode="ocr")
        result = client.wait([job], timeout=90)[job]
        assert (result["status"], len(result["pages"])) == ("SUCCESS", 3), result
        assert "cer" in result["scores"]
        assert not store.keys(SEALED_PREFIX + "*")
        assert PASSWORD.encode() not in stored_values(store)
    finally:
        client.close()
        store.close()
