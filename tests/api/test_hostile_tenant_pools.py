"""A hostile tenant's slow origin against the shared pools: nobody else waits for it.

The Procfile's `worker` (a gated fake engine, one pool child) and `control` worker, the
HTTP API, a real Redis, moto's S3 server, and a loopback http origin that answers every
request with one header line every few seconds and never ends its headers: slower than
any timeout this test sets (OCR_URL_TIMEOUT's 30 s wait for the next bytes never runs
out). Clients:

- `a`: 4 batches (its default allows 4) whose manifests name documents on the origin;
- `b`: 2 such batches;
- `c`: one-page jobs of its own.

While the 6 batches HEAD their documents, c's job is read as soon as it is sent and
ends while every batch still runs, and c's cancel of its queued job ends it while its
other job still holds the pool child. Each client's batch steps hold at most
OCR_BATCH_THREADS_PER_CLIENT (1) of the control worker's threads: the origin never sees
more of a client's HEADs at once.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from tests.api.test_batches import info
from tests.api_server import ApiServer, create_token, session
from tests.harness import FAKE_PLUGINS, FAST_PAGES, Worker, eventually
from tests.image_fixtures import png
from tests.moto_s3 import MotoS3

DRIP = 3.0  # seconds between two header lines of the origin's answers
BATCHES = {"a": 4, "b": 2}
LINES = 20  # documents a manifest names


class SlowOrigin:
    """A loopback http origin that never finishes its headers; counts the open requests.

    Each request (HEAD or GET) gets a status line, then a header line every DRIP
    seconds until `stop()`. `open` and `peak` count the requests being answered at
    once by the first segment of their path (the client whose prefix it is).
    """

    def __init__(self) -> None:
        self.open: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.stopping = threading.Event()
        lock, counts, peaks, stopping = threading.Lock(), self.open, self.peak, self.stopping

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return

            def do_HEAD(self) -> None:  # noqa: N802 - http.server's name
                self.drip()

            def do_GET(self) -> None:  # noqa: N802
                self.drip()

            def drip(self) -> None:
                owner = self.path.strip("/").partition("/")[0]
                with lock:
                    counts[owner] = counts.get(owner, 0) + 1
                    peaks[owner] = max(peaks.get(owner, 0), counts[owner])
                try:
                    self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                    while not stopping.is_set():
                        self.wfile.write(b"X-Wait: still\r\n")
                        self.wfile.flush()
                        stopping.wait(DRIP)
                except OSError:
                    pass  # the reader hung up
                finally:
                    with lock:
                        counts[owner] -= 1
                    self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answering(self, owner: str) -> int:
        return self.open.get(owner, 0)

    def stop(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()  # later requests refused, not left in the backlog


@pytest.fixture(scope="module")
def origin() -> Iterator[SlowOrigin]:
    served = SlowOrigin()
    yield served
    served.stop()


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The gated engine's folder: open (pages pass) unless a test closes it."""
    folder = tmp_path_factory.mktemp("gate")
    (folder / "open").touch()
    yield folder
    (folder / "open").touch()


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    server = MotoS3(tmp_path_factory.mktemp("moto") / "moto.log").start()
    server.client().create_bucket(Bucket="slow")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api(start_worker: Callable[..., Worker], start_api: Callable[..., ApiServer],
        s3: MotoS3, origin: SlowOrigin, gate: Path) -> ApiServer:
    env = {"OCR_ALLOWED_URLS": f"s3://slow/,{origin.url}/", "OCR_BATCH_STEP_SECONDS": "0.2",
           **s3.env()}
    workers = {"OCR_ENGINE": "gated", "OCR_CONCURRENCY": "1", "OCR_CACHE_RESULTS": "0",
               "OCR_ENGINE_PLUGINS": f"{FAKE_PLUGINS},gated=tests.gated_engine:GatedEngine",
               "FAKE_GATE_DIR": str(gate), **FAST_PAGES, **env}
    start_worker(**workers)
    start_worker("control", **workers)
    return start_api(**env)


@pytest.fixture(scope="module")
def clients(api: ApiServer, redis_url: str, origin: SlowOrigin) -> dict[str, requests.Session]:
    made = {name: session(create_token(redis_url, name, "--allowed-url", f"s3://slow/{name}/",
                                       "--allowed-url", f"{origin.url}/{name}/"))
            for name in BATCHES}
    made["c"] = session(create_token(redis_url, "c"))
    return made


def slow_batch(http: requests.Session, api: ApiServer, s3: MotoS3, origin: SlowOrigin,
               client: str, n: int) -> str:
    """A batch of `client` whose manifest names LINES documents on the slow origin."""
    lines = [json.dumps({"url": f"{origin.url}/{client}/{n}/doc-{i}.png"})
             for i in range(LINES)]
    key = f"{client}/lists/m{n}.jsonl"
    s3.client().put_object(Bucket="slow", Key=key, Body="\n".join(lines).encode())
    answer = http.post(f"{api.url}/v1/batches", json={
        "source": f"s3://slow/{key}", "result_url": f"s3://slow/{client}/out{n}/"},
        timeout=30)
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


def send(http: requests.Session, api: ApiServer, shade: int) -> str:
    answer = http.post(f"{api.url}/v1/jobs", files={"file": ("page.png", png(shade))},
                       timeout=30)
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


def status(http: requests.Session, api: ApiServer, job_id: str) -> str:
    answer = http.get(f"{api.url}/v1/jobs/{job_id}", timeout=30)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["status"])


def test_four_batches_of_slow_urls_hold_no_other_clients_job_nor_its_cancel(
        api: ApiServer, clients: dict[str, requests.Session], s3: MotoS3,
        origin: SlowOrigin, gate: Path) -> None:
    batches = {(client, n): slow_batch(clients[client], api, s3, origin, client, n)
               for client, count in BATCHES.items() for n in range(count)}
    eventually(lambda: all(origin.answering(client) for client in BATCHES), 60,
               lambda: f"each client's batches to HEAD a document: {origin.open}")

    def still_running() -> None:
        states = {key: info(clients[key[0]], api, batch_id)["state"]
                  for key, batch_id in batches.items()}
        assert set(states.values()) == {"RUNNING"}, states
        assert all(origin.answering(client) for client in BATCHES), origin.open

    c = clients["c"]
    read = send(c, api, 150)  # the gate is open: read as soon as a child takes it
    eventually(lambda: status(c, api, read) not in ("QUEUED", "RUNNING"), 60,
               lambda: f"c's job to end while the batches HEAD: {status(c, api, read)}, "
                       f"the origin answering {origin.open}")
    assert status(c, api, read) == "SUCCESS"
    still_running()

    (gate / "open").unlink()  # c's next job holds the one pool child
    try:
        held = send(c, api, 160)
        eventually(lambda: status(c, api, held) == "RUNNING", 60, "c's held job to run")
        queued = send(c, api, 170)
        assert status(c, api, queued) == "QUEUED"
        answer = c.delete(f"{api.url}/v1/jobs/{queued}", timeout=30)
        assert answer.status_code == 202, answer.text
        eventually(lambda: status(c, api, queued) == "CANCELLED", 60,
                   lambda: f"c's cancel to end its queued job: {status(c, api, queued)}")
        assert status(c, api, held) == "RUNNING"  # the cancel did not wait for the child
        still_running()
    finally:
        (gate / "open").touch()
    eventually(lambda: status(c, api, held) == "SUCCESS", 60, "c's held job to end")
    # a client's batch steps held one of the control worker's threads at a time
    assert origin.peak == {client: 1 for client in BATCHES}, origin.peak

