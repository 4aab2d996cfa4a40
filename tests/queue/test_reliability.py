"""No job lost: killed children, poison jobs, warm shutdown, Redis restart, and more.

Also hostile messages, a soak with flat memory and Flower's auth. Real Redis, real
workers, named fake engines.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from tasks.broker import unacked
from tasks.broker.fetch_script import fetch_command
from tasks.broker.layout import list_held_key
from tasks.client import OcrClient
from tasks.state import lua
from tests.harness import (
    ROOT,
    VENV_BIN,
    RedisServer,
    Worker,
    eventually,
    fake_env,
    free_port,
    kill_all,
    make_client,
    procfile_command,
)
from tests.image_fixtures import png

pytestmark = pytest.mark.slow

FAKE = fake_env()
# Limits under a short visibility timeout: an unacknowledged message comes back soon.
SHORT_LIMITS = {"OCR_SOFT_TIME_LIMIT": "8", "OCR_HARD_TIME_LIMIT": "10",
                "OCR_PAGE_SOFT_TIME_LIMIT": "8", "OCR_PAGE_HARD_TIME_LIMIT": "10",
                "OCR_VISIBILITY_TIMEOUT": "15"}


def children(worker: Worker) -> list[psutil.Process]:
    assert worker.proc is not None
    return psutil.Process(worker.proc.pid).children()


def wait_started(client: OcrClient, job: str, timeout: float = 30) -> None:
    """Until `job`'s run has begun: STARTED, or already ended.

    A short run can start and end between two reads (or while the test still sends
    the jobs after it), and a job that has ended never reads STARTED again.
    """
    def taken() -> bool:
        progress = client.states.read(job)
        return progress.state == "STARTED" or progress.final

    eventually(taken, timeout, f"{job} started", interval=0.05)


def test_jobs_survive_children_killed_mid_batch(start_worker: Callable[..., Worker],
                                                client: OcrClient) -> None:
    worker = start_worker(**FAKE, OCR_CONCURRENCY="2", FAKE_PAGE_SECONDS="1",
                          OCR_QUEUES="kill9")
    jobs = [client.app.send_task("ocr.document", queue="kill9",
                                 kwargs={"blob": client._blobs.put(png(100 + i))}).id
            for i in range(8)]
    wait_started(client, jobs[0])
    victims = children(worker)
    for child in victims:
        child.send_signal(signal.SIGKILL)
    results = client.wait(jobs, timeout=120)
    assert [results[j]["status"] for j in jobs] == ["SUCCESS"] * 8
    assert not {c.pid for c in victims} & {results[j]["engine"]["pid"] for j in jobs}
    assert "WorkerLostError" in worker.log()
    worker.job_records(wait_for=jobs)  # each job's `ocr.job` line follows its result
    ended = [json.loads(line)["id"] for line in re.findall(r"ocr\.job (\{.*\})$",
                                                             worker.log(), re.M)]
    assert sorted(ended) == sorted(jobs)  # each job ended once


def test_warm_shutdown_requeues_unstarted_jobs(start_worker: Callable[..., Worker],
                                               client: OcrClient) -> None:
    env = {**FAKE, "OCR_CONCURRENCY": "1", "FAKE_PAGE_SECONDS": "1.5",
           "OCR_QUEUES": "warm"}
    first = start_worker(**env)
    jobs = [client.app.send_task("ocr.document", queue="warm",
                                 kwargs={"blob": client._blobs.put(png(50 + i))}).id
            for i in range(4)]
    wait_started(client, jobs[0])
    first.stop()  # SIGTERM: warm shutdown, the running job finishes
    assert client.status(jobs[0]).state == "SUCCESS"
    start_worker(**env)
    results = client.wait(jobs, timeout=60)
    assert [results[j]["status"] for j in jobs] == ["SUCCESS"] * 4


def test_a_job_given_to_a_child_as_the_worker_stops_runs_once(
        start_worker: Callable[..., Worker], client: OcrClient) -> None:
    """A job written to a child whose acceptance the parent has not read yet runs once.

    The child is held (SIGSTOP) so that the job waits in its pipe while the warm
    shutdown begins; let go, it runs the job. Its message is acknowledged, not put
    back on its queue for the next worker to run again.
    """
    env = {**FAKE, "OCR_CONCURRENCY": "1", "FAKE_PAGE_SECONDS": "0.2",
           "OCR_QUEUES": "given"}
    first = start_worker(**env)
    [child] = children(first)
    child.suspend()
    try:
        job = client.app.send_task("ocr.document", queue="given",
                                   kwargs={"blob": client._blobs.put(png(70))}).id
        first.wait_until(lambda: f"[{job}] received" in first.log(), 30, "received")
        time.sleep(1.5)  # the parent writes the job to the child's pipe (at once: a margin)
        assert first.proc is not None
        first.proc.send_signal(signal.SIGTERM)
        first.wait_until(lambda: "Warm shutdown" in first.log(), 30, "warm shutdown")
        time.sleep(0.5)
    finally:
        child.resume()
    first.proc.wait(60)
    assert client.status(job).state == "SUCCESS"
    with client.app.connection_for_write() as conn:
        left = conn.default_channel.queue_declare("given").message_count
    second = start_worker(**env)
    after = client.app.send_task("ocr.document", queue="given",
                                 kwargs={"blob": client._blobs.put(png(71))}).id
    assert client.wait([after], timeout=60)[after]["status"] == "SUCCESS"
    delivered = (first.log() + second.log()).count(f"ocr.document[{job}] received")
    assert (left, delivered) == (0, 1), second.log()[-3000:]


def test_redis_restart_loses_no_job(aof_redis: RedisServer,
                                    tmp_path_factory: pytest.TempPathFactory) -> None:
    url = aof_redis.url(0)
    worker = Worker(tmp_path_factory.mktemp("restart") / "worker.log",
                    {**FAKE, "REDIS_URL": url, "OCR_CONCURRENCY": "2",
                     "FAKE_PAGE_SECONDS": "0.3"}).start()
    client = make_client(url)
    try:
        jobs = [client.submit(png(30 + i)) for i in range(16)]
        wait_started(client, jobs[0])
        aof_redis.stop()
        time.sleep(1)
        aof_redis.start()
        results = client.wait(jobs, timeout=180)
        assert [results[j]["status"] for j in jobs] == ["SUCCESS"] * 16
        assert worker.proc is not None and worker.proc.poll() is None
    finally:
        kill_all([worker])
        client.close()


class CuttingProxy:
    """A TCP proxy to Redis that cuts the connection carrying the first reply holding `marker`.

    Test-side fault injection (the worker's code is untouched): the reply is never
    forwarded and both sockets close, as when Redis stops after popping a message
    and before its reply reaches the worker. Later connections are forwarded as is.
    """

    def __init__(self, upstream_port: int, marker: bytes) -> None:
        self.upstream_port = upstream_port
        self.marker = marker
        self.cut = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._pump, args=(downstream, upstream, False),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, downstream, True),
                             daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, replies: bool) -> None:
        tail = b""
        try:
            while chunk := source.recv(65536):
                seen = tail + chunk
                if replies and not self.cut.is_set() and self.marker in seen:
                    self.cut.set()
                    break
                tail = seen[-len(self.marker):]
                sink.sendall(chunk)
        except OSError:
            pass
        for end in (source, sink):
            try:  # a FIN both ways, and the other direction's recv woken
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            end.close()

    def close(self) -> None:
        self.listener.close()


def test_a_message_whose_reply_never_arrives_is_not_lost(
        redis_url: str, start_worker: Callable[..., Worker], client: OcrClient) -> None:
    """Redis pops a message and the worker never reads the reply: it comes back.

    The fault (bench/chaos.py's soak can meet it): kombu's BRPOP pops a message and a
    Redis restart comes before the worker writes its record of it. The transport's
    fetch holds the message in the same atomic step as the pop
    (`tasks/broker/lanes.FETCH`), so the message is restored after the
    visibility timeout and read once.
    """
    host_port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    job = str(uuid.uuid4())
    proxy = CuttingProxy(host_port, job.encode())
    try:
        worker = start_worker(**FAKE, **SHORT_LIMITS, OCR_QUEUES="cut",
                              REDIS_URL=redis_url.replace(f":{host_port}/", f":{proxy.port}/"))
        client.app.send_task("ocr.document", queue="cut", task_id=job,
                             kwargs={"blob": client._blobs.put(png(70))})
        eventually(proxy.cut.wait, 30, "the fetch reply holding the job cut")
        result = client.wait([job], timeout=90)[job]
        assert result["status"] == "SUCCESS"
        worker.job_records([job])
        assert worker.log().count(f"[{job}] received") == 1  # the cut reply never arrived
    finally:
        proxy.close()


def test_the_fetch_records_before_it_pops(redis_url: str) -> None:
    """The fetch script: held and popped in one step, the record kombu's own shape.

    The held value is under the tag the worker chose (never read from the envelope):
    its head (when taken, no holder, the list it came from), then kombu's record, which
    names the queue the message was taken from, not the envelope's exchange.
    """
    import json

    import redis

    r = redis.Redis.from_url(redis_url)
    tag = str(uuid.uuid4())
    envelope = json.dumps({"body": "", "headers": {"id": "x"}, "properties": {
        "delivery_info": {"exchange": "elsewhere", "routing_key": "other"},
        "delivery_tag": "the envelope's"}})
    r.lpush("q", envelope)
    r.lpush("q\x06\x163", "later")

    def fetch(lists: list[tuple[str, int, bool]], now: float) -> Any:
        """The fetch over lists without lanes: (list, priority step, acknowledged)."""
        return lua.run(r, fetch_command(
            "", [(name, step, False, ack) for name, step, ack in lists], now, 0, tag=tag))

    held_in = list_held_key("q")  # the hash of the list it was taken from
    name, item, got = fetch([("q", 0, True), ("q\x06\x163", 3, True)], 12.5)
    assert (name, item, got) == (b"q", envelope.encode(), tag.encode())
    found = unacked.parse(r.hget(held_in, tag))
    assert found is not None and (found.taken, found.holder, found.src) == (12.5, "", "q")
    assert json.loads(found.record) == [json.loads(envelope), "", "q"] and r.llen("q") == 0
    # A consumer without acknowledgements takes unrecorded; nothing left: nil.
    assert fetch([("q", 0, False), ("q\x06\x163", 3, False)], 13) == \
        [b"q\x06\x163", b"later", b""]
    assert r.hlen(held_in) == 1 and not r.exists(list_held_key("q\x06\x163"))
    assert fetch([("q", 0, True)], 13) is None
    r.delete(held_in)


def test_pickle_message_is_refused_and_worker_survives(start_worker: Callable[..., Worker],
                                                       client: OcrClient) -> None:
    worker = start_worker(**FAKE, OCR_CONCURRENCY="1", OCR_QUEUES="hostile")
    task_id = str(uuid.uuid4())
    with client.app.producer_or_acquire() as producer:
        producer.publish(((), {"data_b64": "AAAA"}, {}), serializer="pickle",
                         routing_key="hostile", exchange="",
                         headers={"task": "ocr.document", "id": task_id, "lang": "py"})
    follow = client.app.send_task("ocr.document", queue="hostile",
                                  kwargs={"blob": client._blobs.put(png())}).id
    assert client.wait([follow], timeout=60)[follow]["status"] == "SUCCESS"
    assert "refused a message on queue hostile (content_refused" in worker.log()
    refused = client.wait([task_id], timeout=10)[task_id]  # never ran, yet not PENDING
    assert refused["error"]["code"] == "content_refused"


def test_server_refuses_oversize_input(start_worker: Callable[..., Worker],
                                       client: OcrClient) -> None:
    import base64

    start_worker(**FAKE, OCR_CONCURRENCY="1", OCR_QUEUES="small", OCR_MAX_INPUT_MB="0.01")
    big = base64.b64encode(png(size=(2000, 2000)) + b"\0" * 20000).decode()
    job = client.app.send_task("ocr.document", queue="small", kwargs={"data_b64": big}).id
    assert client.wait([job], timeout=60)[job]["error"]["code"] == "input_too_large"


def test_soak_keeps_worker_memory_flat(start_worker: Callable[..., Worker],
                                       client: OcrClient) -> None:
    worker = start_worker(**FAKE, OCR_CONCURRENCY="2", OCR_QUEUES="soak",
                          OCR_MAX_TASKS_PER_CHILD="0")
    blobs = [png(i % 250, size=(320, 240)) for i in range(300)]

    def batch(items: list[bytes]) -> float:
        ids = [client.app.send_task("ocr.document", queue="soak",
                                    kwargs={"blob": client._blobs.put(b)}).id for b in items]
        results = client.wait(ids, timeout=300)
        assert all(results[i]["status"] == "SUCCESS" for i in ids)
        return sum(c.memory_info().rss for c in children(worker)) / 2**20

    warm = batch(blobs[:50])
    end = batch(blobs[50:])
    print(f"\nsoak: pool children RSS {warm:.1f} MB after 50 jobs, {end:.1f} MB after 300")
    assert end - warm < 10


def test_flower_requires_basic_auth(tmp_path: Path, redis_url: str) -> None:
    import urllib.error
    import urllib.request

    port = free_port()
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(ROOT), "FLOWER_PORT": str(port),
           "FLOWER_DB": str(tmp_path / "flower.db"), "FLOWER_BASIC_AUTH": "ops:s3cret",
           "REDIS_URL": redis_url}
    proc = subprocess.Popen(["bash", "-c", f"exec {procfile_command('flower')}"], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}/"

        def answer() -> int | None:
            try:
                urllib.request.urlopen(url, timeout=2)
            except urllib.error.HTTPError as exc:
                return exc.code
            except OSError:
                return None  # not listening yet
            return 200

        # Its start: up to WORKER_WAIT (15 s) for a worker (none here), then Flower's
        # own, over 15 s more on a loaded machine.
        assert eventually(answer, 120, "Flower answering") == 401
        request = urllib.request.Request(url, headers={
            "Authorization": "Basic b3BzOnMzY3JldA=="})  # ops:s3cret
        assert urllib.request.urlopen(request, timeout=5).status == 200
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
    refused = subprocess.run([sys.executable, "scripts/run_flower.py"], cwd=ROOT,
                             env={**env, "FLOWER_BASIC_AUTH": "", "OCR_FLOWER_OPEN": "1",
                                  "FLOWER_ADDRESS": "0.0.0.0"}, capture_output=True,
                             text=True, timeout=120)
    assert refused.returncode == 2 and "only allowed on loopback" in refused.stdout


def test_var_flower_auth_holds_the_password_alone(tmp_path: Path) -> None:
    """What the browser's prompt takes: user `ocr`, and the file's content as it is."""
    from scripts.run_flower import generated_credentials

    path = tmp_path / "var" / "flower-auth"
    credentials = generated_credentials(path)
    password = path.read_text().strip()
    assert credentials == f"ocr:{password}" and ":" not in password and len(password) >= 20
    assert path.stat().st_mode & 0o777 == 0o600
    assert generated_credentials(path) == credentials  # made once
    path.write_text("ocr:from-before\n")  # a file written as it once was
    assert generated_credentials(path) == "ocr:from-before"
    assert path.read_text() == "from-before\n"


def test_flower_stops_on_sigterm_with_inspects_in_flight(tmp_path: Path,
                                                         redis_url: str) -> None:
    """SIGTERM stops Flower with its state saved, not after its inspect broadcasts.

    No worker answers, and each broadcast Flower sends as it starts waits out
    FLOWER_INSPECT_TIMEOUT (ten minutes here): Flower's own handler waited for them.
    """
    import shelve
    import urllib.error
    import urllib.request

    port = free_port()
    db = tmp_path / "flower.db"
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(ROOT), "FLOWER_PORT": str(port), "FLOWER_DB": str(db),
           "FLOWER_BASIC_AUTH": "ops:s3cret", "REDIS_URL": redis_url,
           "FLOWER_INSPECT_TIMEOUT": "600000"}
    log = tmp_path / "flower.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(["bash", "-c", f"exec {procfile_command('flower')}"],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        def serving() -> bool:  # its loop answers: it has sent its broadcasts
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
            except urllib.error.HTTPError as exc:
                return exc.code == 401
            except OSError:
                return False  # not listening yet
            return False

        eventually(serving, 120, "Flower answering")
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(120) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    assert "flower: stopped on SIGTERM" in text, text
    assert not re.search(r"Inspect method \w+ failed", text), text  # not waited out
    with shelve.open(str(db), flag="r") as state:
        assert "events" in state, text  # its state saved on the way out


def test_a_server_that_lost_the_scripts_loads_them_again(
        redis_url: str, start_worker: Callable[..., Worker], client: OcrClient) -> None:
    """A server without the broker's scripts: they are loaded again, nothing lost.

    The scripts run by SHA. A server that lacks them (SCRIPT FLUSH here; a restart or a
    promoted replica alike) answers NOSCRIPT, and the publish and the fetch load them
    and go on; each job is taken once.
    """
    import redis

    r = redis.Redis.from_url(redis_url)
    worker = start_worker(**FAKE, OCR_QUEUES="noscript")
    jobs = []
    for n in range(3):
        r.script_flush()  # between the worker's fetches, and before each publish
        job = client.app.send_task("ocr.document", queue="noscript",
                                   headers={"ocr_client": f"lost-{n}"},
                                   kwargs={"blob": client._blobs.put(png(60 + n))}).id
        assert client.wait([job], timeout=60)[job]["status"] == "SUCCESS"
        jobs.append(job)
    log = worker.log()
    assert all(log.count(f"[{job}] received") == 1 for job in jobs)
    assert "refused" not in log
    r.close()
