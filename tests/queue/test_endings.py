"""Every way a job can end, through real workers: one result, both callbacks, one line.

Success, failure, partial, cancel (running and queued), deadline, poison, hard kill and
an unexpected exception each end the job through its one exit: the result is stored,
the callback task and the HTTP callback each fire exactly once, the `ocr.job` line is
written once (by whichever process ended the job), and nothing of the job is left in
Redis but its result. Fake engines (tests/fake_engines.py) drive the endings.

"Once" is read when the job's ending is done (its end claim marked done: the ending
has queued its callbacks and written its line, and any later ending of the job is a
no-op), and, for the HTTP callback, when its task has returned (the delivery it
records on the job); no check waits a fixed time for a duplicate.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from devkit.receivers import CallbackReceiver
from tasks.client import OcrClient
from tasks.state.callback_outbox import TASK, CallbackOutbox
from tasks.state.job_control import ENDING_DONE, JobControl
from tasks.state.keys import job_ended_key
from tests.harness import FAKE_PLUGINS, FAST_PAGES, Worker, eventually, fake_env, kill_all
from tests.image_fixtures import png
from tests.pdf_fixtures import image_pdf, plain_pages

pytestmark = pytest.mark.slow

ENGINES = ("fake", "stuck-on-dark", "flaky-on-dark", "killer", "raising-on-dark")
SETTINGS = fake_env(*ENGINES, **FAST_PAGES,
                    OCR_CONCURRENCY="2", OCR_MAX_DELIVERIES="2",
                    OCR_SOFT_TIME_LIMIT="3", OCR_HARD_TIME_LIMIT="5",
                    OCR_PAGE_SOFT_TIME_LIMIT="20", OCR_PAGE_HARD_TIME_LIMIT="25",
                    OCR_CALLBACK_ALLOWED_HOSTS="127.0.0.1")  # the test receiver, on loopback
CALLBACK_QUEUE = "endings-callbacks"
SLOW_ENDING = {**SETTINGS, "OCR_ENGINE": "slow-ending",
               "OCR_ENGINE_PLUGINS": f"{FAKE_PLUGINS},slow-ending=tests.slow_ending:"
                                     "SlowEndingEngine"}


@pytest.fixture
def slow_ending(start_worker: Callable[..., Worker]) -> Iterator[Callable[..., Worker]]:
    """Workers of the `slow-ending` fake (tests/slow_ending.py), gone after the test.

    Every one of them consumes that engine's queue, where a fanned-out PDF's pages go:
    a worker left from an earlier test would take a later test's pages.
    """
    started: list[Worker] = []

    def factory(**env: str) -> Worker:
        started.append(start_worker(**{**SLOW_ENDING, **env}))
        return started[-1]

    yield factory
    kill_all(started)


@pytest.fixture(scope="module")
def processes(start_worker: Callable[..., Worker]) -> list[Worker]:
    """An OCR worker and the Procfile's control worker (cancels, callbacks)."""
    return [start_worker(**SETTINGS), start_worker(process="control", **SETTINGS)]


# Callback-task messages taken off CALLBACK_QUEUE, by job id, until a test reads them.
CALLBACKS: dict[str, list[dict[str, Any]]] = {}


def wait_ending_done(client: OcrClient, job: str) -> None:
    """Until the job's one exit has finished: its end claim is marked done.

    By then the ending has written its callbacks into the outbox, and its `ocr.job`
    line; any ending after it is a no-op (the claim).
    """
    store = client.app.backend.client
    eventually(lambda: store.get(job_ended_key(job)) == ENDING_DONE.encode(), 30,
               f"the ending of {job} done")


def callback_messages(client: OcrClient, job: str) -> list[dict[str, Any]]:
    """The callback-task messages sent for `job` since the last read, once they are sent.

    The ending writes them into the callback outbox with its result; the control
    worker removes each once its message is published, so by then the queue holds
    every one: it is emptied without waiting (other jobs' messages are kept for them).
    """
    wait_ending_done(client, job)
    outbox = CallbackOutbox(client.app.backend.client, 600)
    eventually(lambda: not [d for d in outbox.waiting() if d.job_id == job and d.kind == TASK],
               30, f"the callback task of {job} sent")
    with client.app.connection() as conn:
        queue = conn.SimpleQueue(CALLBACK_QUEUE)
        try:
            while True:
                try:
                    message = queue.get(block=False)
                except queue.Empty:
                    break
                args, _, _ = message.decode()
                CALLBACKS.setdefault(args[0]["id"], []).append(args[0])
                message.ack()
        finally:
            queue.close()
    return CALLBACKS.pop(job, [])


def http_bodies(client: OcrClient, receiver: CallbackReceiver,
                job: str) -> list[dict[str, Any]]:
    """The bodies POSTed for `job`, once the ending is done and its callback task returned.

    The control worker's sender records the delivery on the job (the result's
    `callback`) after the receiver answered; a second POST would need a second
    delivery, which only a second ending writes.
    """
    wait_ending_done(client, job)
    eventually(lambda: client.result(job).get("callback"), 30,
               f"the HTTP callback of {job} recorded")
    return [b for b in receiver.bodies() if b["id"] == job]


def job_lines(processes: list[Worker], job: str) -> list[dict[str, Any]]:
    lines = []
    for proc in processes:
        for match in re.finditer(r"ocr\.job (\{.*\})", proc.log()):
            record = json.loads(match.group(1))
            if record["id"] == job:
                lines.append(record)
    return lines


def check_ended_once(client: OcrClient, receiver: CallbackReceiver, processes: list[Worker],
                     job: str, status: str, code: str | None = None) -> dict[str, Any]:
    """The job's result, and one callback of each kind and one job line, all agreeing."""
    result = client.wait([job], timeout=60)[job]
    assert result["status"] == status, result
    if code is not None:
        assert result["error"]["code"] == code, result
    tasks = callback_messages(client, job)
    assert len(tasks) == 1 and tasks[0]["status"] == status, tasks
    bodies = http_bodies(client, receiver, job)
    assert len(bodies) == 1 and bodies[0]["status"] == status, bodies
    if code is not None:
        assert tasks[0]["error"]["code"] == code and bodies[0]["error"]["code"] == code
    lines = eventually(lambda: job_lines(processes, job), 10, f"the ocr.job line of {job}",
                       interval=0.2)
    assert len(lines) == 1 and lines[0]["outcome"] == status, lines
    store = client.app.backend.client
    assert not store.keys(f"ocr:doc:{job}:*")
    return result


def submit(client: OcrClient, receiver: CallbackReceiver, data: bytes, **options: Any) -> str:
    return client.submit(data, callback_task="billing.ocr_done",
                         callback_queue=CALLBACK_QUEUE, callback_url=receiver.url("/done"),
                         **options)


def test_success(processes: list[Worker], client: OcrClient, receiver: CallbackReceiver) -> None:
    job = submit(client, receiver, png(220), filename="ok.png")
    result = check_ended_once(client, receiver, processes, job, "SUCCESS")
    assert result["text"].startswith("fake 64x48")


def test_failure(processes: list[Worker], client: OcrClient, receiver: CallbackReceiver) -> None:
    job = submit(client, receiver, b"not an image at all", filename="bad.bin")
    check_ended_once(client, receiver, processes, job, "FAILURE", "unsupported_format")


def test_partial(processes: list[Worker], client: OcrClient, receiver: CallbackReceiver) -> None:
    job = submit(client, receiver, image_pdf(plain_pages(3, dark=[2])),
                 engine="flaky-on-dark")
    result = check_ended_once(client, receiver, processes, job, "PARTIAL")
    assert [p["number"] for p in result["failed_pages"]] == [2]


def test_unexpected_exception(processes: list[Worker], client: OcrClient,
                              receiver: CallbackReceiver) -> None:
    job = submit(client, receiver, png(10), engine="raising-on-dark")
    result = check_ended_once(client, receiver, processes, job, "FAILURE", "internal_error")
    assert "ValueError" in result["error"]["message"]
    assert "a bug in the fake engine" not in result["error"]["message"]


def test_poison_job(processes: list[Worker], client: OcrClient, receiver: CallbackReceiver) -> None:
    job = submit(client, receiver, png(10), engine="killer")
    check_ended_once(client, receiver, processes, job, "FAILURE", "worker_lost")


def test_hard_time_limit(processes: list[Worker], client: OcrClient,
                         receiver: CallbackReceiver) -> None:
    job = submit(client, receiver, png(10), engine="stuck-on-dark")
    check_ended_once(client, receiver, processes, job, "FAILURE", "timeout")


def test_deadline_before_start(processes: list[Worker], client: OcrClient,
                               receiver: CallbackReceiver) -> None:
    blockers = [client.submit(png(11), engine="stuck-on-dark") for _ in range(2)]
    # Both pool children busy first (the blockers' queue is not the job's: a worker may
    # take the job first), so the job cannot start before its deadline.
    eventually(lambda: all(client.status(b).state == "STARTED" for b in blockers), 30,
               "both blockers running")
    job = submit(client, receiver, png(230), deadline=0.5)
    check_ended_once(client, receiver, processes, job, "FAILURE", "deadline_exceeded")
    client.wait(blockers, timeout=60)


def test_cancel_running_document(processes: list[Worker], client: OcrClient,
                                 receiver: CallbackReceiver) -> None:
    job = submit(client, receiver, image_pdf(plain_pages(6, dark=[6])),
                 engine="stuck-on-dark")

    def three_done() -> bool:
        status = client.status(job)
        assert not status.final, status
        return status.done >= 3

    eventually(three_done, 60, "three pages of six done")
    assert client.cancel([job]) == {job: "cancelled"}
    result = check_ended_once(client, receiver, processes, job, "CANCELLED")
    assert 3 <= len(result["pages"]) <= 5 and 6 not in [p["number"] for p in
                                                        result["pages"]]


def test_cancel_that_kills_a_child_ending_its_job(slow_ending: Callable[..., Worker],
                                                  processes: list[Worker],
                                                  client: OcrClient,
                                                  receiver: CallbackReceiver) -> None:
    """The chaos soak's defect: a cancel's SIGKILL lands while the child ends the job.

    The child met the cancel marker as the job started and took the end claim; the kill
    came before the rest of its ending (the `slow-ending` fake stalls it there). The
    worker parent that killed it takes the claim over and ends the job, once.
    """
    stalling = slow_ending(OCR_QUEUES="ocr-slowend", OCR_CONCURRENCY="1")
    store = client.app.backend.client
    job = str(uuid.uuid4())
    JobControl(store, 3600).cancel(job)  # the cancel's marker, before the job starts
    blob = client._blobs.put(png(233))
    client.app.send_task("ocr.document", task_id=job, queue="ocr-slowend", kwargs={
        "blob": blob, "filename": "killed.png",
        "callback_task": "billing.ocr_done", "callback_queue": CALLBACK_QUEUE,
        "callback_url": receiver.url("/done")})

    def holder() -> str | None:
        value = store.get(f"ocr:job:{job}:ended")
        return value.decode() if value and b":" in value else None

    child = eventually(holder, 60, "the child's end claim")
    client.app.control.revoke(job, terminate=True, signal="SIGKILL")  # the cancel's stop
    check_ended_once(client, receiver, [*processes, stalling], job, "CANCELLED")
    assert store.get(f"ocr:job:{job}:ended") == b"done"
    pid = int(child.rsplit(":", 1)[1])
    # Logged once its ending is finished: the job's line and notice come before it.
    eventually(lambda: f"ended by the worker parent, its child {pid} killed"
               in stalling.log(), 10, "the worker parent's line")
    assert not store.exists(blob), "the input was not freed"


def test_cancel_queued_job_while_the_pool_is_busy(processes: list[Worker],
                                                  client: OcrClient,
                                                  receiver: CallbackReceiver) -> None:
    blockers = [client.submit(png(12), engine="stuck-on-dark") for _ in range(2)]
    eventually(lambda: all(client.status(b).state == "STARTED" for b in blockers), 30,
               "both blockers running")
    job = submit(client, receiver, png(231), filename="queued.png")
    # Both pool children are busy: the control worker takes the cancel at once.
    assert client.cancel([job], wait=5) == {job: "cancelled"}
    assert client.status(job).state == "CANCELLED"  # never Celery's REVOKED
    check_ended_once(client, receiver, processes, job, "CANCELLED")
    assert all(r["error"]["code"] == "timeout"
               for r in client.wait(blockers, timeout=60).values())


def test_cancel_of_an_ended_job_changes_nothing(processes: list[Worker],
                                                client: OcrClient,
                                                receiver: CallbackReceiver) -> None:
    job = submit(client, receiver, png(232))
    check_ended_once(client, receiver, processes, job, "SUCCESS")
    assert client.cancel([job]) == {job: "success"}
    assert client.result(job)["status"] == "SUCCESS"
    # The cancel's task has returned: a callback it sent would be queued by now.
    assert callback_messages(client, job) == []


@pytest.mark.parametrize(("data", "status", "code"), [
    (png(234), "SUCCESS", None), (b"not an image at all", "FAILURE", "unsupported_format")])
def test_an_ending_abandoned_by_a_killed_host_is_finished_on_redelivery(
        slow_ending: Callable[..., Worker], processes: list[Worker], client: OcrClient,
        receiver: CallbackReceiver, data: bytes, status: str, code: str | None) -> None:
    """The long soak's defect: a worker host SIGKILLed right after a job's result was stored.

    The child took the end claim and stored its ending (a success, or a failure); its
    parent and children died before the callbacks, the `ocr.job` line and the input's
    release. The job's message comes
    back after the visibility timeout to a worker of the same host: it finds the claim
    naming a process that is gone and finishes the ending from the stored result, once.
    """
    env = {"OCR_QUEUES": "ocr-abandoned", "OCR_CONCURRENCY": "1",
           "OCR_PAGE_SOFT_TIME_LIMIT": "4", "OCR_PAGE_HARD_TIME_LIMIT": "5",
           "OCR_VISIBILITY_TIMEOUT": "7"}
    doomed = slow_ending(**env, FAKE_ENDING_STALL="stored")
    store = client.app.backend.client
    job = str(uuid.uuid4())
    blob = client._blobs.put(data)
    client.app.send_task("ocr.document", task_id=job, queue="ocr-abandoned", kwargs={
        "blob": blob, "filename": "abandoned.png",
        "callback_task": "billing.ocr_done", "callback_queue": CALLBACK_QUEUE,
        "callback_url": receiver.url("/done")})
    eventually(lambda: client.app.AsyncResult(job).state == status, 60, "the stored result")
    holder = store.get(job_ended_key(job))
    assert holder and b":" in holder, holder  # claimed, the ending not done
    doomed.kill()  # the whole host: parent and children
    survivor = slow_ending(**env)  # the same host, another worker
    check_ended_once(client, receiver, [*processes, doomed, survivor], job, status, code)
    eventually(lambda: f"ending finished here, its ender {holder.decode()} gone"
               in survivor.log(), 10, "the survivor's line")
    assert not store.exists(blob), "the input was not freed"


@pytest.mark.parametrize("stall", ["claimed", "stored"])
def test_a_merge_abandoned_by_a_killed_host_is_ended_by_its_redelivered_page(
        slow_ending: Callable[..., Worker], processes: list[Worker], client: OcrClient,
        receiver: CallbackReceiver, stall: str) -> None:
    """The chaos soak's defect: a host killed while its last page's task merged a PDF.

    The task that recorded the last page of a fanned-out PDF took the end claim to
    merge; the whole worker died before the result was stored (`claimed`) or right
    after (`stored`). That page task comes back to a worker of the same host: it finds
    the claim naming a process that is gone, takes it over and ends the document, once.
    """
    queue = f"ocr-abandoned-merge-{stall}"
    env = {"OCR_QUEUES": queue, "OCR_CONCURRENCY": "1", "OCR_VISIBILITY_TIMEOUT": "7",
           "OCR_PAGE_SOFT_TIME_LIMIT": "4", "OCR_PAGE_HARD_TIME_LIMIT": "5"}
    doomed = slow_ending(**env, FAKE_ENDING_STALL=stall)
    store = client.app.backend.client
    job = str(uuid.uuid4())
    blob = client._blobs.put(image_pdf(plain_pages(2)))
    client.app.send_task("ocr.document", task_id=job, queue=queue, kwargs={
        "blob": blob, "filename": "merged.pdf",
        "callback_task": "billing.ocr_done", "callback_queue": CALLBACK_QUEUE,
        "callback_url": receiver.url("/done")})

    def merging() -> bytes | None:
        holder = store.get(job_ended_key(job))
        stored = client.app.AsyncResult(job).state == "SUCCESS"
        return holder if holder and b":" in holder and stored == (stall == "stored") \
            else None

    holder = eventually(merging, 60, f"the merge's claim ({stall})")
    doomed.kill()  # the whole host: parent and children
    survivor = slow_ending(**env)  # the same host, another worker
    result = check_ended_once(client, receiver, [*processes, doomed, survivor], job,
                              "SUCCESS")
    assert [p["number"] for p in result["pages"]] == [1, 2]
    eventually(lambda: f"its ender {holder.decode()} died with its worker; its claim taken "
               "over here" in survivor.log(), 10, "the survivor's line")
    assert not store.exists(blob), "the input was not freed"
