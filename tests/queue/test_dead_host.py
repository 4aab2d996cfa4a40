"""A dead worker host's jobs run elsewhere; a host that only seemed dead ends none twice.

Real Redis with the default visibility timeout (900 s), real Procfile workers, the gated
fake engine (tests/gated_engine.py: a page is held until its worker's gate opens). One
worker, the survivor, serves the module's queues throughout; each test pauses it
(SIGSTOP) while a holder worker starts and takes the test's jobs (an image and a
fanned-out PDF's pages, held by its closed gate), then resumes it:

- the holder host is SIGKILLed (parent and children): its held jobs come back through
  the sweep of dead holders (tasks/broker/holders.py), long before the visibility
  timeout, and end SUCCESS on the survivor, each once (OCR_WORKER_LIVENESS_SECONDS at
  12 s: the window's length is a setting, and the sweep the same at any length);
- the holder host is SIGSTOPped past OCR_WORKER_LIVENESS_SECONDS: the survivor ends
  its jobs; then the holder's gate opens and it resumes, finishes its runs late, and
  ends none of them a second time: one result and one `ocr.job` line per job, one
  HTTP callback (to a loopback receiver), each page counted once in the usage;
- the same SIGKILL through Sentinel (three Sentinels, a primary and two replicas:
  devkit/ha.py), with a survivor of its own and the window at 12 s; its long form
  (`make test-long`) keeps the window at its default (30 s).
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis

from devkit.receivers import CallbackReceiver
from tasks.client import OcrClient
from tasks.state.usage import day_key, today
from tests.ha import RedisHA
from tests.harness import FAKE_PLUGINS, FAST_PAGES, Worker, eventually, kill_all, make_client
from tests.held_records import held_count
from tests.image_fixtures import png
from tests.pdf_fixtures import image_pdf, plain_pages

pytestmark = pytest.mark.slow

SETTINGS = {"OCR_ENGINE": "gated", "OCR_CACHE_RESULTS": "0", "OCR_CONCURRENCY": "3",
            "OCR_ENGINE_PLUGINS": f"{FAKE_PLUGINS},gated=tests.gated_engine:GatedEngine",
            "OCR_CALLBACK_ALLOWED_HOSTS": "127.0.0.1", **FAST_PAGES}
# The visibility timeout at its default (900 s); the sweep's window (default 30 s) at
# 12 s on the module's workers, which share one (the same value on every host).
SHORT_WINDOW = {"OCR_WORKER_LIVENESS_SECONDS": "12"}
WAIT = 150  # a bound for a loaded machine: far below the visibility timeout


def gate(path: Path, open_: bool) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    if open_:
        (path / "open").touch()
    return path


@pytest.fixture(scope="module")
def start_host(start_worker: Callable[..., Worker]) -> Callable[..., Worker]:
    """The module's workers: the sweep's window at SHORT_WINDOW on each."""
    return lambda process="worker", **env: start_worker(process, **env, **SHORT_WINDOW)


@pytest.fixture(scope="module")
def control(start_host: Callable[..., Worker]) -> Worker:
    """The control worker that sends the jobs' callbacks; it sweeps dead holders too."""
    return start_host(process="control", **SETTINGS)


@pytest.fixture(scope="module")
def survivor(start_host: Callable[..., Worker], control: Worker,
             tmp_path_factory: pytest.TempPathFactory) -> Worker:
    """The worker that outlives every holder (its gate open: it reads at once)."""
    return start_host(**SETTINGS, FAKE_GATE_DIR=str(gate(
        tmp_path_factory.mktemp("survivor-gate"), open_=True)))


def signal_host(worker: Worker, sig: signal.Signals) -> None:
    """`sig` to the worker's parent and children at once (its process group)."""
    assert worker.proc is not None
    os.killpg(worker.proc.pid, sig)


def usage_today(client: OcrClient) -> int:
    store: redis.Redis = client.app.backend.client
    day = day_key(today())
    return sum(int(v) for v in store.hgetall(day).values())


def hold_jobs(start_worker: Callable[..., Worker], survivor: Worker, client: OcrClient,
              holder_gate: Path, **options: Any) -> tuple[Worker, list[str]]:
    """A holder worker that took the test's jobs (a 2-page PDF and an image) and holds them.

    The survivor is paused meanwhile, so that the holder takes them all; resumed after.
    """
    signal_host(survivor, signal.SIGSTOP)
    try:
        holder = start_worker(**SETTINGS, FAKE_GATE_DIR=str(holder_gate))
        pdf = client.submit(image_pdf(plain_pages(2)), filename="two.pdf", **options)
        eventually(lambda: len(list(holder_gate.glob("started-*"))) >= 2, 60,
                   lambda: f"the PDF's pages held: {holder.log()[-2000:]}")
        image = client.submit(png(190), filename="one.png", **options)
        eventually(lambda: len(list(holder_gate.glob("started-*"))) >= 3, 60,
                   lambda: f"the image held: {holder.log()[-2000:]}")
    finally:
        signal_host(survivor, signal.SIGCONT)
    return holder, [pdf, image]


def test_a_killed_hosts_jobs_end_elsewhere_once(
        start_host: Callable[..., Worker], survivor: Worker, control: Worker,
        client: OcrClient, tmp_path: Path) -> None:
    killed_host_jobs_end_elsewhere_once(start_host, survivor, client, tmp_path, [control])


@pytest.mark.parametrize("window,db", [  # a database each: no holder of the other's left
    pytest.param(SHORT_WINDOW, 1, id="short-window"),
    pytest.param({}, 2, id="default-window", marks=pytest.mark.long),
])
def test_through_sentinel_a_killed_hosts_jobs_end_elsewhere_once(
        ha: RedisHA, tmp_path: Path, window: dict[str, str], db: int) -> None:
    """REDIS_URL=sentinel://...: the fetch, the holders and the sweep go through it.

    Its own workers, with the window at 12 s; the long form keeps the default (30 s):
    the default loses no job either.
    """
    env = {**ha.env(db), **window}
    started: list[Worker] = []

    def start(**extra: str) -> Worker:
        worker = Worker(tmp_path / f"worker-{len(started)}.log", {**env, **extra})
        started.append(worker)
        return worker.start()

    client = make_client(env["REDIS_URL"], **env)
    try:
        survivor = start(**SETTINGS, FAKE_GATE_DIR=str(gate(tmp_path / "open", True)))
        killed_host_jobs_end_elsewhere_once(start, survivor, client, tmp_path)
    finally:
        kill_all(started)
        client.close()


def killed_host_jobs_end_elsewhere_once(start_worker: Callable[..., Worker],
                                        survivor: Worker, client: OcrClient,
                                        tmp_path: Path, others: Sequence[Worker] = ()) -> None:
    """The jobs a killed host held end elsewhere, once.

    A live worker's sweep put them back: `survivor`'s, or one of `others`'.
    """
    before = usage_today(client)
    holder, jobs = hold_jobs(start_worker, survivor, client, gate(tmp_path / "g", False))
    holder.kill()  # the host dies: parent and children at once
    results = client.wait(jobs, timeout=WAIT)
    assert [results[j]["status"] for j in jobs] == ["SUCCESS"] * 2, results
    assert results[jobs[0]]["pages"][0]["text"].startswith("fake")
    records = survivor.job_records(wait_for=jobs)
    assert all(records[j]["outcome"] == "SUCCESS" for j in jobs)
    assert len(re.findall(rf"ocr\.job .*\"id\": \"({'|'.join(jobs)})\"",
                          survivor.log())) == 2
    assert "put back in their queues" in "".join(
        w.log() for w in (survivor, holder, *others))
    assert usage_today(client) - before == 3  # two PDF pages and the image, once each


def test_a_host_back_from_a_pause_ends_none_twice(
        start_host: Callable[..., Worker], survivor: Worker, client: OcrClient,
        receiver: CallbackReceiver, tmp_path: Path) -> None:
    before = usage_today(client)
    holder_gate = gate(tmp_path / "g", False)
    holder, jobs = hold_jobs(start_host, survivor, client, holder_gate,
                             callback_url=receiver.url("/done"))
    signal_host(holder, signal.SIGSTOP)  # a paused VM, a partition
    try:
        results = client.wait(jobs, timeout=WAIT)
        assert [results[j]["status"] for j in jobs] == ["SUCCESS"] * 2, results
        survivor.job_records(wait_for=jobs)
    finally:
        (holder_gate / "open").touch()
        signal_host(holder, signal.SIGCONT)
    # The holder finishes its three late runs: the image's ending is dropped, the PDF's
    # pages find their document ended.
    eventually(lambda: "already ended; this run's SUCCESS dropped" in holder.log()
               and len(re.findall(r"Task ocr\.pdf_page\[\S+\] succeeded", holder.log())) >= 2,
               60, lambda: f"the holder's late runs: {holder.log()[-3000:]}")
    eventually(lambda: {b["id"] for b in receiver.bodies()} >= set(jobs), 60,
               "the HTTP callbacks")
    queues_idle(client)
    assert sorted(b["id"] for b in receiver.bodies() if b["id"] in jobs) == sorted(jobs)
    lines = survivor.log() + holder.log()
    for job in jobs:
        assert len(re.findall(rf"ocr\.job .*\"id\": \"{job}\"", lines)) == 1, job
        assert client.result(job)["status"] == "SUCCESS"
    assert usage_today(client) - before == 3


def queues_idle(client: OcrClient) -> None:
    """Until no message waits or is held: any second callback would have been sent."""
    store: redis.Redis = client.app.backend.client

    def idle() -> bool:
        waiting = sum(store.llen(k) for pattern in ("ocr*", "{ocr*}:lane:*")
                      for k in store.scan_iter(pattern)
                      if not k.startswith(b"ocr:wake:") and store.type(k) == b"list")
        return not waiting and not held_count(store)

    eventually(idle, 60, "the queues empty and no message held")
