"""Job control through real workers: cancel, deadlines, callbacks, retry.

Each test starts its own worker (named fake engines) and kills it at the end, so
that page queues shared by engine name are served by one worker at a time. (An
interactive job overtaking a running batch is tests/queue/test_brokers.py's, on both
brokers.)
"""

from __future__ import annotations

import http.server
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tasks.client import OcrClient
from tasks.state.job_control import JobControl
from tests.harness import FAST_PAGES, Worker, eventually, fake_env, kill_all
from tests.image_fixtures import png
from tests.pdf_fixtures import image_pdf, plain_pages

pytestmark = pytest.mark.slow

ENGINES = ("fake", "stuck-on-dark", "flaky-on-dark")
BASE = fake_env(*ENGINES, **FAST_PAGES)


@pytest.fixture
def worker(start_worker: Callable[..., Worker]) -> Iterator[Callable[..., Worker]]:
    """Start a worker for one test; it is killed when the test ends.

    Killed, not stopped: the test's jobs have all ended, nothing is asserted of the
    worker's shutdown, and a warm shutdown costs a prefork worker 2-3 s.
    """
    mine: list[Worker] = []

    def start(process: str = "worker", **env: str) -> Worker:
        mine.append(start_worker(process, **{**BASE, **env}))
        return mine[-1]

    yield start
    kill_all(mine)


def outcomes(worker: Worker, job: str) -> list[str]:
    """The outcomes of the `ocr.job` lines a worker logged for `job` (one per ending).

    Read once there is one: a job's result is stored before its ending logs the line.
    """
    def logged() -> list[str]:
        records = (json.loads(m)
                   for m in re.findall(r"ocr\.job (\{.*\})$", worker.log(), re.M))
        return [r["outcome"] for r in records if r["id"] == job]

    return eventually(logged, 30, f"the ocr.job line of {job}")


def wait_for_pages(client: OcrClient, job: str, done: int, timeout: float = 60) -> None:
    def reached() -> bool:
        status = client.status(job)
        if status.state == "PROGRESS" and status.done >= done:
            return True
        assert not status.final, f"job ended before {done} pages: {status}"
        return False

    eventually(reached, timeout, f"{done} pages done", interval=0.05)


def test_cancel_a_pending_job(worker: Callable[..., Worker], client: OcrClient) -> None:
    running = worker(OCR_CONCURRENCY="1", FAKE_PAGE_SECONDS="2")
    first = client.submit(png(200))
    pending = client.submit(png(201))
    assert client.cancel([pending]) == {pending: "cancelled"}
    assert client.wait([pending], timeout=5)[pending]["status"] == "CANCELLED"
    assert client.wait([first], timeout=30)[first]["status"] == "SUCCESS"
    after = client.submit(png(202))
    assert client.wait([after], timeout=30)[after]["status"] == "SUCCESS"
    assert outcomes(running, pending) == ["CANCELLED"]  # it never ran


def test_cancel_survives_a_worker_restart(worker: Callable[..., Worker],
                                          client: OcrClient) -> None:
    queued = client.submit(png(203))  # no worker is running yet
    # No worker can answer: the cancel stays a request (a message for the next worker).
    assert client.cancel([queued], wait=0.1) == {queued: "requested"}
    started = worker(OCR_CONCURRENCY="1")  # a fresh worker: Celery's revoke list is empty
    follow = client.submit(png(204))
    assert client.wait([follow], timeout=30)[follow]["status"] == "SUCCESS"
    assert client.result(queued)["status"] == "CANCELLED"
    assert outcomes(started, queued) == ["CANCELLED"]  # it never ran


def test_a_cancel_ending_between_its_two_writes_reads_cancelled(client: OcrClient) -> None:
    """A cancel's ending stores the job's result, then Celery's REVOKED: read in between.

    The job's state (what an events stream reads) says CANCELLED and final as soon as
    the first write is there; its result must say the same, not a FAILURE read from
    Celery's state, which is still STARTED (the chaos soak met this once).
    """
    job = f"between-{uuid.uuid4().hex[:8]}"
    client.app.backend.store_result(job, {"pid": 1}, "STARTED")
    kept = {"id": job, "status": "CANCELLED", "pages": [], "filename": "a.png"}
    JobControl(client.app.backend.client, 60).store_cancelled(job, kept)
    assert client.status(job).status == "CANCELLED"
    assert client.result(job)["status"] == "CANCELLED"


def test_cancel_a_running_document(worker: Callable[..., Worker], client: OcrClient) -> None:
    running = worker(OCR_CONCURRENCY="2", FAKE_PAGE_SECONDS="0.5")
    # Page 8 hangs like native code; pages 1-7 take 0.5 s each on two children.
    job = client.submit(image_pdf(plain_pages(8, dark=[8])), filename="long.pdf",
                        engine="stuck-on-dark")
    store = client.app.backend.client
    control = JobControl(store, 60)
    blob = control.info(job)["blob"]  # its uploaded input
    # Pages 1-7 done: page 8, queued behind them, has started and hangs in a child (a
    # cancel that came sooner would find it queued and skip it, killing no child).
    wait_for_pages(client, job, 7)
    time.sleep(1.0)
    children_before = {p.pid for p in psutil.Process(running.proc.pid).children()}  # type: ignore[union-attr]
    assert client.cancel([job]) == {job: "cancelled"}
    # Page 8 would hang for 60 s: a result within the bound is the cancel's doing.
    result = client.wait([job], timeout=30)[job]
    assert result["status"] == "CANCELLED"
    numbers = [p["number"] for p in result["pages"]]
    assert len(numbers) >= 3 and all(p["text"].startswith("fake ") for p in result["pages"])
    assert 8 not in numbers
    # Nothing of the job is left in Redis but its cancelled result, once its ending is
    # done (it stores the result, frees the join and the input, then marks its claim
    # done). Only this job's input is looked for: an earlier test's worker, killed as
    # that test ended, may have been killed between an ending's log line and its
    # freeing of the input (which then waits for OCR_BLOB_TTL).
    eventually(lambda: control.has_ended(job) and control.end_holder(job) is None, 10,
               "the cancel's ending marked done")
    assert not store.keys(f"ocr:doc:{job}:meta") and not store.keys(f"ocr:doc:{job}:pages")
    assert not store.exists(blob)
    # the next job runs, on healthy children (killed ones were replaced)
    follow = client.submit(png(205))
    assert client.wait([follow], timeout=30)[follow]["status"] == "SUCCESS"

    def replaced() -> set[int] | None:  # the killed children are replaced
        children = {p.pid for p in psutil.Process(running.proc.pid).children()}  # type: ignore[union-attr]
        return children if len(children) == 2 and children != children_before else None

    def shown() -> str:
        kids = psutil.Process(running.proc.pid).children()  # type: ignore[union-attr]
        return (f"two new pool children: before {sorted(children_before)}, now "
                f"{[(p.pid, p.status()) for p in kids]}\n{running.log()[-3000:]}")

    eventually(replaced, 30, shown)


def test_expired_job_never_starts(worker: Callable[..., Worker], client: OcrClient) -> None:
    late = client.submit(png(206), deadline=1)
    time.sleep(1.5)  # no worker yet: the deadline passes in the queue
    started = worker(OCR_CONCURRENCY="1")
    result = client.wait([late], timeout=30)[late]
    assert result["status"] == "FAILURE"
    assert result["error"]["code"] == "deadline_exceeded"
    assert outcomes(started, late) == ["FAILURE"]


def test_running_job_stops_at_its_deadline(worker: Callable[..., Worker],
                                           client: OcrClient) -> None:
    worker(OCR_CONCURRENCY="1", FAKE_PAGE_SECONDS="1")
    job = client.submit(image_pdf(plain_pages(6)), filename="six.pdf", deadline=2.5)
    result = client.wait([job], timeout=30)[job]
    assert result["status"] == "PARTIAL", result
    done = [p["number"] for p in result["pages"] if "error" not in p]
    assert 1 <= len(done) <= 4
    assert {p["code"] for p in result["failed_pages"]} == {"deadline_exceeded"}
    assert len(done) + len(result["failed_pages"]) == 6


def test_callback_task_receives_the_result(worker: Callable[..., Worker],
                                           client: OcrClient) -> None:
    worker(OCR_CONCURRENCY="1")
    worker("control")  # the callback outbox's sender publishes it
    job = client.submit(png(207), filename="cb.png", callback_task="billing.ocr_done",
                        callback_queue="billing")
    assert client.wait([job], timeout=30)[job]["status"] == "SUCCESS"
    with client.app.connection() as conn:
        queue = conn.SimpleQueue("billing")
        message = queue.get(timeout=10)
        assert message.headers["task"] == "billing.ocr_done"
        args, _, _ = message.decode()
        assert args[0]["id"] == job and args[0]["filename"] == "cb.png"
        assert args[0]["text"].startswith("fake 64x48")
        message.ack()
        queue.close()


class Receiver(http.server.BaseHTTPRequestHandler):
    """Records POSTed bodies; answers 503 to the first one, then 200."""

    bodies: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        length = int(self.headers["Content-Length"])
        self.bodies.append(json.loads(self.rfile.read(length)))
        self.send_response(503 if len(self.bodies) == 1 else 200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_http_callback_is_posted_and_retried(worker: Callable[..., Worker],
                                             client: OcrClient) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hosts = f"127.0.0.1:{server.server_address[1]}"
    worker(OCR_CONCURRENCY="1", OCR_CALLBACK_ALLOWED_HOSTS=hosts)
    worker("control", OCR_CALLBACK_ALLOWED_HOSTS=hosts)  # the callback outbox's sender
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/ocr-done"
        job = client.submit(png(208), callback_url=url)
        assert client.wait([job], timeout=30)[job]["status"] == "SUCCESS"
        eventually(lambda: len(Receiver.bodies) >= 2, 30, "the callback's retry")
        assert len(Receiver.bodies) == 2  # the 503 was retried once, then accepted
        body = Receiver.bodies[-1]
        assert body["id"] == job and body["status"] == "SUCCESS"
        assert body["pages_done"] == 1 and "pages" not in body  # a summary, no texts
    finally:
        server.shutdown()


def test_retry_completes_a_partial_job(worker: Callable[..., Worker], client: OcrClient,
                                       tmp_path: Path) -> None:
    healed = tmp_path / "healed"
    worker(OCR_CONCURRENCY="2", FAKE_HEALED_FLAG=str(healed))
    job = client.submit(image_pdf(plain_pages(4, dark=[2, 4])), filename="four.pdf",
                        engine="flaky-on-dark")
    first = client.wait([job], timeout=30)[job]
    assert first["status"] == "PARTIAL"
    assert [p["number"] for p in first["failed_pages"]] == [2, 4]
    healed.touch()
    again = client.retry(job)
    second = client.wait([again], timeout=30)[again]
    assert second["status"] == "SUCCESS", second
    assert second["retry_of"] == job and second["id"] == again
    assert [p["number"] for p in second["pages"]] == [1, 2, 3, 4]
    assert second["pages"][0] == first["pages"][0]  # kept, not re-read
    assert all(p["text"].startswith("fake ") for p in second["pages"])
