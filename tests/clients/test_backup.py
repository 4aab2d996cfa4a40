"""Backups that restore: `ocr_admin.py backup` and `restore` against real Redis servers.

Jobs are queued with no worker running (and two finished before), a token is made;
`ocr_admin.py backup` writes the snapshot to a file and to an `s3://` key (moto's S3
server); `restore` brings it into a new, empty redis-server; a worker started there
finishes every queued job with its text, the earlier results read back, and the token
still authenticates at the HTTP API, which takes a new job. Restoring into a Redis
that is not empty is refused; `--check` reports what a backup holds.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.records.redis_target import RedisTarget
from tasks.state.connection import connect
from tasks.state.snapshot import read_snapshot
from tests.api_server import ApiServer, create_token, session
from tests.harness import ROOT, RedisServer, Worker, fake_env, kill_all, make_client
from tests.image_fixtures import png
from tests.moto_s3 import MotoS3
from tests.pdf_fixtures import image_pdf, plain_pages

FAKE = {**fake_env(), "OCR_PDF_DPI": "72", "OCR_DESKEW": "0"}
BUCKET = "ocr-backups"


def admin(redis_url: str, *words: str, env: dict[str, str] | None = None
          ) -> subprocess.CompletedProcess[str]:
    """`ocr_admin.py --redis-url URL WORDS`, as an operator runs it."""
    return subprocess.run([sys.executable, "ocr_admin.py", "--redis-url", redis_url, *words],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {}), "PYTHONPATH": str(ROOT)})


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer]]:
    """The service's Redis (its append-only file, as the project runs it) and a fresh one."""
    old, new = RedisServer(tmp_path / "old", appendonly=True), RedisServer(tmp_path / "new")
    for server in (old, new):
        server.workdir.mkdir()
        server.start()
    yield old, new
    old.stop()
    new.stop()


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[MotoS3]:
    store = MotoS3(tmp_path / "moto.log").start()
    store.client().create_bucket(Bucket=BUCKET)
    yield store
    store.stop()


def expected(size: tuple[int, int], shade: int, pages: int) -> list[str]:
    return [f"fake {size[0]}x{size[1]} mean={shade:.1f}"] * pages


@pytest.mark.slow
def test_backup_and_restore_bring_the_service_back(servers: tuple[RedisServer, RedisServer],
                                                  s3: MotoS3, tmp_path: Path) -> None:
    old, new = servers
    workers: list[Worker] = []
    try:
        client = make_client(old.url())
        first = Worker(tmp_path / "first.log", {"REDIS_URL": old.url(), **FAKE}).start()
        workers.append(first)
        done = {client.submit(png(200, size=(80 + i, 60))): ((80 + i, 60), 200, 1)
                for i in range(2)}
        assert {r["status"] for r in client.wait(list(done), timeout=60).values()} \
            == {"SUCCESS"}
        kill_all(workers)  # from here on no worker runs: the jobs below stay queued
        queued = {client.submit(png(200, size=(100 + i, 70)), priority=p): ((100 + i, 70),
                                                                             200, 1)
                  for i, p in enumerate(("interactive", "normal", "batch", "normal"))}
        for i in range(2):
            size = (150 + i, 110)
            job = client.submit(image_pdf(plain_pages(3, size=size), dpi=72), mode="ocr")
            queued[job] = (size, 235, 3)
        client.close()
        token = create_token(old.url(), "restored-client")

        path = tmp_path / "ocr.rdb"
        saved = admin(old.url(), "backup", str(path), "--json")
        assert saved.returncode == 0, saved.stderr
        assert path.read_bytes()[:5] == b"REDIS" and json.loads(saved.stdout)["bytes"] > 0
        assert not Path(f"{path}.part").exists()
        key = f"s3://{BUCKET}/nightly/ocr.rdb"
        to_s3 = admin(old.url(), "backup", key, env=s3.env())
        assert to_s3.returncode == 0, to_s3.stderr
        stored = s3.client().get_object(Bucket=BUCKET, Key="nightly/ocr.rdb")["Body"].read()
        assert stored[:5] == b"REDIS"

        check = admin(new.url(), "restore", str(path), "--check", "--json")
        assert check.returncode == 0, check.stderr
        held = json.loads(check.stdout)["databases"]["0"]
        assert (held["tokens"], held["results"]) == (1, 2), held
        assert held["queued_messages"] == len(queued) and held["jobs"] == 8, held
        assert connect(RedisTarget(new.url())).dbsize() == 0  # --check wrote nothing

        restored = admin(new.url(), "restore", key, "--json", env=s3.env())
        assert restored.returncode == 0, restored.stderr
        report = json.loads(restored.stdout)
        assert report["restored"]["queued_messages"] == len(queued), report
        again = admin(new.url(), "restore", str(path))
        assert again.returncode == 1 and "not empty" in again.stderr, again.stderr

        revived = make_client(new.url())
        assert {j: r["status"] for j, r in revived.wait(list(done), timeout=10).items()} \
            == dict.fromkeys(done, "SUCCESS")
        workers.append(Worker(tmp_path / "after.log", {"REDIS_URL": new.url(), **FAKE}).start())
        results = revived.wait(list(queued), timeout=120)
        for job, (size, shade, pages) in queued.items():
            assert results[job]["status"] == "SUCCESS", results[job]
            assert [p["text"] for p in results[job]["pages"]] == expected(size, shade, pages)
        api = ApiServer(tmp_path / "api.log", {"REDIS_URL": new.url()}).start()
        try:
            http = session(token)
            answer = http.post(f"{api.url}/v1/jobs", files={
                "file": ("late.png", io.BytesIO(png(200, size=(90, 40))), "image/png")},
                timeout=30)
            assert answer.status_code == 202, answer.text
            late = answer.json()["id"]
            assert revived.wait([late], timeout=60)[late]["status"] == "SUCCESS"
            assert http.get(f"{api.url}/v1/jobs/{late}", timeout=30).status_code == 200
            assert session("ocr_not-a-token").get(f"{api.url}/v1/jobs/{late}",
                                                  timeout=30).status_code == 401
        finally:
            api.stop()
        revived.close()
    finally:
        kill_all(workers)


@pytest.mark.parametrize("diskless", ["yes", "no"])
def test_snapshot_either_way_redis_sends_it(tmp_path: Path, diskless: str) -> None:
    """Diskless (`$EOF:<mark>`) or from the server's disk (`$<length>`): one RDB file."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        live = connect(RedisTarget(server.url(3)))
        live.config_set("repl-diskless-sync", diskless)
        live.config_set("repl-diskless-sync-delay", "0")
        live.set("ocr:api:token:abc", "x")
        live.set("celery-task-meta-1", "y", ex=3600)
        live.rpush("ocr-fake", "m1", "m2")
        path = tmp_path / "snap.rdb"
        with open(path, "wb") as out:
            taken = read_snapshot(live, out)
        assert taken.diskless == (diskless == "yes") and taken.bytes == path.stat().st_size
        assert live.ping()  # the pool's other connections are untouched
        check = admin(server.url(5), "restore", str(path), "--check", "--json")
        held = json.loads(check.stdout)["databases"]["3"]
        assert (held["tokens"], held["results"], held["queued_messages"]) == (1, 1, 2), held
        restored = admin(server.url(5), "restore", str(path), "--from-db", "3", "--json")
        assert restored.returncode == 0, restored.stderr
        copy = connect(RedisTarget(server.url(5)))
        assert copy.lrange("ocr-fake", 0, -1) == [b"m1", b"m2"]
        assert 0 < copy.ttl("celery-task-meta-1") <= 3600 and copy.ttl("ocr:api:token:abc") == -1
    finally:
        server.stop()
