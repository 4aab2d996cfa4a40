"""A 400 MB broker message and the worker parent's peak RSS, behind two Redis bounds.

A 400 MB message pushed straight onto the queue, read whole by redis-py, would cost the
worker parent a peak of 1,311 MB before the transport refused it by size.
`unbounded_redis`: a Redis without the project's bound (proto-max-bulk-len 512 MiB) stores
the message; the worker's fetch pops it and Redis sends only its ends and its length
(tasks/broker/oversized.py), the transport refuses it (dead letter, FAILURE) and the
parent's RSS is sampled every 20 ms. `project_redis`: the bound the project's Redis sets
(`Settings.redis_max_bulk_bytes`, scripts/run_redis.py): the push is refused by Redis,
and the parent is sampled for as long. Fake engine, default limits.

    .venv/bin/python -m bench.big_message
"""

from __future__ import annotations

import base64
import json
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psutil
import redis

from devkit.harness import FAKE_PLUGINS, RedisServer, Worker
from tasks.broker.layout import DEAD_LETTER_KEY
from tasks.settings import Settings

MESSAGE_MB = 400
ENV = {"OCR_ENGINE": "fake", "OCR_ENGINE_PLUGINS": FAKE_PLUGINS, "OCR_CONCURRENCY": "1"}


def message(task_id: str) -> bytes:
    payload = base64.b64encode(b"\0" * (MESSAGE_MB * 2**20 * 9 // 16)).decode()
    body = base64.b64encode(json.dumps([[], {"data_b64": payload}, {}]).encode()).decode()
    del payload
    return json.dumps({
        "body": body, "content-encoding": "utf-8", "content-type": "application/json",
        "headers": {"lang": "py", "task": "ocr.document", "id": task_id},
        "properties": {"correlation_id": task_id, "delivery_mode": 2, "body_encoding": "base64",
                       "delivery_info": {"exchange": "", "routing_key": "ocr"},
                       "delivery_tag": str(uuid.uuid4())}}).encode()


def run(bound: int, workdir: Path) -> dict[str, float | str]:
    server = RedisServer(workdir, max_bulk_bytes=bound)
    server.start()
    worker = Worker(workdir / "worker.log", {"REDIS_URL": server.url(0), **ENV})
    peak, stop = [0], threading.Event()
    try:
        worker.start()
        assert worker.proc is not None
        parent = psutil.Process(worker.proc.pid)
        idle = parent.memory_info().rss

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], parent.memory_info().rss)
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        raw = message(str(uuid.uuid4()))
        size = len(raw)
        try:
            redis.Redis.from_url(server.url(0), socket_timeout=60).lpush("ocr", raw)
            pushed = "stored"
        except redis.RedisError as exc:
            pushed = f"refused by Redis ({type(exc).__name__})"
        del raw
        # the fetch that takes the 400 MB message holds Redis for seconds
        store = redis.Redis.from_url(server.url(0), socket_timeout=60)
        deadline = time.monotonic() + 120
        while pushed == "stored" and not store.llen(DEAD_LETTER_KEY) \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(3)  # sample on after the refusal
        stop.set()
        sampler.join()
        return {"message_mb": round(size / 2**20, 1), "push": pushed,
                "dead_letters": store.llen(DEAD_LETTER_KEY),
                "parent_idle_mb": round(idle / 2**20, 1),
                "parent_peak_mb": round(peak[0] / 2**20, 1),
                "parent_after_mb": round(parent.memory_info().rss / 2**20, 1)}
    finally:
        stop.set()
        worker.stop()
        server.stop()


def main() -> int:
    bound = Settings.from_env({}).redis_max_bulk_bytes
    with tempfile.TemporaryDirectory() as tmp:
        for name, limit in (("unbounded_redis", 512 * 2**20), ("project_redis", bound)):
            workdir = Path(tmp) / name
            workdir.mkdir()
            print(json.dumps({"run": name, "proto_max_bulk_len": limit, **run(limit, workdir)}),
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
