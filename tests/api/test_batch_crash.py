"""A batch survives every process killed halfway: API, workers and Redis (from its AOF).

Its own redis-server with an append-only file (fsynced at every write, as the
project's), moto's S3 server, a worker and the control worker, the API. Halfway through
a batch of small one-page images every one of them is SIGKILLed at once, as when the
host dies; then Redis starts again from its file, the workers and the API start again,
and the batch ends SUCCESS with every document's line and output, no document read
twice beyond the window (each job's record names its batch and survives in the AOF).
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.api.test_batches import OWN, SHORTER, WINDOW, fill, worker_env
from tests.api_server import ApiServer, create_token, session
from tests.harness import RedisServer, Worker, eventually, kill_all
from tests.moto_s3 import MotoS3


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[MotoS3]:
    server = MotoS3(tmp_path / "moto.log").start()
    for bucket in ("src", "out"):
        server.client().create_bucket(Bucket=bucket)
    yield server
    server.stop()


def fleet(tmp_path: Path, url: str, s3: MotoS3, round_: int) -> list[Any]:
    env = {"REDIS_URL": url, **worker_env(s3, tmp_path / "spool", **SHORTER)}
    ocr = Worker(tmp_path / f"worker-{round_}.log", env).start()
    control = Worker(tmp_path / f"control-{round_}.log", env, "control").start()
    api = ApiServer(tmp_path / f"api-{round_}.log", env).start()
    return [ocr, control, api]


def test_api_workers_and_redis_killed_halfway_resume_from_the_aof(
        aof_redis: RedisServer, s3: MotoS3, tmp_path: Path) -> None:
    url = aof_redis.url()
    processes = fleet(tmp_path, url, s3, 1)
    try:
        api = processes[2]
        http = session(create_token(url, "alice", *OWN))
        count = 24
        fill(s3, "crash/", count)
        answer = http.post(f"{api.url}/v1/batches", json={
            "source": "s3://src/crash/", "result_url": "s3://out/crash/"}, timeout=30)
        assert answer.status_code == 202, answer.text
        batch_id = answer.json()["id"]

        def shown() -> dict[str, Any]:
            return dict(http.get(f"{processes[2].url}/v1/batches/{batch_id}",
                                 timeout=30).json())

        eventually(lambda: shown()["documents"]["done"] >= 6, 60, "a few documents done")
        assert aof_redis.proc is not None
        aof_redis.proc.send_signal(signal.SIGKILL)  # the host dies: every process at once
        kill_all(processes)
        aof_redis.proc.wait(10)
        aof_redis.start()  # from its append-only file
        processes = fleet(tmp_path, url, s3, 2)
        done = eventually(lambda: (lambda b: b if b["state"] != "RUNNING" else None)(
            shown()), 180, lambda: f"the batch did not end: {shown()}", interval=0.5)
        assert done["state"] == "SUCCESS" and done["documents"]["done"] == count, done
        body = s3.client().get_object(Bucket="out", Key="crash/manifest.jsonl")["Body"]
        lines = [json.loads(line) for line in body.read().decode().splitlines()]
        assert len(lines) == count and {line["status"] for line in lines} == {"SUCCESS"}
        for i in range(count):
            text = s3.client().get_object(Bucket="out", Key=f"crash/doc-{i:03d}.png.txt")
            assert text["Body"].read().startswith(f"fake {40 + i}x{30 + i} ".encode())
        store = redis.Redis.from_url(url)
        sent = sum(1 for key in store.scan_iter("ocr:job:*")
                   if key.count(b":") == 2 and store.hget(key, "batch") == batch_id.encode())
        assert count <= sent <= count + WINDOW, sent
        print(f"{count} documents, {sent} jobs sent across the crash")
    finally:
        kill_all(processes)
