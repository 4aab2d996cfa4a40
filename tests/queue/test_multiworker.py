"""Several workers against one Redis, as on several machines (docs/operations.md, Several machines).

Two workers with their own node names and queues share the `ocr` queue; one is
stopped mid-batch and every job still completes, once. A worker and clients reach a
Redis that speaks only TLS and wants a password.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tasks.client import OcrClient
from tests.harness import ROOT, Worker, eventually, fake_env, free_port, kill_all, make_client
from tests.image_fixtures import png

FAKE = fake_env(OCR_CONCURRENCY="1", FAKE_PAGE_SECONDS="0.3")


def finished_here(worker: Worker) -> dict[str, str]:
    """Job id to node name, from the worker's `ocr.job` log lines."""
    return {job: record["node"] for job, record in worker.job_records().items()}


def test_two_workers_share_jobs_and_lose_none_when_one_stops(
        start_worker: Callable[..., Worker], client: OcrClient) -> None:
    first = start_worker(**FAKE, WORKER_NAME="host-a", OCR_QUEUES="ocr,ocr-interactive")
    second = start_worker(**FAKE, WORKER_NAME="host-b", OCR_QUEUES="ocr,ocr-batch")

    def send(queue: str, shade: int) -> str:
        return str(client.app.send_task("ocr.document", queue=queue,
                                        kwargs={"blob": client._blobs.put(png(shade))}).id)

    # A queue of its own is served by its worker only.
    own = {"host-a": send("ocr-interactive", 1), "host-b": send("ocr-batch", 2)}
    assert all(r["status"] == "SUCCESS" for r in client.wait(own.values(), timeout=60).values())
    for name, worker in (("host-a", first), ("host-b", second)):
        assert worker.job_records([own[name]])[own[name]]["node"].startswith(f"{name}@")

    batch = [client.submit(png(10 + i)) for i in range(20)]
    eventually(lambda: len(set(batch) & set(finished_here(first))) >= 3, 60,
               "three jobs of the batch done on host-a", interval=0.05)
    first.stop()  # SIGTERM: warm shutdown mid-batch
    assert first.proc is not None and first.proc.returncode is not None

    results = client.wait(batch, timeout=90)
    assert [results[j]["status"] for j in batch] == ["SUCCESS"] * 20
    eventually(lambda: set(batch) <= set(finished_here(first)) | set(finished_here(second)),
               10, "an ocr.job line for every job of the batch")
    on_a, on_b = set(batch) & set(finished_here(first)), set(batch) & set(finished_here(second))
    assert len(on_a) >= 3 and len(on_b) >= 3, (len(on_a), len(on_b))
    assert on_a | on_b == set(batch) and not on_a & on_b  # each job ran once


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A Redis of its own that speaks only TLS and wants a password: (URL, CA file)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: no certificates for the TLS test")
    ca, key = tmp_path / "ca.crt", tmp_path / "ca.key"
    server_key, csr, cert = tmp_path / "s.key", tmp_path / "s.csr", tmp_path / "s.crt"
    (tmp_path / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    for args in (
            ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", ca,
             "-days", "1", "-subj", "/CN=ocr-test-ca"],
            ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", server_key, "-out", csr,
             "-subj", "/CN=127.0.0.1"],
            ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", key, "-CAcreateserial",
             "-out", cert, "-days", "1", "-extfile", tmp_path / "ext.cnf"]):
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(cert), "--tls-key-file", str(server_key),
         "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no", "--requirepass",
         "tls-s3cret", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = (f"rediss://:tls-s3cret@127.0.0.1:{port}/0?ssl_cert_reqs=required"
           f"&ssl_ca_certs={ca}")

    def answers() -> bool:
        if proc.poll() is not None:
            pytest.skip("this redis-server has no TLS support")
        try:
            return bool(redis.Redis.from_url(url).ping())
        except redis.ConnectionError:
            return False

    try:
        eventually(answers, 10, "the TLS redis-server to answer", interval=0.05)
        yield url, ca
    finally:
        proc.terminate()
        proc.wait(10)


def test_worker_and_clients_over_tls(tls_redis: tuple[str, Path],
                                     tmp_path_factory: pytest.TempPathFactory) -> None:
    """A worker on another host reaches Redis over TLS with a password (rediss://)."""
    url, ca = tls_redis
    worker = Worker(tmp_path_factory.mktemp("tls") / "worker.log",
                    {**FAKE, "REDIS_URL": url, "WORKER_NAME": "tls"}).start()
    client = make_client(url)
    try:
        job = client.submit(png(100))
        assert client.wait([job], timeout=60)[job]["status"] == "SUCCESS"
        node = shutil.which("node")
        if node is not None:
            image = tmp_path_factory.mktemp("tls-input") / "scan.png"
            image.write_bytes(png(120))
            done = subprocess.run([node, str(ROOT / "clients" / "node" / "ocr_client.js"),
                                   "--redis", url, str(image)], capture_output=True,
                                  text=True, timeout=60,
                                  env={**os.environ, "NODE_EXTRA_CA_CERTS": str(ca)})
            assert done.returncode == 0, done.stderr
            assert json.loads(done.stdout)["status"] == "SUCCESS"
            assert "Warning" not in done.stderr
    finally:
        client.close()
        kill_all([worker])  # nothing waits on its warm shutdown
