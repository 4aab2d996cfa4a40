"""The callback outbox and its sender: kept until sent, sent once, a client's slow receiver its own.

A real Redis (this test's own database) holds the outbox; the sender
(tasks/queue/callback_sender.py) runs in this process, as the control worker runs it,
and POSTs to a real receiver on loopback (devkit/receivers.py). A callback task's
message goes through `publish`, into which a test injects a broker failure
(kombu's `OperationalError`, as a Sentinel failover gives). Retries wait the queue's
backoff (1-2 s for the first).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu.exceptions import OperationalError

from devkit.receivers import CallbackReceiver
from tasks.queue.callback_sender import CallbackSender
from tasks.records.redis_target import RedisTarget
from tasks.settings import Settings
from tasks.state.callback_outbox import HTTP, TASK, CallbackOutbox, Delivery
from tasks.state.connection import connect
from tasks.state.job_control import JobControl
from tasks.state.stores import BlobStore, OutputStore, ResultCache, Stores
from tests.harness import eventually, fake_env

TTL = 600


class Publisher:
    """The callback tasks' publish: records each message; its first `failures` raise."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.sent: list[tuple[str, dict[str, Any], str | None]] = []

    def __call__(self, name: str, argument: dict[str, Any], queue: str | None) -> None:
        if self.failures:
            self.failures -= 1
            raise OperationalError("Error 111 connecting to the Redis primary")
        self.sent.append((name, argument, queue))


def make_sender(url: str, publish: Publisher, **env: str) -> tuple[CallbackSender,
                                                                  CallbackOutbox]:
    settings = Settings.from_env(fake_env(REDIS_URL=url,
                                          OCR_CALLBACK_ALLOWED_HOSTS="127.0.0.1", **env))
    client = connect(RedisTarget(url))
    control = JobControl(client, TTL)
    stores = Stores(BlobStore(client, TTL), ResultCache(client, TTL),
                    OutputStore(client, TTL), control)
    outbox = CallbackOutbox(client, TTL)
    return CallbackSender(settings, outbox, stores, publish, "test-sender"), outbox


@pytest.fixture
def url(own_redis_url: str) -> Iterator[str]:
    redis.Redis.from_url(own_redis_url).flushdb()
    yield own_redis_url


@pytest.fixture
def hooks() -> Iterator[CallbackReceiver]:
    receiver = CallbackReceiver(slow=4.0, failures=1)
    yield receiver
    receiver.stop()


def http_delivery(job_id: str, url: str, client: str = "b") -> Delivery:
    body = {"id": job_id, "status": "SUCCESS", "event_id": f"{job_id}.SUCCESS"}
    return Delivery(f"{job_id}.SUCCESS.{HTTP}", HTTP, url, body, job_id=job_id,
                    client=client, first=time.time())


def test_a_failed_publish_stays_in_the_outbox_and_is_sent_once(
        url: str, hooks: CallbackReceiver, caplog: pytest.LogCaptureFixture) -> None:
    """The publish of a callback task fails (the broker away): it is sent on a later try."""
    caplog.set_level(logging.INFO, logger="tasks.queue.callback_sender")
    publish = Publisher(failures=1)
    sender, outbox = make_sender(url, publish)
    task = Delivery("t1.SUCCESS.task", TASK, "billing.done", {"id": "t1"}, job_id="t1",
                    client="b", queue="billing", first=time.time())
    outbox.put([task, http_delivery("t1", hooks.url())])
    sender.start()
    try:
        eventually(lambda: not outbox.waiting(), 30, lambda: f"left: {outbox.waiting()}")
        outbox.put([task])  # the same ending written again: a killed host's, finished
        assert not outbox.waiting()
        time.sleep(1)
    finally:
        sender.stop()
    assert publish.sent == [("billing.done", {"id": "t1"}, "billing")]  # once
    assert hooks.by_job() == {"t1": ["t1.SUCCESS"]}
    said = caplog.text
    assert "callback t1.SUCCESS.task not sent (OperationalError), try 1; kept in the " \
           "outbox" in said
    assert "callback t1.SUCCESS.task sent by test-sender: published, try 2" in said
    assert "the job is retried" not in said  # nothing else retries it


def test_a_post_answered_2xx_is_never_sent_again(url: str, hooks: CallbackReceiver) -> None:
    """A 500 is retried with the same event id; once answered 2xx, a rewrite is not sent."""
    sender, outbox = make_sender(url, Publisher())
    delivery = http_delivery("f1", hooks.url("/flaky"))
    outbox.put([delivery])
    sender.start()
    try:
        eventually(lambda: not outbox.waiting(), 30, lambda: f"left: {outbox.waiting()}")
        # the same ending written again (its first writing lost with a failover)
        outbox.put([delivery])
        eventually(lambda: not outbox.waiting(), 30, lambda: f"left: {outbox.waiting()}")
    finally:
        sender.stop()
    assert [path for path, _ in hooks.arrived] == ["/flaky", "/flaky"]  # 500, then 204
    assert hooks.by_job() == {"f1": ["f1.SUCCESS"]}
    [(headers, body)] = hooks.posts
    assert headers["X-OCR-Event-Id"] == "f1.SUCCESS" == json.loads(body)["event_id"]
    control = JobControl(connect(RedisTarget(url)), TTL)
    recorded = control.callback(control.info("f1"))
    assert recorded is not None and recorded["status"] == "sent"
    assert recorded["attempts"] == 2 and recorded["http_status"] == 204


def test_a_slow_receiver_holds_only_its_own_client_s_threads(
        url: str, hooks: CallbackReceiver) -> None:
    """Client c's receiver answers after 4 s (timeout 1 s): b's callback goes at once.

    c's 6 deliveries, written first, could fill every thread; they hold at most 2
    (OCR_CALLBACK_THREADS_PER_CLIENT), and b's POST arrives before c's third.
    """
    sender, outbox = make_sender(url, Publisher(), OCR_CALLBACK_THREADS="4",
                                 OCR_CALLBACK_THREADS_PER_CLIENT="2",
                                 OCR_CALLBACK_TIMEOUT="1")
    outbox.put([http_delivery(f"c{n}", hooks.url(f"/slow/c{n}"), client="c")
                for n in range(6)])
    outbox.put([http_delivery("b1", hooks.url("/b"), client="b")])
    started = time.monotonic()
    sender.start()
    try:
        eventually(lambda: "b1" in hooks.by_job(), 30, lambda: f"posts: {hooks.arrived}")
        b_seconds = time.monotonic() - started
        eventually(lambda: len(hooks.arrived) >= 3, 30, lambda: f"posts: {hooks.arrived}")
    finally:
        sender.stop()
    paths = [path for path, _ in hooks.arrived]
    assert "/b" in paths[:3]  # at most 2 of c's before it
    print(f"b's callback arrived {b_seconds:.2f} s after the sender started, beside "
          "c's receiver taking 4 s an answer")
