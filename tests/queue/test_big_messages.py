"""Messages over the input limit never reach a worker, through real processes.

The project's Redis (scripts/run_redis.py, and the tests' own RedisServer) refuses a
command argument longer than `Settings.redis_max_bulk_bytes` (proto-max-bulk-len): a
message too large for OCR_MAX_INPUT_MB is refused when it is pushed, so no worker pops
it and reads it whole. The client's and the API's own refusals before sending are in
test_queue.py (`input_too_large` from the CLI) and test_api.py (413), the transport's
refusal by raw size before decoding in test_hardening.py. Behind any Redis, bounded or
not, the scripts that pop a message for a worker send one longer than it would decode
as its ends and its length alone (`tasks/broker/oversized.py`): the worker parent's
peak memory does not move. Limits are lowered to 1 MB here so the messages stay small.
The project's Redis, full, refuses writes and evicts nothing (noeviction).
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis

from tasks.broker import fetch_script, oversized
from tasks.broker.layout import DEAD_LETTER_KEY, list_held_key
from tasks.broker.oversized import ENDS, OversizedReply, received, reply_size
from tasks.broker.refusals import read_dead_letters
from tasks.client import OcrClient
from tasks.settings import Settings
from tasks.state import lua
from tests.harness import (
    ROOT,
    VENV_BIN,
    RedisServer,
    Worker,
    corpus,
    eventually,
    fake_env,
    free_port,
    kill_all,
    make_client,
)
from tests.queue.test_hardening import celery_body, envelope, push_rung

LIMITS = {"OCR_MAX_INPUT_MB": "1", "OCR_MAX_OUTPUT_MB": "1"}
FAKE_ENV = fake_env(OCR_CONCURRENCY="1", **LIMITS)


def oversized_message(task_id: str, megabytes: int) -> bytes:
    data = base64.b64encode(b"\0" * megabytes * 2**20).decode()
    return envelope(task_id, celery_body({"data_b64": data}))


def test_settings_bound_covers_every_value_the_service_writes() -> None:
    settings = Settings.from_env(LIMITS)
    assert settings.redis_max_bulk_bytes >= settings.max_message_bytes
    assert settings.redis_max_bulk_bytes >= settings.max_output_bytes
    assert settings.redis_max_bulk_bytes < 3 * 2**20
    defaults = Settings.from_env({})
    assert defaults.redis_max_bulk_bytes == defaults.max_output_bytes + 2**20  # 257 MiB
    assert defaults.redis_max_bulk_bytes < 400 * 2**20


@contextmanager
def project_redis(directory: Path, **env: str) -> Iterator[int]:
    """scripts/run_redis.py (the Procfile's `redis`) on a free port, with `env`; its port."""
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("OCR_", "REDIS_"))},
           **env, "REDIS_URL": f"redis://127.0.0.1:{port}/0", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([str(VENV_BIN / "python"), str(ROOT / "scripts" / "run_redis.py")],
                            cwd=directory, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        store = redis.Redis(port=port)

        def up() -> bool:
            assert proc.poll() is None, "scripts/run_redis.py exited"
            try:
                return bool(store.ping())
            except redis.ConnectionError:
                return False

        eventually(up, 30, "the project's Redis to answer")
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)


def test_project_redis_refuses_a_message_over_the_limit(tmp_path: Path) -> None:
    """scripts/run_redis.py (the Procfile's `redis`) sets proto-max-bulk-len."""
    with project_redis(tmp_path, **LIMITS) as port:
        store = redis.Redis(port=port)
        bound = Settings.from_env(LIMITS).redis_max_bulk_bytes
        assert store.config_get("proto-max-bulk-len") == {"proto-max-bulk-len": str(bound)}
        with pytest.raises(redis.RedisError):
            store.lpush("ocr", oversized_message(str(uuid.uuid4()), 3))
        assert redis.Redis(port=port).llen("ocr") == 0
        # within the bound: stored
        redis.Redis(port=port).lpush("ocr", b"x" * (bound - 16))
        assert redis.Redis(port=port).llen("ocr") == 1


def test_project_redis_full_refuses_writes_and_evicts_nothing(tmp_path: Path) -> None:
    """scripts/run_redis.py's maxmemory (OCR_REDIS_MAXMEMORY_MB) and noeviction.

    A queued message, and a running job's state and input (keys with a TTL, as every
    key the service writes has one), stay when results fill Redis past its memory:
    the write past it is refused, nothing is evicted.
    """
    with project_redis(tmp_path, OCR_REDIS_MAXMEMORY_MB="8") as port:
        store = redis.Redis(port=port)
        assert store.config_get("maxmemory") == {"maxmemory": str(8 * 2**20)}
        assert store.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        message = envelope(str(uuid.uuid4()), celery_body({"blob": "ocr:blob:running"}))
        store.lpush("ocr", message)
        store.set("ocr:blob:running", b"i" * 100_000, ex=3600)
        store.hset("ocr:job:running", mapping={"client": "alice", "total": "3"})
        store.expire("ocr:job:running", 3600)
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            for n in range(40):  # 40 results of 1 MiB: more than 8 MiB
                store.set(f"celery-task-meta-{n}", b"r" * 2**20, ex=3600)
        assert store.lrange("ocr", 0, -1) == [message]
        assert store.strlen("ocr:blob:running") == 100_000
        assert store.hgetall("ocr:job:running") == {b"client": b"alice", b"total": b"3"}
        assert int(store.info("stats")["evicted_keys"]) == 0


def test_oversized_message_never_reaches_a_worker(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, max_bulk_bytes=Settings.from_env(LIMITS).redis_max_bulk_bytes)
    server.start()
    worker = Worker(tmp_path / "worker.log", {"REDIS_URL": server.url(0), **FAKE_ENV})
    try:
        worker.start()
        assert worker.proc is not None
        parent = psutil.Process(worker.proc.pid)
        before = parent.memory_info().rss
        store = redis.Redis.from_url(server.url(0))
        task_id = str(uuid.uuid4())
        with pytest.raises(redis.RedisError):
            store.lpush("ocr", oversized_message(task_id, 3))
        store = redis.Redis.from_url(server.url(0))
        assert store.llen("ocr") == 0
        # nothing reached the worker: no dead letter, no FAILURE to store, the job is
        # unknown (the sender got the error)
        assert store.llen(DEAD_LETTER_KEY) == 0
        assert store.get(f"celery-task-meta-{task_id}") is None
        assert parent.is_running() and parent.memory_info().rss < before + 16 * 2**20
        client = make_client(server.url(0), **LIMITS)
        try:
            job = client.submit(corpus("edge_16bit_gray.png"))
            assert client.wait([job], timeout=60)[job]["status"] == "SUCCESS"
        finally:
            client.close()
    finally:
        kill_all([worker])  # its jobs have ended; nothing waits on a warm shutdown
        server.stop()


@pytest.mark.parametrize("protocol", [2, 3])
def test_scripts_send_only_the_ends_of_a_message_over_the_bound(redis_url: str,
                                                                protocol: int) -> None:
    """Against a real Redis: messages up to the bound come whole, longer ones as their ends.

    Both scripts that pop for a worker: basic_get's `POP` and the fetch, which records
    only a message within the bound. What is over it is popped all the same.
    """
    bound = 2**20
    store = redis.Redis.from_url(redis_url, protocol=protocol)
    key = f"bounded-{protocol}"
    exact = b"e" * bound
    big = b"HEAD" + os.urandom(3 * bound) + b"TAIL"
    store.rpush(key, b"small", big, exact + b"+", exact)

    def pop(limit: int = bound) -> Any:
        return received(lua.run(store, oversized.pop_command(key, limit)))

    assert pop() == exact
    one_over = pop()
    assert isinstance(one_over, OversizedReply) and reply_size(one_over) == bound + 1
    dropped = pop()
    assert isinstance(dropped, OversizedReply) and dropped.size == len(big)
    assert dropped == big[:ENDS] + b"\n" + big[-ENDS:]
    assert dropped.startswith(b"HEAD") and dropped.endswith(b"TAIL")
    assert pop() == b"small" and reply_size(b"small") == 5
    assert pop() is None and store.llen(key) == 0
    store.rpush(key, big)
    assert pop(0) == big  # no bound

    # the fetch: the message over the bound unrecorded, its ends sent; the one within
    # the bound recorded and sent whole
    within = envelope(str(uuid.uuid4()), celery_body({"data_b64": "AAAA"}))
    over = oversized_message(str(uuid.uuid4()), 2)
    queue = f"ocr-bounded-{protocol}"
    store.rpush(queue, within, over)
    fetch = fetch_script.fetch_command("", [(queue, 0, False, True)], 1.0, bound)
    held = list_held_key(queue)
    name, item, tag = lua.run(store, fetch)
    got = received(item)
    assert isinstance(got, OversizedReply) and got.size == len(over) and tag == b""
    assert got == over[:ENDS] + b"\n" + over[-ENDS:]
    assert name == queue.encode() and store.llen(queue) == 1
    assert store.hlen(held) == 0
    name, item, tag = lua.run(store, fetch)
    assert received(item) == within and tag and store.hexists(held, tag)
    store.delete(key, queue, held)
    store.close()


def peak_rss(pid: int) -> int:
    """A process's peak resident memory so far (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@contextmanager
def warm_worker(tmp_path: Path,
                max_bulk_bytes: int | None = None) -> Iterator[tuple[str, Worker, OcrClient]]:
    """A Redis (its URL), a fake-engine worker on it and a client, after one job ran."""
    server = RedisServer(tmp_path, max_bulk_bytes=max_bulk_bytes)
    server.start()
    worker = Worker(tmp_path / "worker.log", {"REDIS_URL": server.url(0), **FAKE_ENV})
    try:
        worker.start()
        client = make_client(server.url(0), **LIMITS)
        try:
            job = client.submit(corpus("edge_16bit_gray.png"))
            assert client.wait([job], timeout=60)[job]["status"] == "SUCCESS"
            yield server.url(0), worker, client
        finally:
            client.close()
    finally:
        kill_all([worker])  # its jobs have ended; nothing waits on a warm shutdown
        server.stop()


def test_transport_reads_an_oversized_message_without_holding_it(tmp_path: Path) -> None:
    """A Redis without the project's bound stores a 128 MB message; the worker refuses it.

    Redis's own default bound (512 MiB) lets it in, so the worker pops it: the fetch
    sends only its ends and its length, the parent refuses it by that length, finds the
    task id in the ends and stores the job's FAILURE. Read whole it would peak the
    parent at about three times its size.
    """
    with warm_worker(tmp_path, max_bulk_bytes=512 * 2**20) as (url, worker, client):
        assert worker.proc is not None
        peak = peak_rss(worker.proc.pid)
        task_id = str(uuid.uuid4())
        raw = oversized_message(task_id, 72)
        size = len(raw)
        push_rung(redis.Redis.from_url(url), "ocr", raw)
        del raw
        result = client.wait([task_id], timeout=60)[task_id]
        assert result["status"] == "FAILURE"
        assert result["error"]["code"] == "input_too_large"
        letter = read_dead_letters(redis.Redis.from_url(url), 1)[0]
        assert (letter.code, letter.task_id, letter.size) == ("input_too_large", task_id, size)
        assert size > 120 * 2**20
        assert peak_rss(worker.proc.pid) < peak + 16 * 2**20
        job = client.submit(corpus("edge_16bit_gray.png"))
        assert client.wait([job], timeout=60)[job]["status"] == "SUCCESS"


def test_blob_over_the_limit_is_refused_by_its_length(tmp_path: Path) -> None:
    """A 96 MB blob (a foreign client's) over a 1 MB limit is never read by the child.

    The child reads at most the limit and one byte more (GETRANGE); the job ends
    `input_too_large`.
    """
    with warm_worker(tmp_path) as (url, worker, client):
        assert worker.proc is not None
        (child,) = psutil.Process(worker.proc.pid).children()
        peak = peak_rss(child.pid)
        store = redis.Redis.from_url(url)
        key = f"ocr:blob:{uuid.uuid4().hex}"
        store.set(key, b"\0" * 96 * 2**20, ex=600)
        task_id = str(uuid.uuid4())
        push_rung(store, "ocr", envelope(task_id, celery_body({"blob": key})))
        result = client.wait([task_id], timeout=60)[task_id]
        assert result["status"] == "FAILURE"
        assert result["error"]["code"] == "input_too_large"
        assert psutil.Process(worker.proc.pid).children() == [child]  # not recycled
        assert peak_rss(child.pid) < peak + 16 * 2**20
