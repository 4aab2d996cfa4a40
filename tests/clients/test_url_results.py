"""Documents by URL at their edges, with moto's S3 and real workers.

moto's S3 emulator on a free port (tests/moto_s3.py), a real redis-server and workers
started from the Procfile.

- `result_url` with the document outputs: a tesseract worker (word boxes: the
  searchable PDF, hOCR and ALTO need them) reads a page by URL and writes its result to
  `s3://results/`; the object is read back with boto3: its content type, its bytes as
  the result record says, and a document of its kind that holds the page's words.
- `retry` of a URL job reads the version the job read and keeps `result_url`: a PARTIAL
  job (the flaky fake engine fails its dark page), the object overwritten, the engine
  healed, the retry: in a versioned bucket it reads the old version and writes the
  complete result over the partial one; in an unversioned bucket it is
  `input_not_found` (that version is gone), never a read of the new bytes.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path

import pymupdf
import pytest
from PIL import Image, ImageDraw, ImageFont

from tasks.client import OcrClient
from tests.harness import FAKE_PLUGINS, Worker, kill_all
from tests.moto_s3 import MotoS3
from tests.pdf_fixtures import image_pdf

ALLOWED = "s3://docs/,s3://results/,s3://versioned/"
CONTENT = {"pdf": ("application/pdf", b"%PDF"), "hocr": ("text/html", b"ocr_page"),
           "alto": ("application/xml", b"<alto")}


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    server = MotoS3(tmp_path_factory.mktemp("moto") / "moto.log").start()
    for bucket in ("docs", "results", "versioned"):
        server.client().create_bucket(Bucket=bucket)
    server.client().put_bucket_versioning(Bucket="versioned",
                                          VersioningConfiguration={"Status": "Enabled"})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., Worker], s3: MotoS3,
           tmp_path_factory: pytest.TempPathFactory) -> Worker:
    return start_worker(OCR_ENGINE="tesseract", OCR_CACHE_RESULTS="0",
                        OCR_ALLOWED_URLS=ALLOWED,
                        OCR_URL_SPOOL_DIR=str(tmp_path_factory.mktemp("spool")), **s3.env())


def words_png() -> bytes:
    image = Image.new("L", (900, 120), 255)
    ImageDraw.Draw(image).text((20, 30), "Harbour ledger quartz", fill=0,
                               font=ImageFont.load_default(size=44))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


@pytest.mark.parametrize("output", sorted(CONTENT))
def test_result_url_takes_the_document_outputs(output: str, worker: Worker,
                                               client: OcrClient, s3: MotoS3,
                                               tmp_path: Path) -> None:
    store = s3.client()
    store.put_object(Bucket="docs", Key="words.png", Body=words_png())
    job = client.submit("s3://docs/words.png", output=output, result_url="s3://results/out/")
    result = client.wait([job], timeout=180)[job]
    assert result["status"] == "SUCCESS", result
    written = result["result_object"]
    assert "error" not in written, written
    assert written["url"].startswith(f"s3://results/out/{job}")
    key = written["url"].removeprefix("s3://results/")
    stored = store.get_object(Bucket="results", Key=key)
    body = stored["Body"].read()
    media, marker = CONTENT[output]
    assert stored["ContentType"].startswith(media), stored["ContentType"]
    assert written["bytes"] == len(body) and marker in body[:4096]
    if output == "pdf":
        with pymupdf.open(stream=body, filetype="pdf") as doc:
            text = doc[0].get_text()
    else:
        text = body.decode()
    assert "Harbour" in text and "quartz" in text, text[:500]
    # The page's preview beside the result object: the image the engine read, as WebP.
    assert written["previews"] == f"s3://results/{key}.pages/", written
    preview = store.get_object(Bucket="results", Key=f"{key}.pages/1.webp")
    assert preview["ContentType"] == "image/webp"
    with Image.open(io.BytesIO(preview["Body"].read())) as image:
        assert image.format == "WEBP" and abs(image.width - 900) <= 20, image.size


def pages_pdf(*sizes: tuple[int, int]) -> bytes:
    """Light pages, then a dark one (which the flaky engine fails until healed)."""
    *light, dark = sizes
    return image_pdf([*(Image.new("L", size, 235) for size in light),
                      Image.new("L", dark, 20)])


def test_retry_of_a_url_job_reads_its_version_and_keeps_result_url(
        start_worker: Callable[..., Worker], worker: Worker, client: OcrClient, s3: MotoS3,
        tmp_path: Path) -> None:
    healed = tmp_path / "healed"
    flaky = start_worker(OCR_ENGINE="flaky-on-dark", OCR_ENGINE_PLUGINS=FAKE_PLUGINS,
                         OCR_QUEUES="ocr-flaky-on-dark", OCR_CACHE_RESULTS="0",
                         OCR_PDF_DPI="72", OCR_DESKEW="0", OCR_ALLOWED_URLS=ALLOWED,
                         FAKE_HEALED_FLAG=str(healed),
                         OCR_URL_SPOOL_DIR=str(tmp_path / "spool"), **s3.env())
    store = s3.client()
    try:
        earlier = {}
        for bucket in ("versioned", "docs"):
            store.put_object(Bucket=bucket, Key="doc.pdf", Body=pages_pdf((200, 260),
                                                                         (300, 400)))
            job = client.submit(f"s3://{bucket}/doc.pdf", engine="flaky-on-dark",
                                result_url=f"s3://results/{bucket}/")
            earlier[bucket] = client.wait([job], timeout=180)[job]
            assert earlier[bucket]["status"] == "PARTIAL", earlier[bucket]
            # Overwritten: the dark page now landscape, the other page larger.
            store.put_object(Bucket=bucket, Key="doc.pdf", Body=pages_pdf((260, 320),
                                                                         (400, 300)))
        healed.touch()
        retried = {}
        for bucket in ("versioned", "docs"):
            job = client.retry(earlier[bucket]["id"])
            retried[bucket] = client.wait([job], timeout=180)[job]
    finally:
        kill_all([flaky])  # nothing waits on its warm shutdown
    # Versioned: the version the job read, the complete result where the partial one was.
    again = retried["versioned"]
    assert again["status"] == "SUCCESS", again
    first, second = again["pages"]
    assert first["text"] == earlier["versioned"]["pages"][0]["text"]  # kept, merged
    width, height = (int(n) for n in second["text"].split()[1].split("x"))
    assert width < height, second["text"]  # the old, portrait dark page
    written = earlier["versioned"]["result_object"]["url"]
    assert again["result_object"]["url"] == written
    key = written.removeprefix("s3://results/")
    assert b"fake" in store.get_object(Bucket="results", Key=key)["Body"].read()
    # Unversioned: the ETag the job read is gone, and the retry says so.
    gone = retried["docs"]
    assert gone["status"] == "FAILURE" and gone["error"]["code"] == "input_not_found", gone


def test_https_object_without_etag_is_pinned_by_its_hash_across_hosts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An object whose server names no version: its bytes' hash pins it for other hosts.

    The job's host reads it and pins its sha256 (`LocatedObject.pinned`, as the fan-out
    does); another host (its own spool folder) reads the same bytes, or, once the
    object changed, gets `input_not_found`, never the new bytes.
    """
    import ssl
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from tasks.errors import InputNotFound
    from tasks.lifecycle import url_inputs
    from tasks.lifecycle.fetcher import Fetcher
    from tasks.settings import Settings
    from tests.clients.test_object_storage import self_signed

    cert, key = self_signed(tmp_path)
    served = {"body": b"%PDF-1.4 first version"}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            return

        def do_HEAD(self) -> None:  # noqa: N802 - http.server's name
            self.answer(False)

        def do_GET(self) -> None:  # noqa: N802
            self.answer(True)

        def answer(self, body: bool) -> None:
            self.send_response(200)  # no ETag, no Last-Modified: no version at all
            self.send_header("Content-Length", str(len(served["body"])))
            self.end_headers()
            if body:
                self.wfile.write(served["body"])

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    url = f"https://127.0.0.1:{httpd.server_address[1]}/inside/doc.pdf"
    try:
        def host(name: str) -> Settings:
            return Settings.from_env({"OCR_ALLOWED_URLS": url.rsplit("/", 1)[0] + "/",
                                      "OCR_URL_SPOOL_DIR": str(tmp_path / name)})

        first = host("first")
        fetcher = Fetcher.for_client(first, None)
        located = fetcher.locate(url)
        assert located.identity is None  # nothing from the server pins it
        pinned = located.pinned(fetcher.read(located))
        assert pinned.identity is not None and pinned.to_json()["sha256"]
        assert url_inputs.spooled(host("second"), url, pinned.info) == served["body"]
        served["body"] = b"%PDF-1.4 second version, another length"
        with pytest.raises(InputNotFound):
            url_inputs.spooled(host("third"), url, pinned.info)
    finally:
        httpd.shutdown()


@pytest.mark.parametrize("output", ["text", "pdf"])
def test_encrypted_url_input_is_decrypted_by_each_host_not_in_redis(
        worker: Worker, client: OcrClient, s3: MotoS3, redis_url: str, output: str) -> None:
    """No decrypted document in Redis for a URL job: the pages open the host's own copy.

    An encrypted PDF by URL, read page by page (mode=ocr fans it out): every command
    Redis receives while it runs is watched (MONITOR): none writes a blob, and no
    message body pushed (each base64 run decoded) holds the password. The page tasks
    read it from the job's sealed arguments and decrypt their host's copy of the
    object. With output=pdf the task that records the last page opens its host's copy
    with it to build the searchable PDF (which is the job's output, stored as any
    output is). The sealed arguments go with the job.
    """
    import base64
    import contextlib
    import re
    import threading

    import redis

    from tests.cer import cer
    from tests.harness import corpus, ground_truth

    name = "edge_encrypted_pw_openpassword.pdf"
    s3.client().put_object(Bucket="docs", Key="locked.pdf", Body=corpus(name).read_bytes())
    writes: list[str] = []
    carried: list[str] = []
    bodies = [0]
    watching = threading.Event()
    done = threading.Event()
    finished = threading.Event()  # the watcher read up to `done`: it saw every command
    store = redis.Redis.from_url(redis_url)

    def watch() -> None:
        with store.monitor() as monitor:
            watching.set()
            for command in monitor.listen():
                text = str(command.get("command", ""))
                if text.upper().startswith(("SET ", "APPEND ", "RENAME ")) and \
                        "ocr:blob:" in text:
                    writes.append(text[:120])
                for run in re.findall(r"[A-Za-z0-9+/]{20,}={0,2}", text):
                    with contextlib.suppress(ValueError):
                        body = base64.b64decode(run + "=" * (-len(run) % 4))
                        bodies[0] += body.startswith(b"[[")  # a task's args, kwargs
                        if b"openpassword" in body:
                            carried.append(text[:120])
                if done.is_set():
                    finished.set()
                    return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    assert watching.wait(10)
    job = client.submit("s3://docs/locked.pdf", mode="ocr", password="openpassword",
                        output=output)
    result = client.wait([job], timeout=180)[job]
    done.set()
    redis.Redis.from_url(redis_url).ping()  # one more command: the watcher sees `done`
    watcher.join(30)
    assert finished.is_set(), "the watcher stopped early (its error above)"
    assert result["status"] == "SUCCESS", result
    assert result["pages"][0]["source"] == "ocr"  # read by a page task, fanned out
    assert cer(ground_truth(name), result["text"]) < 0.1
    assert not writes, writes
    assert not carried and bodies[0] >= 2, carried  # no message carries the password
    assert not store.keys("ocr:sealed:*")  # freed with the job
    assert "openpassword" not in worker.log()
    if output == "pdf":
        import pymupdf

        with pymupdf.open(stream=client.fetch_output(result)) as searchable:
            assert not searchable.needs_pass  # built from the host's copy, opened
            assert "takimata sanctus" in searchable[0].get_text()
