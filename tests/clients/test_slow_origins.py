"""Origins that answer slowly or short, against a real worker's fetcher.

A loopback http origin (http.server in threads of this process) that sends its
headers one line every DRIP seconds, or its body one byte every DRIP seconds, or a
body shorter than its Content-Length; a real redis-server and a real worker from the
Procfile with the fake engine (its text describes the image). The worker's
OCR_URL_DEADLINE is a few seconds and its OCR_URL_TIMEOUT longer than DRIP: only the
deadline can end such a read. An s3:// body that trickles is read in this process,
through botocore, from the same origin posing as the store.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tasks.client import OcrClient
from tasks.errors import OcrError
from tasks.lifecycle import _s3
from tasks.lifecycle.fetcher import Fetcher
from tasks.settings import Settings
from tests.harness import Worker, fake_env, make_client
from tests.image_fixtures import png
from tests.moto_s3 import AWS

DRIP = 1.0  # seconds between two lines of headers, or two bytes of a body
DEADLINE = 3  # the worker's OCR_URL_DEADLINE
FULL = png(200, (320, 200))  # the object
SHORT = png(200, (100, 50))  # what a cut-short answer sends of it: a whole PNG itself
TRICKLE = b"x" * 20  # an s3:// object sent a byte a DRIP: 20 s, far past DEADLINE


class Origin:
    """The loopback origin; `asked` logs each (method, path) it was asked."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []
        origin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return

            def do_HEAD(self) -> None:
                self.answer(body=False)

            def do_GET(self) -> None:
                self.answer(body=True)

            def answer(self, body: bool) -> None:
                origin.asked.append((self.command, self.path))
                try:
                    self.route(body)
                except (BrokenPipeError, ConnectionResetError):
                    return  # the reader hung up: as it should, past its deadline

            def route(self, body: bool) -> None:
                name = self.path.rsplit("/", 1)[-1]
                if name == "slow-head.png":  # a header line a DRIP, never the end
                    self.send_response(200)
                    self.flush_headers()
                    for n in range(90):
                        time.sleep(DRIP)
                        self.wfile.write(f"X-Drip-{n}: 1\r\n".encode())
                        self.wfile.flush()
                    return
                data = TRICKLE if name == "trickle" else FULL
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("ETag", f'"{name}-v1"')
                self.end_headers()
                if not body:
                    return
                if name in ("slow-body.png", "trickle"):  # a byte a DRIP
                    for byte in data:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(DRIP)
                elif name == "short.png" and origin.gets(self.path) == 1:
                    self.wfile.write(SHORT)  # then the connection closes, short
                else:
                    self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def gets(self, path: str) -> int:
        return sum(1 for method, asked in self.asked if (method, asked) == ("GET", path))

    def methods(self, path: str) -> list[str]:
        return [method for method, asked in self.asked if asked == path]


@pytest.fixture(scope="module")
def origin() -> Iterator[Origin]:
    served = Origin()
    yield served
    served.server.shutdown()
    served.server.server_close()


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., Worker], origin: Origin) -> Worker:
    # One pool child: a slow origin that held it would hold every job after it.
    return start_worker(**fake_env(cache=True), OCR_CONCURRENCY="1",
                        OCR_ALLOWED_URLS=f"{origin.url}/", OCR_URL_TIMEOUT="10",
                        OCR_URL_DEADLINE=str(DEADLINE))


@pytest.fixture(scope="module")
def client(redis_url: str) -> Iterator[OcrClient]:
    ocr = make_client(redis_url)
    yield ocr
    ocr.close()


def ended(client: OcrClient, *urls: str) -> list[dict[str, Any]]:
    """The results of jobs sent for `urls`, in turn, each waited for at most 90 s."""
    ids = [client.submit(url) for url in urls]
    results = client.wait(ids, timeout=90)
    return [results[job_id] for job_id in ids]


def test_an_origin_sending_its_headers_slowly_ends_the_job_url_timeout(
        worker: Worker, client: OcrClient, origin: Origin) -> None:
    slow, after = ended(client, f"{origin.url}/a/slow-head.png", f"{origin.url}/a/doc.png")
    assert slow["status"] == "FAILURE", slow
    assert slow["error"]["code"] == "url_timeout" and not slow["error"]["retryable"]
    assert origin.methods("/a/slow-head.png") == ["HEAD"], origin.asked  # never retried
    # The job sent after it, behind it on the one pool child, was read.
    assert after["status"] == "SUCCESS", after
    assert after["text"].startswith("fake 320x200")


def test_an_origin_sending_its_body_slowly_ends_the_job_url_timeout(
        worker: Worker, client: OcrClient, origin: Origin) -> None:
    slow, after = ended(client, f"{origin.url}/b/slow-body.png", f"{origin.url}/b/doc.png")
    assert slow["status"] == "FAILURE", slow
    assert slow["error"]["code"] == "url_timeout"
    assert origin.methods("/b/slow-body.png") == ["HEAD", "GET"]
    assert after["status"] == "SUCCESS", after


def test_a_body_shorter_than_its_length_is_read_again_and_never_cached(
        worker: Worker, client: OcrClient, origin: Origin) -> None:
    url = f"{origin.url}/c/short.png"
    first, = ended(client, url)
    assert first["status"] == "SUCCESS", first
    # The short answer (a whole smaller PNG) was refused and the object read again.
    assert first["text"].startswith("fake 320x200"), first["text"]
    assert origin.gets("/c/short.png") == 2
    again, = ended(client, url)
    assert again["cached"] and again["text"] == first["text"]


def test_an_s3_body_that_trickles_ends_its_read_url_timeout(
        origin: Origin, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store's body cut at the deadline: botocore's read, in this process."""
    for name, value in {"AWS_ENDPOINT_URL": origin.url, **AWS}.items():
        monkeypatch.setenv(name, value)
    _s3.reset_clients()
    settings = Settings.from_env({"OCR_ALLOWED_URLS": "s3://slow/", "OCR_URL_TIMEOUT": "10",
                                  "OCR_URL_DEADLINE": str(DEADLINE)})
    fetcher = Fetcher.for_client(settings, None)
    try:
        located = fetcher.locate("s3://slow/trickle")
        assert located.info.size == len(TRICKLE)
        with pytest.raises(OcrError) as refused:
            fetcher.read(located)
        assert refused.value.code == "url_timeout"
    finally:
        _s3.reset_clients()
