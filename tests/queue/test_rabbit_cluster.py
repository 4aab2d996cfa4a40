"""RabbitMQ replicated: quorum queues on a three-node cluster of the tests' own.

One cluster for the module (tests/rabbit_cluster.py: Debian's rabbitmq-server, three
nodes clustered with `rabbitmqctl join_cluster`, ports and cookie of their own; the
machine's RabbitMQ at 5672 untouched), each test in a vhost of its own, with
`OCR_RABBITMQ_QUEUE_TYPE=quorum` and BROKER_URL naming every node. Real workers
(Procfile `worker:` line, the fake engine: queue mechanics), Redis with its
append-only file as result backend.

- The node that leads the job queues is SIGKILLed while jobs (images and multi-page
  PDFs) run and more are sent: every job ends once, SUCCESS, with its own text.
- Priorities keep their meaning: an interactive job overtakes a batch (a queue per
  priority, since quorum queues keep none).
- A retry's countdown waits in RabbitMQ (native delayed delivery) and comes back to
  the job's own queue.
- A job whose deadline passed while it was queued ends `deadline_exceeded`.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tasks.client import OcrClient
from tasks.queue.brokers import amqp_queue_lengths
from tasks.queue.celery_config import celery_config
from tasks.queue.routing import (
    is_job_queue,
    priority_queue,
    priority_value,
    quorum_destination,
    with_priority_queues,
)
from tasks.settings import Settings, SettingsError
from tests.harness import RedisServer, Worker, eventually, fake_env, kill_all, make_client
from tests.image_fixtures import png
from tests.pdf_fixtures import image_pdf, plain_pages
from tests.rabbit_cluster import RabbitCluster, cluster_missing

FAKE = {**fake_env(), "OCR_PDF_DPI": "72", "OCR_DESKEW": "0"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitCluster]:
    reason = cluster_missing()
    if reason is not None:
        pytest.skip(reason)
    started = RabbitCluster(tmp_path_factory.mktemp("rabbit")).start()
    print(f"rabbitmq cluster formed in {started.boot_seconds:.1f} s")
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def redis_aof(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"), appendonly=True)
    server.start()
    yield server
    server.stop()


class Fleet:
    """One test's vhost, its workers and clients (each with its own order of nodes)."""

    def __init__(self, cluster: RabbitCluster, redis: RedisServer, workdir: Path) -> None:
        self.cluster = cluster
        self.vhost = f"ocr-{uuid.uuid4().hex[:8]}"
        cluster.add_vhost(self.vhost)
        self.redis_url = redis.url(int(uuid.uuid4().int % 100) + 1)
        self.workdir = workdir
        self.workers: list[Worker] = []
        self.clients: list[OcrClient] = []

    def broker_url(self, first: int = 0) -> str:
        """Every node, starting with node `first` (where a process connects first)."""
        nodes = self.cluster.nodes[first:] + self.cluster.nodes[:first]
        return ";".join(node.url(self.vhost) for node in nodes)

    def env(self, first: int = 0) -> dict[str, str]:
        return {"REDIS_URL": self.redis_url, "BROKER_URL": self.broker_url(first),
                "OCR_RABBITMQ_QUEUE_TYPE": "quorum"}

    def worker(self, first: int = 0, **env: str) -> Worker:
        log = self.workdir / f"worker-{len(self.workers)}.log"
        worker = Worker(log, {**self.env(first), **FAKE, **env})
        self.workers.append(worker)
        return worker.start(timeout=180)

    def client(self, first: int = 0) -> OcrClient:
        ocr = make_client(self.redis_url, **{k: v for k, v in self.env(first).items()
                                             if k != "REDIS_URL"})
        self.clients.append(ocr)
        return ocr

    def endings(self) -> Counter[str]:
        """How often each job id ended, from every worker's `ocr.job` lines."""
        ids: Counter[str] = Counter()
        for worker in self.workers:
            for line in re.findall(r"ocr\.job (\{.*\})$", worker.log(), re.M):
                ids[json.loads(line)["id"]] += 1
        return ids

    def close(self) -> None:
        for ocr in self.clients:
            ocr.close()
        kill_all(self.workers)


@pytest.fixture
def fleet(cluster: RabbitCluster, redis_aof: RedisServer, tmp_path: Path) -> Iterator[Fleet]:
    made = Fleet(cluster, redis_aof, tmp_path)
    try:
        yield made
    finally:
        made.close()
        for node in cluster.nodes:  # a node a test stopped is back for the next one
            if not node.running():
                cluster.restart(node)


def expected_text(job: dict[str, Any]) -> list[str]:
    width, height, shade = job["size"][0], job["size"][1], job["shade"]
    return [f"fake {width}x{height} mean={shade:.1f}"] * job["pages"]


def send(client: OcrClient, index: int) -> dict[str, Any]:
    """Job `index`: an image (two of three) or a 3-page PDF, of a size of its own."""
    size = (120 + index, 90 + index % 7)
    priority = ("interactive", "normal", "batch")[index % 3]
    if index % 3 == 2:
        pages = plain_pages(3, size=size)
        job = client.submit(image_pdf(pages, dpi=72), mode="ocr", priority=priority)
        return {"id": job, "size": size, "shade": 235, "pages": 3}
    job = client.submit(png(200, size=size), priority=priority)
    return {"id": job, "size": size, "shade": 200, "pages": 1}


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.long  # the cluster of its own: `make test-long`
def test_leader_killed_under_load_loses_and_doubles_nothing(fleet: Fleet) -> None:
    """SIGKILL the node that leads the job queues while jobs run and more are sent.

    Every process lists node 1 first but the second worker (node 2 first), so node 1
    leads every queue (declared there) and holds most connections: the client's
    publishes (confirmed) and a worker's deliveries are cut at once. Unconfirmed
    publishes are sent again on another node (a job may then be queued twice), the
    killed connection's unacknowledged messages are delivered again: a job still ends
    once (its end claim in Redis), with every page, each once, and its own text.
    """
    cluster = fleet.cluster
    # Worker 0 declares the queues first, on node 1: node 1 leads them.
    fleet.worker(first=0, OCR_CONCURRENCY="2", FAKE_PAGE_SECONDS="1")
    fleet.worker(first=1, OCR_CONCURRENCY="2", FAKE_PAGE_SECONDS="1")
    client = fleet.client(first=0)
    queues = cluster.queues(fleet.vhost)
    assert queues["ocr-fake"]["type"] == "quorum", queues
    assert {"ocr-fake.interactive", "ocr-fake.batch"} <= set(queues), queues
    leader = cluster.leader_of(fleet.vhost, "ocr-fake")
    jobs = [send(client, i) for i in range(24)]
    states = eventually(lambda: (lambda s: s if sum(x in ("STARTED", "PROGRESS") for x in s)
                                 >= 3 else None)([client.status(j["id"]).state for j in jobs]),
                        120, "jobs running")
    cluster.kill(leader)
    assert sum(s not in ("SUCCESS",) for s in states) >= 12, states  # under load
    jobs += [send(client, i) for i in range(24, 36)]  # sent while the leader is gone
    # The exporter's passive declares go to the next node when the first is gone.
    assert set(amqp_queue_lengths(fleet.broker_url(first=0), ["ocr", "ocr-fake"],
                                  priority_queues=True)) == {"ocr", "ocr-fake"}
    results = client.wait([j["id"] for j in jobs], timeout=480)
    wrong = {j["id"]: results[j["id"]].get("status") for j in jobs
             if results[j["id"]].get("status") != "SUCCESS"}
    assert not wrong, wrong
    for job in jobs:
        pages = results[job["id"]]["pages"]
        assert [p["number"] for p in pages] == list(range(1, job["pages"] + 1)), job
        assert [p["text"] for p in pages] == expected_text(job), (job, pages)
    ended = eventually(lambda: (lambda e: e if all(e[j["id"]] for j in jobs) else None)(
        fleet.endings()), 30, "an ocr.job line of every job")
    assert {j["id"]: ended[j["id"]] for j in jobs if ended[j["id"]] != 1} == {}
    # The lost connection's unacknowledged deliveries came again (to either worker),
    # and a job that had ended meanwhile was not run twice.
    received: Counter[str] = Counter()
    for worker in fleet.workers:
        received.update(re.findall(r"Task ocr\.\w+\[([0-9a-f-]+)\] received", worker.log()))
    assert any(n > 1 for n in received.values()), "no delivery came again"
    # Every worker is still up: none met its own queue on the lost node (a worker's
    # `<node>.dq2` is a quorum queue here, where Celery's classic one stopped the worker
    # with "home node ... is down" when it declared it again).
    assert all(w.proc is not None and w.proc.poll() is None for w in fleet.workers)
    assert not any("Unrecoverable error" in w.log() for w in fleet.workers)
    after = cluster.queues(fleet.vhost)
    direct = [q for name, q in after.items() if name.endswith(".dq2")]
    assert len(direct) == 2 and {q["type"] for q in direct} == {"quorum"}, after
    moved = after["ocr-fake"]["leader"]
    assert moved != leader.name, after  # a follower took over; the queue lived on
    cluster.restart(leader)  # it rejoins; the queues are empty: nothing left behind
    eventually(lambda: all(q["messages"] == "0" for name, q in cluster.queues(
        fleet.vhost).items() if not name.startswith("celery_delayed")), 60,
        lambda: f"every queue empty: {cluster.queues(fleet.vhost)}")


@pytest.mark.slow
@pytest.mark.long  # the cluster of its own: `make test-long`
def test_interactive_job_overtakes_a_batch_on_quorum_queues(fleet: Fleet) -> None:
    """A queue per priority: a batch's 24 pages do not hold back an interactive job."""
    client = fleet.client()
    fleet.worker(OCR_CONCURRENCY="1", FAKE_PAGE_SECONDS="0.2")
    batch = client.submit(image_pdf(plain_pages(24), dpi=72), priority="batch", mode="ocr")
    eventually(lambda: client.status(batch).done >= 2, 60, "the batch's first pages")
    # The queue's length (the exporter's ocr_queue_length) counts its priorities' queues.
    assert amqp_queue_lengths(fleet.broker_url(), ["ocr-fake"], priority_queues=True)[
        "ocr-fake"] >= 10
    urgent = client.submit(image_pdf(plain_pages(1), dpi=72), priority="interactive",
                           mode="ocr")
    assert client.wait([urgent], timeout=60)[urgent]["status"] == "SUCCESS"
    batch_now = client.status(batch)
    assert batch_now.state == "PROGRESS" and batch_now.done < 18, batch_now
    assert client.wait([batch], timeout=120)[batch]["status"] == "SUCCESS"
    queues = fleet.cluster.queues(fleet.vhost)
    assert {queues[q]["type"] for q in ("ocr-fake", "ocr-fake.batch",
                                        "ocr-fake.interactive")} == {"quorum"}, queues


@pytest.mark.slow
@pytest.mark.long  # the cluster of its own: `make test-long`
def test_retry_countdown_waits_in_rabbitmq_and_returns_to_its_queue(
        fleet: Fleet, tmp_path: Path) -> None:
    """A retryable failure's countdown goes through the delay queues, back to its queue.

    A job and a PDF's page task are retried (the page task has no route of its own:
    its retry must follow its delivery's routing key). The worker serves only the
    engine's queue (and control): a retry sent anywhere else (the default queue `ocr`)
    would never be read.
    """
    healed = tmp_path / "healed"
    worker = fleet.worker(OCR_QUEUES="ocr-transient-on-dark", FAKE_HEALED_FLAG=str(healed))
    client = fleet.client()
    image = client.submit(png(20), engine="transient-on-dark", priority="interactive")
    pdf = client.submit(image_pdf(plain_pages(3, dark=[2]), dpi=72), mode="ocr",
                        engine="transient-on-dark", priority="batch")
    eventually(lambda: worker.log().count("Retry in") >= 2, 90, "both jobs retried")
    healed.touch()
    results = client.wait([image, pdf], timeout=180)
    assert results[image]["status"] == "SUCCESS", results[image]
    assert results[pdf]["status"] == "SUCCESS", results[pdf]  # its page 2 retried
    assert [p["number"] for p in results[pdf]["pages"]] == [1, 2, 3]
    queues = fleet.cluster.queues(fleet.vhost)
    assert queues["celery_delayed_0"]["type"] == "quorum", queues


@pytest.mark.slow
@pytest.mark.long  # the cluster of its own: `make test-long`
def test_a_job_past_its_deadline_in_the_queue_still_ends(fleet: Fleet) -> None:
    """RabbitMQ keeps a job whose deadline passed while it waited: the worker ends it.

    Celery would also give the message an AMQP expiration, and RabbitMQ would drop it
    unseen: the job would never end. The deadline travels in the header only.
    """
    client = fleet.client()
    late = client.submit(png(200), deadline=1)
    waiting = client.submit(png(201))
    time.sleep(3)  # no worker yet: the deadline passes while the job is queued
    fleet.worker()
    results = client.wait([late, waiting], timeout=120)
    assert results[late]["status"] == "FAILURE", results[late]
    assert results[late]["error"]["code"] == "deadline_exceeded"
    assert results[waiting]["status"] == "SUCCESS"


def test_quorum_settings_and_destinations() -> None:
    quorum = Settings.from_env({"BROKER_URL": "amqp://u:p@a:5672/v;amqp://u:p@b:5672/v",
                                "OCR_RABBITMQ_QUEUE_TYPE": "quorum"})
    config = celery_config(quorum)
    assert config["task_default_queue_type"] == "quorum"
    assert config["task_create_missing_queue_type"] == "quorum"
    assert config["task_default_exchange_type"] == "topic"
    assert "task_queue_max_priority" not in config  # quorum queues refuse x-max-priority
    assert config["broker_transport_options"]["confirm_publish"] is True
    classic = celery_config(Settings.from_env({"BROKER_URL": "amqp://u:p@a:5672/v"}))
    assert classic["task_queue_max_priority"] == 9 and "task_default_queue_type" not in classic
    with pytest.raises(SettingsError, match="OCR_RABBITMQ_QUEUE_TYPE"):
        Settings.from_env({"BROKER_URL": "amqp://a/v", "OCR_RABBITMQ_QUEUE_TYPE": "stream"})
    with pytest.raises(SettingsError, match="needs RabbitMQ"):
        Settings.from_env({"OCR_RABBITMQ_QUEUE_TYPE": "quorum"})
    with pytest.raises(SettingsError, match="every node"):
        Settings.from_env({"BROKER_URL": "amqp://a/v;redis://b/0"})
    high, normal, low = (priority_value(quorum, p) for p in ("interactive", "normal", "batch"))
    assert priority_queue("ocr-fake", high) == "ocr-fake.interactive"
    assert priority_queue("ocr-fake", low) == "ocr-fake.batch"
    assert priority_queue("ocr-fake", normal) == priority_queue("ocr-fake", None) == "ocr-fake"
    assert priority_queue("ocr-control", high) == "ocr-control"
    assert priority_queue("ocr-fake.batch", high) == "ocr-fake.batch"
    assert not is_job_queue("ocr-fake.batch") and is_job_queue("ocr-fake")
    assert with_priority_queues(["ocr-control", "ocr"]) == [
        "ocr-control", "ocr", "ocr.interactive", "ocr.batch"]
    # A job routed by its engine; a page sent to its queue; a retry back where it came
    # from, a countdown's delay prefix removed; a direct queue's task left alone.
    assert quorum_destination("ocr.document", None, {"engine": "fake"},
                              {"priority": high})["queue"] == "ocr-fake.interactive"
    assert quorum_destination("ocr.pdf_page", None, None, {"queue": "ocr-fake",
                                                           "priority": low})["queue"] \
        == "ocr-fake.batch"
    retry = quorum_destination("ocr.pdf_page", None, None, {
        "exchange": "celery_delayed_0", "routing_key": "0." * 28 + "ocr-fake.batch",
        "priority": low})
    assert (retry["queue"], "routing_key" in retry, "exchange" in retry) == \
        ("ocr-fake.batch", False, False)
    direct = {"exchange": "C.dq2", "routing_key": "cpu@host"}
    assert quorum_destination("ocr.audit_models", None, None, direct) == direct
