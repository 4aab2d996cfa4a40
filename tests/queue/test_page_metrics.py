"""Page counters through real workers: a page is counted by the worker that read it.

Fake engines (tests/fake_engines.py) read the pages; the counters are scraped from
Redis as the exporter scrapes them (tasks/state/metrics.py). The module has a Redis
database of its own, so the counters are its workers' only.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Callable

import psutil
import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tasks.client import OcrClient
from tasks.metrics.metrics_collector import RedisCollector
from tasks.state.metrics import FLUSH_EVERY
from tests.harness import FAST_PAGES, Worker, eventually, fake_env, kill_all
from tests.pdf_fixtures import image_pdf, plain_pages

pytestmark = pytest.mark.slow


def pages_counted(redis_url: str, node: str, source: str = "ocr") -> float:
    """`ocr_pages_total{node, engine=fake, source}` as the exporter would serve it."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RedisCollector(redis.Redis.from_url(redis_url)))
    return sum(sample.value
               for family in text_string_to_metric_families(generate_latest(registry).decode())
               for sample in family.samples
               if sample.name == "ocr_pages_total" and sample.labels.get("node") == node
               and sample.labels.get("engine") == "fake"
               and sample.labels.get("source") == source)


def node_of(worker: Worker) -> str:
    return f"{worker.name}@{socket.gethostname()}"


def children(worker: Worker) -> set[int]:
    assert worker.proc is not None
    return {p.pid for p in psutil.Process(worker.proc.pid).children()}


def ending_node(workers: list[Worker], job: str) -> str:
    """The node whose `ocr.job` line ended `job`."""
    def find() -> str | None:
        for worker in workers:
            for raw in re.findall(r"ocr\.job (\{.*\})$", worker.log(), re.M):
                record = json.loads(raw)
                if record["id"] == job:
                    return str(record["node"])
        return None

    return eventually(find, 30, f"the ocr.job line of {job}")


def test_a_split_pdfs_pages_count_for_the_workers_that_read_them(
        start_worker: Callable[..., Worker], client: OcrClient, redis_url: str) -> None:
    env = fake_env(OCR_CONCURRENCY="1", FAKE_PAGE_SECONDS="0.3", **FAST_PAGES)
    readers = [start_worker(**env), start_worker(**env)]
    job = client.submit(image_pdf(plain_pages(8)), filename="eight.pdf")
    result = client.wait([job], timeout=120)[job]
    assert result["status"] == "SUCCESS" and len(result["pages"]) == 8
    read_by = [p["worker"]["pid"] for p in result["pages"]]
    counted = {}
    for reader in readers:
        mine = sum(pid in children(reader) for pid in read_by)
        counted[reader.name] = eventually(
            lambda r=reader, m=mine: (pages_counted(redis_url, node_of(r)),)
            if pages_counted(redis_url, node_of(r)) == m else None,
            10, lambda r=reader, m=mine: f"{m} pages counted for {r.name}: "
            f"{pages_counted(redis_url, node_of(r))}")[0]
    assert sum(counted.values()) == 8, counted  # every page once, by the one that read it
    kill_all(readers)  # the next test's pages are for its own reader


def test_a_cancelled_jobs_pages_are_not_the_control_workers(
        start_worker: Callable[..., Worker], client: OcrClient, redis_url: str) -> None:
    # Pages longer than FLUSH_EVERY: the reader's child holds one page's counts at most
    # when the cancel's SIGKILL reaches it (what it held is lost: its last second's).
    # And long enough that the control worker takes `ocr.cancel` while the page runs:
    # the reader serves the control queue too, and takes the cancel itself once its
    # page is done (a loaded machine's control worker took more than 1.2 s).
    reader = start_worker(**fake_env(OCR_CONCURRENCY="1", FAKE_PAGE_SECONDS="3",
                                     **FAST_PAGES))
    control = start_worker("control")
    try:
        job = client.submit(image_pdf(plain_pages(12)), filename="twelve.pdf")

        def pages_done() -> bool:
            status = client.status(job)
            assert not status.final, status
            return status.done >= 2

        eventually(pages_done, 90, "2 pages done", interval=0.05)
        assert client.cancel([job]) == {job: "cancelled"}
        result = client.wait([job], timeout=30)[job]
        assert result["status"] == "CANCELLED" and len(result["pages"]) >= 2
        ended_by = ending_node([reader, control], job)
        # The reader's one child holds a page (acks late, prefetch 1): the cancel, and
        # so the job's ending, is the control worker's, which under the old counting
        # (pages counted where a job ended) took the kept pages' credit.
        assert ended_by == f"control@{socket.gethostname()}", \
            f"ended by {ended_by}; " + _cancel_lines(job, {"reader": reader, "control": control})
        # The pages are the reader's: those the result kept, but for the one its killed
        # child may have held; none are the control worker's, whoever ended it.
        kept = len(result["pages"])
        eventually(lambda: pages_counted(redis_url, node_of(reader)) >= kept - 1,
                   10, lambda: f"{kept} kept pages counted for the reader, but one: "
                   f"{pages_counted(redis_url, node_of(reader))}")
        assert pages_counted(redis_url, f"control@{socket.gethostname()}") == 0, ended_by
    finally:
        kill_all([reader, control])  # nothing waits on their warm shutdown; the next
        # test's pages are for its own worker, even where this one failed


def test_a_childs_counts_are_written_within_a_second_and_as_it_is_recycled(
        start_worker: Callable[..., Worker], client: OcrClient, redis_url: str) -> None:
    """Held counts reach Redis with no other task (the timer), or as their child exits."""
    quiet = start_worker(**fake_env(OCR_CONCURRENCY="1", **FAST_PAGES))
    job = client.submit(image_pdf(plain_pages(4)), filename="four.pdf")
    assert client.wait([job], timeout=120)[job]["status"] == "SUCCESS"
    # The child runs nothing more: what it held goes in on its timer.
    eventually(lambda: pages_counted(redis_url, node_of(quiet)) == 4, FLUSH_EVERY + 5,
               lambda: f"4 pages counted: {pages_counted(redis_url, node_of(quiet))}")
    kill_all([quiet])
    recycled = start_worker(**fake_env(OCR_CONCURRENCY="1", OCR_MAX_TASKS_PER_CHILD="1",
                                       **FAST_PAGES))
    job = client.submit(image_pdf(plain_pages(5)), filename="five.pdf")
    result = client.wait([job], timeout=120)[job]
    assert result["status"] == "SUCCESS"
    assert len({p["worker"]["pid"] for p in result["pages"]}) == 5  # a child a page
    eventually(lambda: pages_counted(redis_url, node_of(recycled)) == 5, FLUSH_EVERY + 10,
               lambda: f"5 pages counted: {pages_counted(redis_url, node_of(recycled))}")
    kill_all([recycled])


def _cancel_lines(job: str, workers: dict[str, Worker]) -> str:
    """Each worker's log lines of the job and of `ocr.cancel`: who took what, when."""
    return "\n".join(f"{name}: {line}" for name, worker in workers.items()
                     for line in worker.log().splitlines()
                     if job in line or "ocr.cancel" in line)

