"""A job's callbacks through real workers: kept through a failed publish, sent off the OCR pool.

A real OCR worker (2 prefork children) whose children cannot publish while they end a
job (tests/failing_publish.py, a fake engine: queue mechanics only), the Procfile's
control worker, and a webhook receiver on loopback whose `/slow` paths answer after
4 s, past OCR_CALLBACK_TIMEOUT (2 s). Where a callback was sent is read in the logs:
the control worker's sender logs each one it sent; the OCR worker logs no callback.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator

import pytest

from devkit.receivers import CallbackReceiver
from tasks.client import OcrClient
from tests.harness import FAKE_PLUGINS, Worker, eventually, fake_env, make_client
from tests.image_fixtures import png

SLOW = 4.0
SETTINGS = fake_env(OCR_ENGINE="failing-publish",
                    OCR_ENGINE_PLUGINS=f"{FAKE_PLUGINS},failing-publish="
                                       "tests.failing_publish:FailingPublishEngine",
                    OCR_CONCURRENCY="2", OCR_CALLBACK_ALLOWED_HOSTS="127.0.0.1",
                    OCR_CALLBACK_TIMEOUT="2", OCR_CALLBACK_RETRY_SECONDS="20",
                    OCR_CALLBACK_THREADS="4", OCR_CALLBACK_THREADS_PER_CLIENT="2")
CALLBACK_QUEUE = "delivery-callbacks"


@pytest.fixture(scope="module")
def hooks() -> Iterator[CallbackReceiver]:
    receiver = CallbackReceiver(slow=SLOW)
    yield receiver
    receiver.stop()


@pytest.fixture(scope="module")
def workers(start_worker: Callable[..., Worker]) -> tuple[Worker, Worker]:
    return start_worker(**SETTINGS), start_worker("control", **SETTINGS)


@pytest.fixture(scope="module")
def clients(redis_url: str) -> Iterator[dict[str, OcrClient]]:
    made = {name: make_client(redis_url, OCR_CLIENT=name) for name in ("b", "c")}
    yield made
    for client in made.values():
        client.close()


def ran_a_callback(worker: Worker) -> bool:
    """Whether `worker` sent a callback: a sender's line, or a run of `ocr.http_callback`."""
    return bool(re.search(r"Task ocr\.http_callback\[|callback \S+ sent by", worker.log()))


def job_lines(worker: Worker, job: str) -> list[str]:
    return re.findall(rf"ocr\.job .*\"id\": \"{job}\"", worker.log())


def test_a_publish_failing_during_the_ending_loses_no_callback(
        workers: tuple[Worker, Worker], clients: dict[str, OcrClient],
        hooks: CallbackReceiver) -> None:
    """The child ending the job can publish nothing: its callbacks go out all the same.

    Both were written with the job's result; the control worker sends them, each once.
    """
    ocr, control = workers
    client = clients["b"]
    job = client.submit(png(201), filename="kept.png", callback_task="billing.ocr_done",
                        callback_queue=CALLBACK_QUEUE, callback_url=hooks.url("/kept"))
    assert client.wait([job], timeout=60)[job]["status"] == "SUCCESS"
    eventually(lambda: hooks.by_job().get(job), 30, lambda: control.log()[-3000:])
    with client.app.connection() as conn:
        queue = conn.SimpleQueue(CALLBACK_QUEUE)
        message = queue.get(timeout=30)
        assert message.headers["task"] == "billing.ocr_done"
        assert message.decode()[0][0]["id"] == job
        message.ack()
        with pytest.raises(queue.Empty):
            queue.get(timeout=2)  # once
        queue.close()
    time.sleep(2)  # a second POST, were there one, would come within the sender's turn
    assert hooks.by_job()[job] == [f"{job}.SUCCESS"]
    assert len(job_lines(ocr, job)) == 1  # one ending
    recorded = client.result(job)["callback"]
    assert recorded["status"] == "sent" and recorded["attempts"] == 1
    for kind in ("task", "http"):
        assert f"callback {job}.SUCCESS.{kind} sent by control@" in control.log()
    assert not ran_a_callback(ocr)


def test_a_slow_receiver_delays_no_other_client(
        workers: tuple[Worker, Worker], clients: dict[str, OcrClient],
        hooks: CallbackReceiver) -> None:
    """Client c's 8 jobs' receiver answers after 4 s (timeout 2 s); b's one-page job beside.

    b's callback arrives; no POST ran in an OCR child (the OCR worker logs none, the
    control worker each); c's hold at most 2 of the sender's 4 threads.
    """
    ocr, control = workers
    c, b = clients["c"], clients["b"]
    c_jobs = [c.submit(png(210 + n), filename=f"c{n}.png",
                       callback_url=hooks.url(f"/slow/c{n}")) for n in range(8)]
    assert {r["status"] for r in c.wait(c_jobs, timeout=60).values()} == {"SUCCESS"}
    eventually(lambda: sum(p.startswith("/slow") for p, _ in hooks.arrived) >= 2, 30,
               "c's first slow POSTs")
    sent = time.monotonic()
    b_job = b.submit(png(230), filename="b.png", callback_url=hooks.url("/b"))
    assert b.wait([b_job], timeout=60)[b_job]["status"] == "SUCCESS"
    ended = time.monotonic() - sent
    eventually(lambda: hooks.by_job().get(b_job), 30, lambda: control.log()[-3000:])
    arrived = next(t for p, t in hooks.arrived if p == "/b") - sent
    # logged once its answer is recorded, just after the receiver has it
    eventually(lambda: f"callback {b_job}.SUCCESS.http sent by control@" in control.log(), 10,
               lambda: control.log()[-3000:])
    eventually(lambda: re.search(r"callback \S+\.SUCCESS\.http not sent \(TimeoutError\)",
                                 control.log()), 30,
               lambda: control.log()[-3000:])  # c's, timed out and kept to be retried
    assert not ran_a_callback(ocr)
    assert not re.search(r"Task ocr\.http_callback\[", control.log())  # the sender's own
    slow = [t for p, t in hooks.arrived if p.startswith("/slow")]
    print(f"b's job ended {ended:.2f} s after it was sent, its callback arrived "
          f"{arrived:.2f} s after; c's receiver saw {len(slow)} POSTs meanwhile, "
          f"each answered after {SLOW:g} s")
