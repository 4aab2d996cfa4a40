"""The HTTP API against hostile clients: each abuse, and what it gets.

Through the Procfile's `api` process, a real worker (fake engine) and a real Redis:
readiness that a flood of unknown queue names cannot stall, quotas on what a client
may park in Redis, per-client cache keys, the outbound address policy, output PDFs
without active content, and the smaller ones (deep JSON, disconnects, callbacks,
query-string credentials).
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pymupdf
import pytest
import redis
import requests

from devkit.receivers import CallbackReceiver
from tasks.api._readiness import ReadinessCheck
from tasks.inference_server import ServerWatch
from tasks.lifecycle.outbound import is_public
from tasks.settings import Settings
from tasks.state.liveness import PRESENCE_TTL, WorkerPresence
from tests.api.test_api import WORKER_ENV, png, send
from tests.api_server import ApiServer, create_token, session, wait_end
from tests.harness import ROOT, RedisServer, Worker, eventually

BODY_TIMEOUT = "15"  # the idle service's: a stalled upload ends in a test's time


@pytest.fixture(scope="module")
def receiver() -> Iterator[CallbackReceiver]:
    receiving = CallbackReceiver(answer=410)
    yield receiving
    receiving.stop()


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., Worker], receiver: CallbackReceiver) -> Worker:
    # The result cache on (per-client keys); the receiver's host listed for callbacks,
    # which the control worker sends.
    env = {**WORKER_ENV, "OCR_CACHE_RESULTS": "1",
           "OCR_CALLBACK_ALLOWED_HOSTS": f"127.0.0.1:{receiver.port}"}
    start_worker("control", **env)
    return start_worker(**env)


@pytest.fixture(scope="module")
def api(start_api: Callable[..., ApiServer], worker: Worker,
        receiver: CallbackReceiver) -> ApiServer:
    return start_api(LOG_LEVEL="info", OCR_CALLBACK_ALLOWED_HOSTS=f"127.0.0.1:{receiver.port}")


@pytest.fixture(scope="module")
def store(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


@pytest.fixture(scope="module")
def carol(api: ApiServer, redis_url: str) -> requests.Session:
    return session(create_token(redis_url, "carol"))


def _ready(api: ApiServer, queue: str) -> tuple[int, dict[str, object]]:
    answer = requests.get(f"{api.url}/readyz", params={"queue": queue}, timeout=60)
    return answer.status_code, answer.json()


# --- 1. readiness ------------------------------------------------------------------------

def test_presence_names_the_worker_and_its_queues(worker: Worker, store: redis.Redis) -> None:
    """Workers publish their queues; a record past its time is no longer live."""
    live = WorkerPresence(store).live_queues()
    node = next(n for n in live if worker.name in n)
    assert {"ocr", "ocr-fake", "ocr-control"} <= live[node]
    later = time.time() + PRESENCE_TTL * 3  # no heartbeat can refresh it by then
    assert node not in WorkerPresence(store).live_queues(now=later)


def test_readyz_answers_while_redis_is_paused(api: ApiServer, redis_server: RedisServer,
                                             worker: Worker) -> None:
    """Unauthenticated readiness never waits on the network.

    With every Redis command held (its redis-server stopped by SIGSTOP until the test's
    SIGCONT), 60 concurrent /readyz for unknown queues and one for `ocr` are all
    answered while it stays held (before: each one pinged Redis, and each unknown queue
    took a lock for a 0.5 s broadcast). An answer that waited for Redis would never
    come: its request times out instead.
    """
    # First a snapshot with the worker in it: the API answers /healthz before its refresh
    # thread has looked, and a loaded machine may delay that look.
    before: list[tuple[int, dict[str, object]]] = []

    def ready_before() -> bool:
        before.append(_ready(api, "ocr"))
        return before[-1][0] == 200

    eventually(ready_before, 30, lambda: f"readiness of `ocr` before the pause: {before[-1:]}")
    assert redis_server.proc is not None
    queues = ["ocr", *(f"flood-{uuid.uuid4().hex}" for _ in range(60))]
    redis_server.proc.send_signal(signal.SIGSTOP)
    try:
        with concurrent.futures.ThreadPoolExecutor(len(queues)) as pool:
            answers = list(pool.map(lambda q: _ready(api, q), queues))
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)
    status, body = answers[0]
    assert status == 200 and body["ready"] is True and body["workers"] == []
    assert all(s == 503 and b["worker_count"] == 0 for s, b in answers[1:])


def test_readyz_flood_leaves_authenticated_requests_served(
        api: ApiServer, carol: requests.Session) -> None:
    """A flood of /readyz for random queues leaves a client's requests served.

    50 connections flood /readyz with random queue names (at most 20,000 requests, and
    never past 120 s); once it is under way, carol reads her job 50 times while it goes
    on: every one of her requests is answered 200, every flood request 503.
    """
    job_id = send(carol, api, png())
    stop = threading.Event()
    flood: list[int | str] = []
    give_up = time.monotonic() + 120

    def flooder() -> None:
        with requests.Session() as http:
            while not stop.is_set() and len(flood) < 20000 and time.monotonic() < give_up:
                try:
                    flood.append(http.get(f"{api.url}/readyz", timeout=60,
                                          params={"queue": uuid.uuid4().hex}).status_code)
                except requests.RequestException as exc:  # in the answers asserted below
                    flood.append(type(exc).__name__)
                    return

    threads = [threading.Thread(target=flooder) for _ in range(50)]
    for thread in threads:
        thread.start()
    mine = []
    try:
        # the flood is under way before carol's first request
        eventually(lambda: len(flood) >= 50, 120, "50 flood requests answered",
                   interval=0.01)
        for _ in range(50):
            mine.append(carol.get(f"{api.url}/v1/jobs/{job_id}", timeout=60).status_code)
        flooding = any(t.is_alive() for t in threads)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert flooding, "the flood ended before carol's requests did: nothing was tested"
    assert mine == [200] * 50
    assert len(flood) >= 50 and set(flood) == {503}


class _StuckPresence(WorkerPresence):
    """Presence records behind a network that stops answering once `stuck` is set."""

    def __init__(self, client: redis.Redis) -> None:
        super().__init__(client)
        self.stuck = threading.Event()
        self.release = threading.Event()
        self.reads = 0

    def live_queues(self, now: float | None = None) -> dict[str, set[str]]:
        self.reads += 1
        if self.stuck.is_set():
            self.release.wait(60)
        return super().live_queues(now)


def test_readiness_state_is_bounded_and_needs_no_lock(store: redis.Redis,
                                                      worker: Worker) -> None:
    """Readiness keeps nothing per queue name and answers without a lock.

    5,000 distinct queue names: no Redis read among them, nothing kept per name; an
    answer comes while a refresh is stuck on the network.
    """
    presence = _StuckPresence(store)
    check = ReadinessCheck(presence, store, ServerWatch(Settings.from_env({})),
                           interval=3600)
    check.start()
    eventually(lambda: check.refreshes, 30, "the refresh thread's first look", interval=0.01)
    assert check("ocr").ready
    served = check.snapshot_queues
    reads = presence.reads
    answers = [check(f"q-{i}") for i in range(5000)]
    assert not any(a.ready for a in answers)
    assert presence.reads == reads and check.snapshot_queues == served
    presence.stuck.set()
    refresher = threading.Thread(target=check.refresh)
    refresher.start()
    try:
        eventually(lambda: presence.reads != reads, 30, "the refresh inside its network wait",
                   interval=0.01)
        assert check("ocr", detailed=True).workers  # answered meanwhile
        assert refresher.is_alive()
    finally:
        presence.release.set()
        refresher.join()
        check.stop()


# --- 2. quotas ---------------------------------------------------------------------------

QUOTA = 3 * 2**20


@pytest.fixture
def idle_service(tmp_path: Path) -> Iterator[tuple[ApiServer, redis.Redis, str]]:
    """An API on a Redis of its own that no worker reads: every job stays waiting."""
    own = RedisServer(tmp_path)
    own.start()
    server = ApiServer(tmp_path / "api.log", {"REDIS_URL": own.url(),
                                              "OCR_API_BODY_TIMEOUT": BODY_TIMEOUT})
    try:
        server.start()
        yield server, redis.Redis.from_url(own.url()), own.url()
    finally:
        server.stop()
        own.stop()


def _stored_input_bytes(store: redis.Redis) -> int:
    keys = [*store.scan_iter(match="ocr:blob:*"), *store.scan_iter(match="ocr:api:upload:*")]
    return sum(int(store.strlen(k)) for k in keys)


def test_bytes_quota_holds_while_workers_are_stopped(
        idle_service: tuple[ApiServer, redis.Redis, str]) -> None:
    """A client fills its bytes quota while no worker reads: Redis stays within it.

    10 uploads of 1 MB against a 3 MiB quota: 3 are taken, 7 answered 429
    quota_exceeded with Retry-After, and Redis holds no more than the quota.
    """
    api, store, url = idle_service
    client = session(create_token(url, "parker", "--max-bytes", str(QUOTA)))
    answers = [client.post(f"{api.url}/v1/jobs", timeout=60,
                           files={"file": (f"{i}.png", png() + bytes(10**6 - len(png())))})
               for i in range(10)]
    assert [a.status_code for a in answers] == [202] * 3 + [429] * 7, \
        [a.text for a in answers]
    for refused in answers[3:]:
        assert refused.json()["error"]["code"] == "quota_exceeded"
        assert int(refused.headers["retry-after"]) > 0
    assert 3 * 10**6 <= _stored_input_bytes(store) <= QUOTA
    # What Redis holds for its keys (MEMORY USAGE: values rounded up to the allocator's
    # size classes, plus each key's overhead) is the inputs and the jobs' small records,
    # within the quota plus 64 KiB: not 10 MB. (INFO's used_memory_dataset also moves
    # with transient buffers, freed pages and the allocator's bins: no bound for a test.)
    held = sum(int(store.memory_usage(key) or 0) for key in store.scan_iter(match="*"))
    assert held <= QUOTA + 2**16, held
    # An operator gives the client more room: the next upload is taken.
    done = subprocess.run([sys.executable, "submit.py", "tokens", "set", "parker",
                           "--max-bytes", str(2 * QUOTA)], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "REDIS_URL": url})
    assert done.returncode == 0, done.stderr
    assert client.post(f"{api.url}/v1/jobs", files={"file": ("more.png", png())},
                       timeout=60).status_code == 202


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"  # an upload's first bytes: the door sniffs its format


def _stalled_upload(api: ApiServer, token: str, sent: int, declared: int) -> socket.socket:
    """A multipart upload that sends `sent` bytes of its file, then nothing."""
    boundary = "stall"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"slow.png\"\r\nContent-Type: image/png\r\n\r\n").encode()
    sock = socket.create_connection(("127.0.0.1", api.port), timeout=60)
    sock.sendall((f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                  f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                  f"Content-Length: {declared}\r\n\r\n").encode() + head
                 + PNG_SIGNATURE + bytes(sent - len(PNG_SIGNATURE)))
    return sock


def test_stalled_upload_counts_then_times_out(
        idle_service: tuple[ApiServer, redis.Redis, str]) -> None:
    """An upload whose body stops coming counts against the quota, then times out.

    Its bytes count until the body timeout, which answers 408 body_timeout and frees
    them.
    """
    api, store, url = idle_service
    token = create_token(url, "staller", "--max-bytes", str(QUOTA))
    client = session(token)
    sock = _stalled_upload(api, token, sent=2**20 + 200_000, declared=2 * 2**20 + 5000)
    try:
        eventually(lambda: _stored_input_bytes(store) >= 2**20, 60,
                   "the stalled upload's first MiB in Redis (flushed as it came)",
                   interval=0.05)
        # 2.2 MB would fit in the 3 MiB quota, were the stalled 1 MiB not counted.
        over = client.post(f"{api.url}/v1/jobs", timeout=60,
                           files={"file": ("big.png", png() + bytes(2_200_000))})
        assert over.status_code == 429 and over.json()["error"]["code"] == "quota_exceeded"
        reply = b""  # the API ends the stalled request itself: read its whole answer
        while b"body_timeout" not in reply and (piece := sock.recv(4096)):
            reply += piece
        assert reply.startswith(b"HTTP/1.1 408 ") and b"body_timeout" in reply, reply
    finally:
        sock.close()
    assert _stored_input_bytes(store) == 0
    assert client.post(f"{api.url}/v1/jobs", files={"file": ("big.png", png())},
                       timeout=60).status_code == 202


# --- 3. cache isolation --------------------------------------------------------------------

def test_cache_never_tells_one_client_what_another_sent(
        api: ApiServer, redis_url: str, carol: requests.Session) -> None:
    dave = session(create_token(redis_url, "dave"))
    data = png(shade=123, size=(170, 90))
    first = wait_end(carol, api, send(carol, api, data))
    other = wait_end(dave, api, send(dave, api, data))
    again = wait_end(carol, api, send(carol, api, data))

    def cached(job: dict[str, Any], http: requests.Session) -> bool:
        body = http.get(f"{api.url}/v1/jobs/{job['id']}/result", params={"format": "json"},
                        timeout=30).json()
        return bool(body.get("cached"))

    assert first["status"] == other["status"] == again["status"] == "SUCCESS"
    assert not cached(first, carol)
    assert not cached(other, dave)  # before: true, proof that carol sent these bytes
    assert cached(again, carol)     # a client's own repeat still hits


# --- 5. output PDFs -------------------------------------------------------------------------

def hostile_pdf() -> bytes:
    """A one-page PDF with the issue's payloads.

    OpenAction JavaScript, a JavaScript name tree, a page /AA Launch action, a Launch
    link, an embedded and an attached file.
    """
    doc = pymupdf.open()
    page = doc.new_page(width=300, height=200)
    page.insert_text((20, 100), "Invoice 2024", fontsize=24)
    doc.embfile_add("evil.exe", b"MZ-embedded-payload")
    catalog = doc.pdf_catalog()
    doc.xref_set_key(catalog, "OpenAction", "<< /S /JavaScript /JS (app.alert\\(1\\)) >>")
    doc.xref_set_key(catalog, "Names/JavaScript",
                     "<< /Names [(a) << /S /JavaScript /JS (app.alert\\(2\\)) >>] >>")
    doc.xref_set_key(page.xref, "AA", "<< /O << /S /Launch /F (calc.exe) >> >>")
    page.insert_link({"kind": pymupdf.LINK_LAUNCH, "from": pymupdf.Rect(10, 10, 60, 30),
                      "file": "evil.exe"})
    page.add_file_annot((100, 20), b"MZ-attached-payload", "x.exe")
    return bytes(doc.tobytes())


def test_searchable_pdf_carries_no_active_content(api: ApiServer,
                                                  carol: requests.Session) -> None:
    source = hostile_pdf()
    assert b"/JavaScript" in source and b"/Launch" in source
    job = wait_end(carol, api, send(carol, api, source, "evil.pdf", output="pdf",
                                    engine="tesseract"))
    assert job["status"] == "SUCCESS", job["error"]
    pdf = carol.get(f"{api.url}/v1/jobs/{job['id']}/result", params={"format": "pdf"},
                    timeout=30).content
    for marker in (b"/JS", b"/Launch", b"MZ-", b"/EmbeddedFile", b"/FileAttachment"):
        assert marker not in pdf, marker
    with pymupdf.open(stream=pdf) as doc:
        catalog = doc.pdf_catalog()
        assert doc.xref_get_key(catalog, "OpenAction")[0] == "null"
        assert doc.xref_get_key(catalog, "Names/JavaScript")[0] == "null"
        assert doc.xref_get_key(doc[0].xref, "AA")[0] == "null"
        assert doc.embfile_count() == 0 and not list(doc[0].annots())
        assert not doc[0].get_links()
        assert "Invoice 2024" in doc[0].get_text()
    result = carol.get(f"{api.url}/v1/jobs/{job['id']}/result", params={"format": "json"},
                       timeout=30).json()
    assert result["pdf"]["removed"] == {"embedded_files": 1, "file_attachments": 1,
                                        "javascript": 1, "open_action": 1,
                                        "additional_actions": 1, "launch": 1}


# --- 6. the smaller ones ----------------------------------------------------------------------

def test_deeply_nested_json_is_a_coded_400(api: ApiServer, carol: requests.Session) -> None:
    deep = "[" * 5000 + "]" * 5000
    answer = carol.post(f"{api.url}/v1/jobs", data=deep, timeout=30,
                        headers={"Content-Type": "application/json"})
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "bad_request"
    big = carol.post(f"{api.url}/v1/jobs", data=b'{"path": "' + b"a" * 70_000 + b'"}',
                     timeout=30, headers={"Content-Type": "application/json"})
    assert big.status_code == 400 and big.json()["error"]["code"] == "bad_request"
    assert "RecursionError" not in api.log()


def test_file_names_lose_their_control_and_bidi_characters(
        api: ApiServer, carol: requests.Session) -> None:
    """A right-to-left override shows `invoice\u202efdp.exe` as `invoiceexe.pdf`."""
    spoofed = send(carol, api, png(90), name="invoice\u202efdp.exe")
    named = send(carol, api, png(91), filename="a\x00b\u2066c\x1b.png")
    for job_id, shown in ((spoofed, "invoicefdp.exe"), (named, "abc.png")):
        assert wait_end(carol, api, job_id)["filename"] == shown
        listed = carol.get(f"{api.url}/v1/jobs", timeout=30).json()["jobs"]
        assert [j["filename"] for j in listed if j["id"] == job_id] == [shown]


def test_client_disconnect_mid_upload_is_one_log_line(api: ApiServer, redis_url: str,
                                                      store: redis.Redis) -> None:
    token = create_token(redis_url, "quitter")
    before = api.log().count("disconnected during POST /v1/jobs")
    sock = _stalled_upload(api, token, sent=1_200_000, declared=3_000_000)
    eventually(lambda: list(store.scan_iter(match="ocr:api:upload:*")), 60,
               "the upload's record in Redis", interval=0.05)
    sock.close()
    eventually(lambda: api.log().count("disconnected during POST /v1/jobs") > before, 60,
               "the disconnect's log line", interval=0.05)
    assert not list(store.scan_iter(match="ocr:api:upload:*"))  # what came is deleted
    assert "Traceback" not in api.log()


def test_query_string_credentials_are_redacted_from_the_access_log(api: ApiServer) -> None:
    secret = f"ocr_{uuid.uuid4().hex}"
    answer = requests.get(f"{api.url}/v1/jobs/x", params={"access_token": secret,
                                                          "format": "pdf"}, timeout=30)
    assert answer.status_code == 401
    eventually(lambda: "access_token=REDACTED&format=pdf" in api.log(), 30,
               "the redacted access-log line", interval=0.05)
    assert secret not in api.log()


def _delivery(api: ApiServer, http: requests.Session, job_id: str) -> dict[str, Any]:
    """The result's `callback` record, once the callback task has tried."""
    def recorded() -> dict[str, Any] | None:  # the callback task runs after the job's end
        result = http.get(f"{api.url}/v1/jobs/{job_id}/result", params={"format": "json"},
                          timeout=30).json()
        return dict(result["callback"]) if "callback" in result else None

    return eventually(recorded, 60, f"a callback record on {job_id}")


def test_callback_rejected_by_its_receiver_is_recorded(
        api: ApiServer, carol: requests.Session, receiver: CallbackReceiver) -> None:
    job_id = send(carol, api, png(), callback_url=f"http://127.0.0.1:{receiver.port}/hook")
    wait_end(carol, api, job_id)
    assert _delivery(api, carol, job_id) == {"status": "rejected", "code": "callback_rejected",
                                             "attempts": 1, "http_status": 410}


def test_callback_refused_at_send_is_recorded(tmp_path: Path) -> None:
    """A callback the address policy refuses when sent shows in the result.

    A name passes at submit, but resolves to a loopback address when the callback is
    sent (no allow-list): the result's `callback` says refused, callback_not_allowed.
    """
    name = socket.gethostname()
    if is_public(socket.getaddrinfo(name, 80)[0][4][0]):
        pytest.skip(f"{name} resolves to a public address here")
    own = RedisServer(tmp_path)
    own.start()
    worker = Worker(tmp_path / "worker.log", {"REDIS_URL": own.url(), **WORKER_ENV})
    control = Worker(tmp_path / "control.log", {"REDIS_URL": own.url(), **WORKER_ENV},
                     "control")  # the callback outbox's sender
    server = ApiServer(tmp_path / "api.log", {"REDIS_URL": own.url()})
    try:
        worker.start()
        control.start()
        server.start()
        http = session(create_token(own.url(), "hooked"))
        job_id = send(http, server, png(), callback_url=f"http://{name}:9/hook")
        wait_end(http, server, job_id)
        assert _delivery(server, http, job_id) == {
            "status": "refused", "code": "callback_not_allowed", "attempts": 1}
    finally:
        server.stop()
        worker.stop()
        control.stop()
        own.stop()


