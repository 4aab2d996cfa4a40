"""Documents by URL and results written to a bucket, with real parts only.

- S3: moto's server mode (`moto_server`), an S3 *emulator* that speaks the real S3 HTTP
  protocol, started by these tests on free ports. The workers reach it through the
  standard AWS environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...), as they would
  reach MinIO or AWS; the tests put and read objects with boto3 against it. No client
  call is mocked.
- https: a real HTTPS server (http.server in a thread of this process) with a
  self-signed certificate generated here (cryptography) and trusted by the workers
  through SSL_CERT_FILE, which OpenSSL's default verify paths (hence
  `ssl.create_default_context()`) honour.
- A real redis-server and real workers started from the Procfile (tests/harness.py),
  reading pages with the fake engine (queue mechanics; its text describes the image).
"""

from __future__ import annotations

import datetime
import io
import ipaddress
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
from PIL import Image

from tasks.client import OcrClient
from tasks.errors import TransientError
from tasks.lifecycle import _s3, url_inputs
from tasks.lifecycle.fetcher import Fetcher
from tasks.settings import Settings
from tests.api_server import ApiServer, create_token, session
from tests.harness import (
    FAKE_PLUGINS,
    ROOT,
    Worker,
    corpus,
    eventually,
    free_port,
    kill_all,
    make_client,
)
from tests.moto_s3 import AWS, MotoS3

LIMIT_MB = 4  # OCR_MAX_INPUT_MB of the workers here
FANOUT_PDF = "lang_mixed_2p.pdf"  # 2 pages, 1.9 MB


def png(width: int, height: int, shade: int = 255) -> bytes:
    out = io.BytesIO()
    Image.new("L", (width, height), shade).save(out, "PNG")
    return out.getvalue()


DOC_PNG = png(320, 200)


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, and its key (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ocr-test-server")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class FileServer:
    """A real HTTPS server with a few routes; it records every request it gets."""

    def __init__(self, directory: Path) -> None:
        self.cert, key = self_signed(directory)
        self.requests: list[tuple[str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                self.answer(body=False)

            def do_GET(self) -> None:
                self.answer(body=True)

            def answer(self, body: bool) -> None:
                server.requests.append((self.command, self.path))
                if self.path in ("/inside/doc.png", "/inside/private.png", "/outside/doc.png"):
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.send_header("Content-Length", str(len(DOC_PNG)))
                    self.send_header("ETag", '"doc-v1"')
                    self.end_headers()
                    if body:
                        self.wfile.write(DOC_PNG)
                elif self.path == "/inside/redirect-out":
                    self.send_response(302)
                    self.send_header("Location", "/outside/doc.png")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif self.path == "/inside/forbidden.png":
                    self.send_response(403)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif self.path == "/inside/stream-big":
                    # No length anywhere: only counting the bytes read can refuse it.
                    self.send_response(200)
                    self.send_header("Content-Type", "application/octet-stream")
                    self.end_headers()
                    if body:
                        piece = b"\0" * 65536
                        try:
                            for _ in range(LIMIT_MB * 32):  # twice the limit
                                self.wfile.write(piece)
                        except (BrokenPipeError, ConnectionResetError):
                            return  # the reader stopped, as it should
                else:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, key)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"https://{host}:{self.port}{path}"

    def paths(self) -> list[str]:
        return [path for _, path in self.requests]


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    server = MotoS3(tmp_path_factory.mktemp("moto") / "moto.log").start()
    store = server.client()
    for bucket in ("docs", "results", "secret"):
        store.create_bucket(Bucket=bucket)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def https(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FileServer]:
    server = FileServer(tmp_path_factory.mktemp("https"))
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


def worker_env(s3: MotoS3, https: FileServer, spool: Path) -> dict[str, str]:
    # `s3://nobucket/` is allowed but does not exist (a write that fails); the https
    # prefixes: one by the address itself, one by a name (localhost) that resolves to
    # a loopback address and is therefore refused.
    allowed = ["s3://docs/", "s3://results/", "s3://nobucket/",
               https.url("/inside/"), https.url("/inside/", host="localhost")]
    return {"OCR_ENGINE": "fake", "OCR_ENGINE_PLUGINS": FAKE_PLUGINS,
            "OCR_ALLOWED_URLS": ",".join(allowed), "OCR_MAX_INPUT_MB": str(LIMIT_MB),
            "OCR_URL_SPOOL_DIR": str(spool), "OCR_URL_TIMEOUT": "10",
            "SSL_CERT_FILE": str(https.cert), **s3.env()}


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., Worker], s3: MotoS3, https: FileServer,
           tmp_path_factory: pytest.TempPathFactory) -> Worker:
    env = worker_env(s3, https, tmp_path_factory.mktemp("spool"))
    return start_worker(**env, OCR_CONCURRENCY="2")


@pytest.fixture(scope="module")
def client(redis_url: str) -> Iterator[OcrClient]:
    ocr = make_client(redis_url)
    yield ocr
    ocr.close()


def run(client: OcrClient, source: str, timeout: float = 120, **options: Any) -> dict[str, Any]:
    job_id = client.submit(source, **options)
    result = client.wait([job_id], timeout=timeout)[job_id]
    assert result["status"] != "TIMEOUT", result
    return result


def s3_requests(s3: MotoS3, method: str, path: str) -> int:
    """How many `method path` requests moto's own request log shows.

    Errors included: moto colours their lines.
    """
    log = re.sub(r"\x1b\[[0-9;]*m", "", s3.log())
    return len(re.findall(rf'"{method} {re.escape(path)}(\?[^ ]*)? HTTP', log))


# --- reading by URL -------------------------------------------------------------------

def test_s3_input_is_read_by_the_worker(worker: Worker, client: OcrClient,
                                        s3: MotoS3) -> None:
    s3.client().put_object(Bucket="docs", Key="a.png", Body=DOC_PNG)
    result = run(client, "s3://docs/a.png")
    assert result["status"] == "SUCCESS", result
    assert result["text"].startswith("fake 320x200")
    assert result["filename"] == "a.png"
    assert result["input_url"]["url"] == "s3://docs/a.png"
    assert result["input_url"]["size"] == len(DOC_PNG)
    assert "input_blob" not in result
    # The bytes went from the store to the worker: nothing was uploaded to Redis.
    assert not client._redis.keys("ocr:blob:*")


def test_https_input_is_read_through_the_allowlist(worker: Worker, client: OcrClient,
                                                   https: FileServer) -> None:
    result = run(client, https.url("/inside/doc.png"))
    assert result["status"] == "SUCCESS", result
    assert result["text"].startswith("fake 320x200")
    assert ("GET", "/inside/doc.png") in https.requests


def test_object_over_the_limit_is_refused_by_its_head(worker: Worker, client: OcrClient,
                                                      s3: MotoS3) -> None:
    s3.client().put_object(Bucket="docs", Key="big.bin", Body=b"\0" * (LIMIT_MB * 2**20 + 1))
    result = run(client, "s3://docs/big.bin")
    assert result["status"] == "FAILURE"
    assert result["error"]["code"] == "input_too_large"
    assert s3_requests(s3, "HEAD", "/docs/big.bin") >= 1
    assert s3_requests(s3, "GET", "/docs/big.bin") == 0  # never read


def test_object_without_a_length_is_refused_while_streaming(
        worker: Worker, client: OcrClient, https: FileServer) -> None:
    result = run(client, https.url("/inside/stream-big"))
    assert result["status"] == "FAILURE"
    assert result["error"]["code"] == "input_too_large"
    assert "counted while reading" in result["error"]["message"]


@pytest.mark.parametrize(("url", "code"), [
    ("s3://secret/x.png", "url_not_allowed"),
    ("s3://docs/missing.png", "input_not_found"),
    ("https-inside:/inside/forbidden.png", "input_denied"),
    ("https-inside:/inside/missing.png", "input_not_found"),
])
def test_refusals_have_their_own_codes_and_are_not_retried(
        worker: Worker, client: OcrClient, s3: MotoS3, https: FileServer,
        url: str, code: str) -> None:
    if url.startswith("https-inside:"):
        url = https.url(url.split(":", 1)[1])
    result = run(client, url)
    assert result["status"] == "FAILURE"
    assert result["error"] == {**result["error"], "code": code, "retryable": False}
    assert not re.search(rf"ocr.document\[{result['id']}\] retry", worker.log())
    if code == "url_not_allowed":
        assert s3_requests(s3, "HEAD", "/secret/x.png") == 0  # nothing was asked


def test_redirect_out_of_the_allowlist_is_not_followed(worker: Worker, client: OcrClient,
                                                       https: FileServer) -> None:
    result = run(client, https.url("/inside/redirect-out"))
    assert result["status"] == "FAILURE"
    assert result["error"]["code"] == "url_not_allowed"
    assert "/inside/redirect-out" in https.paths()
    assert "/outside/doc.png" not in https.paths()


def test_a_name_that_resolves_to_a_loopback_address_is_refused(
        worker: Worker, client: OcrClient, https: FileServer) -> None:
    # `https://localhost:PORT/inside/` is allowed as a prefix, but localhost resolves
    # to a loopback address that no prefix names itself: no connection is made.
    result = run(client, https.url("/inside/private.png", host="localhost"))
    assert result["status"] == "FAILURE"
    assert result["error"]["code"] == "address_not_allowed"
    assert "/inside/private.png" not in https.paths()


class Forwarder:
    """A TCP port that forwards to another once `start` is called (refused before)."""

    def __init__(self, target: int) -> None:
        self.port = free_port()
        self.target = target
        self.listener: socket.socket | None = None

    def start(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        assert self.listener is not None
        while True:
            try:
                inbound, _ = self.listener.accept()
            except OSError:
                return  # closed
            outbound = socket.create_connection(("127.0.0.1", self.target))
            for a, b in ((inbound, outbound), (outbound, inbound)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while piece := source.recv(65536):
                sink.sendall(piece)
        except OSError:
            pass  # the other side closed
        finally:
            sink.close()

    def stop(self) -> None:
        if self.listener is not None:
            self.listener.close()


def test_store_briefly_unreachable_is_retried_and_nothing_is_lost(
        start_worker: Callable[..., Worker], client: OcrClient, s3: MotoS3,
        https: FileServer, tmp_path: Path) -> None:
    # This worker reaches the store through a port that refuses connections at first:
    # its first reads are `transient` and retried; then the port opens onto the store.
    s3.client().put_object(Bucket="docs", Key="later.png", Body=png(200, 100))
    port = Forwarder(s3.port)
    env = {**worker_env(s3, https, tmp_path / "spool"),
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port.port}"}
    down = start_worker(**env, OCR_CONCURRENCY="1", OCR_QUEUES="ocr-down")
    job_id = client.app.send_task("ocr.document", kwargs={"url": "s3://docs/later.png"},
                                  queue="ocr-down").id
    eventually(lambda: re.search(rf"ocr.document\[{job_id}\] retry", down.log()), 60,
               lambda: f"the job's retry:\n{down.log()[-3000:]}", interval=0.2)
    port.start()
    try:
        result = client.wait([job_id], timeout=120)[job_id]
    finally:
        kill_all([down])  # before its store goes: it must not take later tests' page tasks
        port.stop()
    assert result["status"] == "SUCCESS", result
    assert result["text"].startswith("fake 200x100")


def test_store_that_denies_the_read_is_input_denied(
        start_worker: Callable[..., Worker], client: OcrClient, https: FileServer,
        tmp_path: Path) -> None:
    strict = MotoS3(tmp_path / "moto-strict.log", enforce_auth=True).start()
    denied: Worker | None = None
    try:
        env = worker_env(strict, https, tmp_path / "spool")
        denied = start_worker(**env, OCR_CONCURRENCY="1", OCR_QUEUES="ocr-strict")
        job_id = client.app.send_task("ocr.document", kwargs={"url": "s3://docs/a.png"},
                                      queue="ocr-strict").id
        result = client.wait([job_id], timeout=120)[job_id]
    finally:
        if denied is not None:
            kill_all([denied])  # it serves page queues too: not beyond this test
        strict.stop()
    assert result["status"] == "FAILURE"
    assert result["error"]["code"] == "input_denied"
    assert result["error"]["retryable"] is False
    # Credentials stay in the worker's environment: never in a result or a log line.
    for secret in (AWS["AWS_SECRET_ACCESS_KEY"], AWS["AWS_ACCESS_KEY_ID"]):
        assert secret not in json.dumps(result)
        assert secret not in denied.log()


# --- results to a bucket ----------------------------------------------------------------

def test_result_is_written_to_the_bucket(worker: Worker, client: OcrClient,
                                         s3: MotoS3) -> None:
    s3.client().put_object(Bucket="docs", Key="b.png", Body=png(300, 120))
    result = run(client, "s3://docs/b.png", result_url="s3://results/ocr/", output="json")
    assert result["status"] == "SUCCESS", result
    written = result["result_object"]
    assert written["url"] == f"s3://results/ocr/{result['id']}.json"
    stored = s3.client().get_object(Bucket="results", Key=f"ocr/{result['id']}.json")
    body = json.loads(stored["Body"].read())
    assert body["text"] == result["text"]
    assert stored["ContentType"] == "application/json"
    assert written["bytes"] == stored["ContentLength"]


def test_failed_write_is_coded_and_the_result_is_kept(worker: Worker, client: OcrClient,
                                                      s3: MotoS3) -> None:
    s3.client().put_object(Bucket="docs", Key="c.png", Body=png(240, 90))
    result = run(client, "s3://docs/c.png", result_url="s3://nobucket/out/")
    assert result["status"] == "SUCCESS", result
    assert result["result_object"]["error"]["code"] == "result_write_failed"
    assert result["text"].startswith("fake 240x90")  # the result store has it
    assert client.result(result["id"])["text"] == result["text"]


# --- cache by object identity -----------------------------------------------------------

def test_cache_is_keyed_on_the_etag(worker: Worker, client: OcrClient, s3: MotoS3) -> None:
    store = s3.client()
    store.put_object(Bucket="docs", Key="cached.png", Body=png(210, 70))
    first = run(client, "s3://docs/cached.png")
    second = run(client, "s3://docs/cached.png")
    assert first["status"] == second["status"] == "SUCCESS"
    assert not first.get("cached") and second["cached"] is True
    assert second["text"] == first["text"]
    gets = s3_requests(s3, "GET", "/docs/cached.png")
    assert gets == 1  # the hit was found from the HEAD: the object was not read again
    store.put_object(Bucket="docs", Key="cached.png", Body=png(230, 80))  # new ETag
    third = run(client, "s3://docs/cached.png")
    assert not third.get("cached")
    assert third["text"].startswith("fake 230x80")
    assert third["input_url"]["etag"] != first["input_url"]["etag"]
    assert s3_requests(s3, "GET", "/docs/cached.png") == gets + 1


def test_a_job_pinned_to_an_etag_reads_its_object_with_one_get(
        worker: Worker, client: OcrClient, s3: MotoS3) -> None:
    # A batch's documents are sent pinned to the ETag the bucket's listing gave.
    store = s3.client()
    body = png(250, 90)
    etag = store.put_object(Bucket="docs", Key="pinned.png", Body=body)["ETag"]
    result = run(client, "s3://docs/pinned.png", url_etag=etag, no_cache=True)
    assert result["status"] == "SUCCESS", result
    assert result["text"].startswith("fake 250x90")
    assert s3_requests(s3, "HEAD", "/docs/pinned.png") == 0
    assert s3_requests(s3, "GET", "/docs/pinned.png") == 1
    assert result["input_url"] == {**result["input_url"], "etag": etag, "size": len(body)}
    store.put_object(Bucket="docs", Key="pinned.png", Body=png(260, 95))  # a new ETag
    stale = run(client, "s3://docs/pinned.png", url_etag=etag, no_cache=True)
    assert stale["status"] == "FAILURE", stale
    assert stale["error"] == {**stale["error"], "code": "input_not_found", "retryable": False}
    assert not re.search(rf"ocr.document\[{stale['id']}\] retry", worker.log())
    assert s3_requests(s3, "GET", "/docs/pinned.png") == 2  # once, never read as it is now


def test_a_cached_answer_to_a_job_pinned_to_an_etag_checks_the_object_is_still_that_one(
        worker: Worker, client: OcrClient, s3: MotoS3) -> None:
    store = s3.client()
    etag = store.put_object(Bucket="docs", Key="pinned-cached.png", Body=png(270, 60))["ETag"]
    first = run(client, "s3://docs/pinned-cached.png", url_etag=etag)
    second = run(client, "s3://docs/pinned-cached.png", url_etag=etag)
    assert first["status"] == second["status"] == "SUCCESS", (first, second)
    assert second["cached"] is True
    # the hit read nothing: one HEAD said the object still has that ETag
    assert s3_requests(s3, "GET", "/docs/pinned-cached.png") == 1
    assert s3_requests(s3, "HEAD", "/docs/pinned-cached.png") == 1
    store.put_object(Bucket="docs", Key="pinned-cached.png", Body=png(280, 65))
    stale = run(client, "s3://docs/pinned-cached.png", url_etag=etag)
    assert stale["status"] == "FAILURE", stale
    assert stale["error"]["code"] == "input_not_found"


# --- fan-out by URL -------------------------------------------------------------------

def test_pdf_fans_out_by_url_without_passing_through_redis(
        worker: Worker, client: OcrClient, s3: MotoS3, redis_url: str) -> None:
    data = corpus(FANOUT_PDF).read_bytes()
    s3.client().put_object(Bucket="docs", Key="mixed.pdf", Body=data)
    server = redis.Redis.from_url(redis_url)
    before = int(server.info("stats")["total_net_input_bytes"])
    result = run(client, "s3://docs/mixed.pdf", mode="ocr")
    received = int(server.info("stats")["total_net_input_bytes"]) - before
    assert result["status"] == "SUCCESS", result
    assert [p["source"] for p in result["pages"]] == ["ocr", "ocr"]
    assert all(p["text"].startswith("fake ") for p in result["pages"])
    assert result["input_url"]["url"] == "s3://docs/mixed.pdf"
    assert "pids" in result["engine"]  # merged from page tasks: it fanned out
    # Redis received the messages, page records and events, never the 1.9 MB input.
    print(f"redis received {received} bytes for a {len(data)}-byte PDF")
    assert received < len(data) // 4, received
    # The host's copy is gone once the document is merged.
    assert not list(Path(worker.env["OCR_URL_SPOOL_DIR"]).glob("*.pdf"))


def test_submit_py_takes_an_s3_url(worker: Worker, redis_url: str, s3: MotoS3) -> None:
    s3.client().put_object(Bucket="docs", Key="cli.png", Body=png(260, 60))
    done = subprocess.run(
        [sys.executable, "submit.py", "--json", "--result-url", "s3://results/cli/",
         "s3://docs/cli.png"], cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "REDIS_URL": redis_url, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["filename"] == "cli.png"
    assert result["text"].startswith("fake 260x60")
    assert result["result_object"]["url"].startswith("s3://results/cli/")


# --- the HTTP API and the Node client -------------------------------------------------

@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, redis_url: str, worker: Worker,
        s3: MotoS3, https: FileServer) -> Iterator[ApiServer]:
    allowed = worker.env["OCR_ALLOWED_URLS"]
    server = ApiServer(tmp_path_factory.mktemp("api") / "api.log", {
        "REDIS_URL": redis_url, "OCR_ALLOWED_URLS": allowed}).start()
    yield server
    server.stop()


def test_api_takes_a_url_and_a_result_url(api: ApiServer, redis_url: str,
                                          client: OcrClient, s3: MotoS3) -> None:
    s3.client().put_object(Bucket="docs", Key="api.png", Body=png(280, 100))
    # A client writes results only under prefixes of its own.
    http = session(create_token(redis_url, "billing", "--allowed-url", "s3://docs/",
                                "--allowed-url", "s3://results/api/"))
    answer = http.post(f"{api.url}/v1/jobs", json={
        "url": "s3://docs/api.png", "result_url": "s3://results/api/", "output": "markdown"})
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]
    result = client.wait([job_id], timeout=120)[job_id]
    assert result["status"] == "SUCCESS", result
    assert result["result_object"]["url"] == f"s3://results/api/{job_id}.md"
    stored = s3.client().get_object(Bucket="results", Key=f"api/{job_id}.md")
    assert stored["Body"].read().decode() == result["text"]
    shown = http.get(f"{api.url}/v1/jobs/{job_id}/result", params={"format": "json"}).json()
    assert shown["result_object"]["url"] == result["result_object"]["url"]


def test_api_client_is_held_to_its_own_prefixes(api: ApiServer, redis_url: str) -> None:
    # As an operator makes it: `submit.py tokens create NAME --allowed-url PREFIX`.
    http = session(create_token(redis_url, "invoices-only", "--allowed-url",
                                "s3://docs/invoices/"))
    for body in ({"url": "s3://docs/other.png"},                      # OCR_ALLOWED_URLS: yes
                 {"url": "s3://secret/x.png"},                        # nobody's
                 {"url": "s3://docs/invoices/a.png", "result_url": "s3://results/x/"}):
        answer = http.post(f"{api.url}/v1/jobs", json=body)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["code"] == "url_not_allowed"
    # Nothing was sent for the refused requests; an allowed one is accepted.
    answer = http.post(f"{api.url}/v1/jobs", json={"url": "s3://docs/invoices/a.png"})
    assert answer.status_code == 202, answer.text


def test_node_client_sends_a_url(worker: Worker, redis_url: str, s3: MotoS3) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the Node.js client is not run")
    s3.client().put_object(Bucket="docs", Key="node.png", Body=png(250, 75))
    done = subprocess.run(
        [node, str(ROOT / "clients" / "node" / "ocr_client.js"), "--redis", redis_url,
         "--result-url", "s3://results/node/", "s3://docs/node.png"],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["filename"] == "node.png"
    assert result["text"].startswith("fake 250x75")
    key = result["result_object"]["url"].removeprefix("s3://results/")
    assert s3.client().get_object(Bucket="results", Key=key)["Body"].read().decode() == \
        result["text"]


def test_another_hosts_page_tasks_fetch_one_copy_of_the_same_version(
        s3: MotoS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a page task on a host without the document task's copy does.

    In this process: the reads are the adapter's real calls against the emulator.
    """
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    _s3.reset_clients()
    data = corpus(FANOUT_PDF).read_bytes()
    s3.client().put_object(Bucket="docs", Key="other-host.pdf", Body=data)
    settings = Settings.from_env({"OCR_ALLOWED_URLS": "s3://docs/",
                                  "OCR_URL_SPOOL_DIR": str(tmp_path / "host-b")})
    located = Fetcher.for_client(settings, None).locate("s3://docs/other-host.pdf")
    gets = s3_requests(s3, "GET", "/docs/other-host.pdf")
    for _ in range(3):  # three page tasks on host B: one read, then its local copy
        assert url_inputs.spooled(settings, "s3://docs/other-host.pdf", located.info) == data
    assert s3_requests(s3, "GET", "/docs/other-host.pdf") == gets + 1
    assert len(list((tmp_path / "host-b").glob("*.pdf"))) == 1
    # The object replaced meanwhile: a host without a copy does not read the new version
    # into the old job's pages (If-Match fails: transient, the page is retried).
    s3.client().put_object(Bucket="docs", Key="other-host.pdf", Body=data + b"\n%changed")
    host_c = Settings.from_env({"OCR_ALLOWED_URLS": "s3://docs/",
                                "OCR_URL_SPOOL_DIR": str(tmp_path / "host-c")})
    with pytest.raises(TransientError):
        url_inputs.spooled(host_c, "s3://docs/other-host.pdf", located.info)
    url_inputs.drop_spool(settings, "s3://docs/other-host.pdf", located.info)
    assert not list((tmp_path / "host-b").glob("*.pdf"))
    _s3.reset_clients()
