"""Crash tests on both brokers: Redis and RabbitMQ (`BROKER_URL=amqp://…`).

Children SIGKILLed mid-batch, a worker host killed (parent and children) while a second
worker runs, the broker restarted mid-batch: every job completes, exactly once, and no
page fails. Redis (append-only file, as the project runs it) is result backend and
blob store on both brokers. Real redis-server, real RabbitMQ (a vhost of the test's
own), real workers started as the Procfile starts them, the named fake engine
(`FAKE_PAGE_SECONDS` slows it down). Also the startup check of the cluster-wide
visibility timeout and the broker's priorities.
"""

from __future__ import annotations

import functools
import json
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kombu
import psutil
import pytest

from tasks.client import OcrClient
from tasks.metrics.metrics_collector import RedisCollector
from tasks.queue.brokers import amqp_queue_lengths
from tasks.queue.celery_config import celery_config
from tasks.queue.routing import priority_value
from tasks.records.redis_target import RedisTarget
from tasks.settings import Settings, SettingsError
from tasks.state.connection import connect
from tests.harness import (
    ROOT,
    Broker,
    Worker,
    eventually,
    fake_env,
    kill_all,
    make_client,
    procfile_command,
    rabbitmqctl,
)
from tests.image_fixtures import png
from tests.pdf_fixtures import image_pdf, plain_pages

FAKE = fake_env()
# Short limits so that a dead worker's jobs come back within the test on Redis too.
SHORT = {"OCR_SOFT_TIME_LIMIT": "8", "OCR_HARD_TIME_LIMIT": "10",
         "OCR_PAGE_SOFT_TIME_LIMIT": "8", "OCR_PAGE_HARD_TIME_LIMIT": "10",
         "OCR_VISIBILITY_TIMEOUT": "15"}
# Shorter still for single-image jobs of 2 s a page (the dead host): its jobs wait out
# the visibility timeout on Redis, which must stay above the hard limit.
SHORTER = {"OCR_SOFT_TIME_LIMIT": "4", "OCR_HARD_TIME_LIMIT": "5",
           "OCR_PAGE_SOFT_TIME_LIMIT": "4", "OCR_PAGE_HARD_TIME_LIMIT": "5",
           "OCR_VISIBILITY_TIMEOUT": "7"}


def worker_factory(tmp_path: Path, broker: Broker,
                   started: list[Worker]) -> Callable[..., Worker]:
    def start(**env: str) -> Worker:
        log = tmp_path / f"worker-{len(started)}.log"
        worker = Worker(log, {"REDIS_URL": broker.redis_server.url(0), **broker.env, **env})
        started.append(worker)
        return worker.start()
    return start


@pytest.fixture
def workers(tmp_path: Path, broker: Broker) -> Any:
    """Workers of one test; killed at its end (its broker and Redis go with it)."""
    started: list[Worker] = []
    yield worker_factory(tmp_path, broker, started)
    kill_all(started)


@pytest.fixture
def client(broker: Broker) -> Any:
    ocr = make_client(broker.redis_server.url(0), **broker.env)
    yield ocr
    ocr.close()


def finished_jobs(*workers: Worker, jobs: list[str] | None = None,
                  timeout: float = 30) -> Counter[str]:
    """How often each job id ended, from the `ocr.job` lines of the workers' logs.

    With `jobs`: read again until each of them has its line (failing after `timeout`). A
    job's result is stored before its ending writes that line, so a client that saw
    the result may read the log a moment too early.
    """
    def counted() -> Counter[str]:
        ids: Counter[str] = Counter()
        for worker in workers:
            for line in re.findall(r"ocr\.job (\{.*\})", worker.log()):
                ids[json.loads(line)["id"]] += 1
        return ids

    def each_ended(wanted: list[str]) -> Counter[str] | None:
        ids = counted()
        return ids if set(wanted) <= set(ids) else None

    if jobs is None:
        return counted()
    return eventually(lambda: each_ended(jobs), timeout,
                      f"an ocr.job line of each of {jobs}", interval=0.05)


def wait_running(client: OcrClient, jobs: list[str], at_least: int = 1,
                 timeout: float = 60) -> None:
    eventually(lambda: sum(client.status(j).state in ("STARTED", "PROGRESS") for j in jobs)
               >= at_least, timeout, f"{at_least} of the jobs running", interval=0.05)


def assert_all_pages_ok(results: dict[str, dict[str, Any]], jobs: list[str],
                        pages: int) -> None:
    assert [results[j]["status"] for j in jobs] == ["SUCCESS"] * len(jobs), \
        [results[j].get("error") or results[j].get("failed_pages") for j in jobs]
    for job in jobs:
        assert [p["number"] for p in results[job]["pages"]] == list(range(1, pages + 1))
        assert not [p for p in results[job]["pages"] if "error" in p]


@pytest.mark.slow
def test_broker_restart_mid_batch_fails_no_page(broker: Broker, workers: Any,
                                                client: OcrClient) -> None:
    """Redis (broker and backend) or RabbitMQ restarted while PDF pages run.

    A page task taken from Redis just as the connection dropped can only come back after
    the visibility timeout (the documented trade-off): the short one here keeps the
    wait within the test's.
    """
    workers(**FAKE, **SHORT, OCR_CONCURRENCY="2", FAKE_PAGE_SECONDS="0.4")
    pdfs = [image_pdf(plain_pages(4, size=(120 + i, 160))) for i in range(6)]
    jobs = [client.submit(pdf, mode="ocr") for pdf in pdfs]
    wait_running(client, jobs, at_least=2)
    broker.restart(down_seconds=2)
    results = client.wait(jobs, timeout=240)
    assert_all_pages_ok(results, jobs, 4)


@pytest.mark.slow
@pytest.mark.parametrize("broker", [  # on Redis alone: test_reliability.py's short form
    pytest.param("redis", marks=pytest.mark.long), "amqp"], indirect=True)
def test_children_killed_mid_batch(broker: Broker, workers: Any, client: OcrClient) -> None:
    worker = workers(**FAKE, OCR_CONCURRENCY="2", FAKE_PAGE_SECONDS="1")
    jobs = [client.submit(png(100 + i)) for i in range(8)]
    wait_running(client, jobs)
    assert worker.proc is not None
    victims = psutil.Process(worker.proc.pid).children()
    for child in victims:
        child.send_signal(signal.SIGKILL)
    results = client.wait(jobs, timeout=120)
    assert [results[j]["status"] for j in jobs] == ["SUCCESS"] * 8
    assert not {c.pid for c in victims} & {results[j]["engine"]["pid"] for j in jobs}
    assert set(finished_jobs(worker, jobs=jobs).values()) == {1}


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["host", "parent"])
def test_dead_host_jobs_finish_on_second_worker(broker: Broker, workers: Any,
                                                client: OcrClient, victim: str) -> None:
    """The worker parent SIGKILLed (alone, or with its children: a dead host).

    The other worker finishes its jobs, each once. On RabbitMQ the jobs come back when
    the dead connection closes; on Redis after the visibility timeout (7 s here,
    OCR_VISIBILITY_TIMEOUT; `make bench` measures both).
    """
    doomed = workers(**FAKE, **SHORTER, OCR_CONCURRENCY="2", FAKE_PAGE_SECONDS="2")
    jobs = [client.submit(png(40 + i)) for i in range(4)]
    wait_running(client, jobs, at_least=2)
    if victim == "host":
        doomed.kill()
    else:
        assert doomed.proc is not None
        doomed.proc.send_signal(signal.SIGKILL)
    survivor = workers(**FAKE, **SHORTER, OCR_CONCURRENCY="2", FAKE_PAGE_SECONDS="0.2")
    results = client.wait(jobs, timeout=120)
    assert [results[j]["status"] for j in jobs] == ["SUCCESS"] * 4
    done = finished_jobs(doomed, survivor, jobs=jobs)
    assert sorted(done) == sorted(jobs) and set(done.values()) == {1}, done
    assert finished_jobs(survivor)


def test_worker_refuses_hard_limit_past_visibility_timeout(tmp_path: Path,
                                                           redis_url: str) -> None:
    env = {"REDIS_URL": redis_url, **FAKE, "OCR_HARD_TIME_LIMIT": "1000",
           "OCR_VISIBILITY_TIMEOUT": "900"}
    worker = Worker(tmp_path / "worker.log", env)
    done = subprocess.run(["bash", "-c", f"exec {procfile_command('worker')}"], cwd=ROOT,
                          env=worker.env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "OCR_VISIBILITY_TIMEOUT=900" in output and "1000 s" in output, output[-2000:]
    assert "ready." not in output


def wait_for_pages(client: OcrClient, job: str, pages: int, timeout: float = 60) -> None:
    eventually(lambda: client.status(job).done >= pages, timeout, f"{pages} pages done",
               interval=0.05)


@pytest.mark.slow
def test_interactive_job_overtakes_a_batch(broker: Broker, workers: Any,
                                           client: OcrClient) -> None:
    """Named priorities mean the same on both brokers (numbers mirrored on RabbitMQ)."""
    workers(**FAKE, OCR_CONCURRENCY="1", FAKE_PAGE_SECONDS="0.2")
    batch = client.submit(image_pdf(plain_pages(24)), priority="batch", mode="ocr")
    wait_for_pages(client, batch, 2)
    urgent = client.submit(image_pdf(plain_pages(1)), priority="interactive", mode="ocr")
    assert client.wait([urgent], timeout=60)[urgent]["status"] == "SUCCESS"
    batch_now = client.status(batch)
    assert batch_now.state == "PROGRESS" and batch_now.done < 18, batch_now
    assert client.wait([batch], timeout=120)[batch]["status"] == "SUCCESS"
    if broker.vhost is not None:
        queues = rabbitmqctl("list_queues", "-p", broker.vhost.name, "name", "arguments")
        assert re.search(r"ocr-fake\s.*x-max-priority.*9", queues), queues


@pytest.mark.slow
def test_poison_job_ends_as_worker_lost(broker: Broker, workers: Any,
                                        client: OcrClient) -> None:
    """A job whose child dies at once ends worker_lost after OCR_MAX_DELIVERIES starts.

    On either broker: RabbitMQ redelivers it, Redis restores it at the visibility
    timeout's check; the count in Redis ends it. The worker goes on serving, and a PDF
    with one poison page ends PARTIAL. Two starts (the default is 3): the worker's pool
    may take up to 5 s to notice a child's death (celery's pool maintenance timer).
    """
    worker = workers(**FAKE, OCR_CONCURRENCY="1", OCR_QUEUES="ocr-killer",
                     OCR_MAX_DELIVERIES="2")
    poison = client.submit(png(10), engine="killer")
    result = client.wait([poison], timeout=120)[poison]
    assert result["error"]["code"] == "worker_lost"
    assert "died on each of its 2 runs" in result["error"]["message"], result
    assert worker.log().count("exited with 'signal 9 (SIGKILL)'") == 2  # a child a start
    fine = client.submit(png(240), engine="killer")
    assert client.wait([fine], timeout=60)[fine]["status"] == "SUCCESS"
    pdf = client.submit(image_pdf(plain_pages(3, dark=[2])), engine="killer", mode="ocr")
    ended = client.wait([pdf], timeout=120)[pdf]
    assert ended["status"] == "PARTIAL", ended
    assert [(p["number"], p["code"]) for p in ended["failed_pages"]] == [(2, "worker_lost")]


def test_a_job_whose_deadline_passed_in_the_queue_ends(broker: Broker, workers: Any,
                                                       client: OcrClient) -> None:
    """Queued past its deadline, a job still ends: FAILURE `deadline_exceeded`.

    On RabbitMQ the deadline travels in the message's header only: with an AMQP
    expiration RabbitMQ would drop the message unseen and the job would never end.
    """
    late = client.submit(png(30), deadline=1)
    time.sleep(1.5)  # its deadline passes: no worker yet
    workers(**FAKE)
    result = client.wait([late], timeout=120)[late]
    assert (result["status"], result["error"]["code"]) == ("FAILURE", "deadline_exceeded")


@pytest.mark.parametrize("broker", ["amqp"], indirect=True)
def test_queue_length_metric_reads_rabbitmq(broker: Broker, client: OcrClient) -> None:
    assert broker.vhost is not None
    for i in range(3):
        client.submit(png(60 + i), priority=["interactive", "normal", "batch"][i])
    redis_client = connect(RedisTarget(broker.redis_server.url(0)))
    collector = RedisCollector(redis_client, ["ocr", "ocr-none"],
                               broker_lengths=functools.partial(amqp_queue_lengths,
                                                                broker.vhost.url()))
    family = [m for m in collector.collect() if m.name == "ocr_queue_length"][0]
    assert {s.labels["queue"]: s.value for s in family.samples} == {"ocr": 3, "ocr-none": 0}


@pytest.mark.slow
@pytest.mark.parametrize("broker", ["amqp"], indirect=True)
def test_a_worker_waits_for_the_mailbox_its_lost_connection_held(
        broker: Broker, tmp_path: Path, client: OcrClient) -> None:
    """RabbitMQ still gives a worker's mailbox to a lost connection: the worker waits.

    The mailbox (`<node>.celery.pidbox`) is an exclusive queue: until RabbitMQ sees the
    old connection gone, declaring it again is refused with 405 RESOURCE_LOCKED. The
    short chaos soak on a RabbitMQ cluster met it under load (`cpu: exit 1` after its
    node was killed): Celery took it as unrecoverable and the worker exited 1. Here
    the old connection is one the test holds; once it closes, the worker serves.
    """
    import socket

    from celery import Celery
    from kombu import Connection

    assert broker.vhost is not None
    node = f"mailbox@{socket.gethostname()}"
    control = Celery(broker=broker.vhost.url(), config_source={
        "accept_content": ["json"]}).control
    mailbox = control.mailbox.get_queue(node)  # as the worker declares it
    if not mailbox.exclusive:  # kombu 5.6 (the range's floor): no lock to wait for
        pytest.skip(f"kombu {kombu.__version__} declares the mailbox not exclusive")
    worker = Worker(tmp_path / "worker.log", {"REDIS_URL": broker.redis_server.url(0),
                                              **broker.env, **FAKE, "WORKER_NAME": "mailbox"})
    lost = Connection(broker.vhost.url())
    try:
        held = mailbox(lost.channel())
        held.declare()
        # A consumer keeps it: unused, the mailbox expires after Celery's
        # control_queue_expires (10 s), sooner than a loaded host starts the worker.
        held.consume(no_ack=True)
        worker.spawn()
        worker.wait_until(lambda: "RESOURCE_LOCKED" in worker.log(), 240, "the refusal")
        lost.release()  # RabbitMQ sees the connection gone, and its queue with it
        worker.wait_ready(240)
        assert worker.proc is not None and worker.proc.poll() is None, worker.log()[-3000:]
        assert "Unrecoverable error" not in worker.log()
        assert eventually(lambda: control.ping([node], timeout=2), 60,
                          "the worker's mailbox answering") == [{node: {"ok": "pong"}}]
        job = client.submit(png(70))
        assert client.wait([job], timeout=120)[job]["status"] == "SUCCESS"
    finally:
        lost.release()
        kill_all([worker])


def test_broker_settings() -> None:
    redis_only = Settings.from_env({"REDIS_URL": "redis://r:6379/0"})
    assert celery_config(redis_only)["broker_url"] == "redis://r:6379/0"
    assert celery_config(redis_only)["broker_transport_options"]["visibility_timeout"] == 900
    assert [priority_value(redis_only, p) for p in ("interactive", "normal", "batch")] \
        == [0, 3, 6]  # Redis transport: lower first
    rabbit = Settings.from_env({"REDIS_URL": "redis://r:6379/0",
                                "BROKER_URL": "amqp://u:p@mq:5672/ocr"})
    config = celery_config(rabbit)
    assert config["broker_url"] == "amqp://u:p@mq:5672/ocr"
    assert config["result_backend"] == "redis://r:6379/0"
    assert config["task_queue_max_priority"] == 9
    assert [priority_value(rabbit, p) for p in ("interactive", "normal", "batch")] \
        == [9, 6, 3]  # RabbitMQ: higher first
    assert config["task_default_priority"] == 6
    with pytest.raises(SettingsError, match="BROKER_URL"):
        Settings.from_env({"BROKER_URL": "http://mq"})
    with pytest.raises(SettingsError, match="OCR_VISIBILITY_TIMEOUT=600"):
        Settings.from_env({"OCR_VISIBILITY_TIMEOUT": "600"}).check_worker()
    Settings.from_env({"OCR_VISIBILITY_TIMEOUT": "661"}).check_worker()
