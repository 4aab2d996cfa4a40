"""Hardening (issue 11): hostile broker messages, path races, leaking limits, callbacks.

Real redis-server and real worker processes (fake engines) throughout.
"""

from __future__ import annotations

import base64
import json
import pickle
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis

from tasks.client import OcrClient
from tasks.queue.transport import read_dead_letters
from tasks.state.keys import DEAD_LETTER_KEY
from tests.conftest import FAKE_PLUGINS, Worker, corpus

FAKE_ENV = {"OCR_ENGINE": "fake", "OCR_ENGINE_PLUGINS": FAKE_PLUGINS,
            "OCR_CONCURRENCY": "1", "OCR_CACHE_RESULTS": "0"}
QUEUE = "ocr"


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., Worker]) -> Worker:
    return start_worker(**FAKE_ENV, OCR_MAX_INPUT_MB="1")


@pytest.fixture(scope="module")
def raw_redis(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


def envelope(task_id: str, body: str, content_type: str = "application/json",
             **headers: Any) -> bytes:
    """A kombu/Celery protocol-2 message as kombu's Redis transport stores it."""
    return json.dumps({
        "body": body, "content-encoding": "utf-8", "content-type": content_type,
        "headers": {"lang": "py", "task": "ocr.document", "id": task_id,
                    "root_id": task_id, "parent_id": None, "group": None, **headers},
        "properties": {"correlation_id": task_id, "reply_to": "", "delivery_mode": 2,
                       "delivery_info": {"exchange": "", "routing_key": QUEUE},
                       "priority": 3, "body_encoding": "base64",
                       "delivery_tag": str(uuid.uuid4())}}).encode()


def celery_body(kwargs: dict[str, Any]) -> str:
    return base64.b64encode(json.dumps(
        [[], kwargs, {"callbacks": None, "errbacks": None, "chain": None,
                      "chord": None}]).encode()).decode()


def ok_job(client: OcrClient) -> dict[str, Any]:
    job = client.submit(corpus("scan_tess_phototest.tif"))
    return client.wait([job], timeout=60)[job]


def wait_state(client: OcrClient, task_id: str, timeout: float = 30) -> dict[str, Any]:
    return client.wait([task_id], timeout=timeout)[task_id]


def test_malformed_messages_are_dead_lettered_and_the_worker_goes_on(
        worker: Worker, client: OcrClient, raw_redis: redis.Redis) -> None:
    raw_redis.delete(DEAD_LETTER_KEY)
    no_base64_id = str(uuid.uuid4())
    bodies = [b"not json", b"[]", b"null", b"{}",
              envelope(no_base64_id, "this is *not* base64!")]
    for body in bodies:
        raw_redis.lpush(QUEUE, body)
        assert ok_job(client)["status"] == "SUCCESS"  # the worker is alive after each
    letters = read_dead_letters(raw_redis)
    assert len(letters) == len(bodies)
    assert {d.code for d in letters} == {"malformed_message"}
    assert sorted(d.raw.encode() for d in letters) == sorted(bodies)
    assert all(d.queue == QUEUE and d.time > 0 for d in letters)
    assert 0 < raw_redis.ttl(DEAD_LETTER_KEY) <= 604800
    # the one whose id could be read has its FAILURE
    failed = wait_state(client, no_base64_id)
    assert failed["status"] == "FAILURE"
    assert failed["error"]["code"] == "malformed_message"
    assert "Unrecoverable" not in worker.log()
    assert worker.proc is not None and worker.proc.poll() is None


def test_pickled_message_fails_instead_of_pending(worker: Worker, client: OcrClient,
                                                  raw_redis: redis.Redis) -> None:
    task_id = str(uuid.uuid4())
    body = base64.b64encode(pickle.dumps(((), {"data_b64": "AAAA"}, {}))).decode()
    raw_redis.lpush(QUEUE, envelope(task_id, body, "application/x-python-serialize"))
    result = wait_state(client, task_id)
    assert result["status"] == "FAILURE" and result["error"]["code"] == "content_refused"
    assert read_dead_letters(raw_redis, 1)[0].task_id == task_id
    assert ok_job(client)["status"] == "SUCCESS"


def test_oversized_inline_input_is_refused_before_decoding(
        worker: Worker, client: OcrClient, raw_redis: redis.Redis) -> None:
    task_id = str(uuid.uuid4())
    data = base64.b64encode(b"\0" * 3 * 2**20).decode()  # 3 MB, limit 1 MB
    raw_redis.lpush(QUEUE, envelope(task_id, celery_body({"data_b64": data})))
    result = wait_state(client, task_id)
    assert result["status"] == "FAILURE" and result["error"]["code"] == "input_too_large"
    letter = read_dead_letters(raw_redis, 1)[0]
    assert letter.code == "input_too_large" and letter.truncated
    assert letter.size > 4 * 2**20 and len(letter.raw) <= 4096 * 4
    assert "refused a message on queue ocr (input_too_large" in worker.log()
    assert ok_job(client)["status"] == "SUCCESS"


def test_dead_letter_list_is_capped(start_worker: Callable[..., Worker],
                                    raw_redis: redis.Redis, client: OcrClient) -> None:
    start_worker(**FAKE_ENV, OCR_DEAD_LETTER_MAX="3", OCR_QUEUES="ocr-capped")
    raw_redis.delete(DEAD_LETTER_KEY)
    for n in range(5):
        raw_redis.lpush("ocr-capped", f"junk {n}".encode())
    deadline = time.monotonic() + 30
    while raw_redis.llen("ocr-capped") and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    assert [d.raw for d in read_dead_letters(raw_redis)] == ["junk 4", "junk 3", "junk 2"]
