"""A rolling upgrade: the previous release's worker and client beside this tree's, on one Redis.

The previous release (devkit/previous_release.py: its commit, its tree written out from
git) runs its own Procfile `worker:` line from its own tree, and its own `submit.py`
sends jobs; this tree's worker and `OcrClient` run beside them, with the same venv, on
one Redis database. The engine is the gated fake (tests/gated_engine.py, each
release's own copy: a page is held until its worker's gate opens), so that jobs are
running on the old worker and queued behind it when the new worker comes, and the
old worker holds some when it goes:

- the old worker takes a job of the new client; the old client's image and 2-page PDF
  fill the old worker or wait; the new worker (gate closed) takes what waits, and the
  new client queues more behind them;
- the old worker is stopped: warm (SIGTERM, then its gate opens: it finishes what it
  runs and gives back what it had reserved), or killed with its pages held (SIGKILL of
  its process group: the new worker's sweep of dead holders gives them back);
- every job of both clients ends SUCCESS exactly once: one result, one `ocr.job` line
  across both workers' logs, each page counted once in the day's usage, and nothing
  left waiting or held in the queues (the broker's own depth figure).

Both releases read and write the broker's key layout 3: the old worker stores it on the
new Redis, and the new one runs on it. A worker of the release before, started after one
of this release (a rollback, a pod rescheduled), runs on it too.

The warm stop runs in `make test` (about 60 s on two busy cores, most of it the two
workers' start-up); the kill, a minute more, is its long form (`make test-long`).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest
import redis

from devkit.previous_release import COMMIT, ReleaseMissing, materialize
from tasks.broker import stored_layout, unacked
from tasks.broker.layout import LAYOUT_KEY, LAYOUT_VERSION
from tasks.client import OcrClient
from tasks.metrics.queue_depth import QueueDepth
from tasks.settings import Settings
from tasks.state.usage import day_key, today
from tests.harness import (
    FAKE_PLUGINS,
    FAST_PAGES,
    ROOT,
    VENV_BIN,
    Worker,
    eventually,
    kill_all,
)
from tests.held_records import held_items
from tests.image_fixtures import png
from tests.pdf_fixtures import image_pdf, plain_pages

pytestmark = pytest.mark.slow

# Both releases' workers: the gated fake engine of their own tree, two pages at once,
# the sweep's window short (the same on every host) so that a killed worker's pages
# come back within the test.
SETTINGS = {"OCR_ENGINE": "gated", "OCR_CACHE_RESULTS": "0", "OCR_CONCURRENCY": "2",
            "OCR_ENGINE_PLUGINS": f"{FAKE_PLUGINS},gated=tests.gated_engine:GatedEngine",
            "OCR_WORKER_LIVENESS_SECONDS": "12", **FAST_PAGES}
WAIT = 150  # a bound for a loaded machine
# This release's worker with escalation on for every job (the fleet's default engine): a
# page escalates below its threshold, and the fake reads every page sure (confidence 100).
ESCALATING = {"OCR_ESCALATE_ENGINE": "vlm-api"}


@pytest.fixture(scope="module")
def old_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The previous release's tree, from this checkout's git history."""
    try:
        return materialize(tmp_path_factory.mktemp("previous-release"))
    except ReleaseMissing as error:
        pytest.fail(str(error))


class Fleet:
    """One test's Redis database, its two clients, its workers and their gates."""

    def __init__(self, redis_url: str, old_tree: Path, tmp_path: Path) -> None:
        self.redis_url = redis_url
        self.old_tree = old_tree
        self.tmp_path = tmp_path
        self.client = OcrClient(Settings.from_env({"REDIS_URL": redis_url}),
                                client="new-release")
        self.store: redis.Redis = self.client.app.backend.client
        self.workers: list[Worker] = []

    def gate(self, name: str) -> Path:
        path = self.tmp_path / f"gate-{name}"
        path.mkdir(exist_ok=True)
        return path

    def started(self, name: str) -> int:
        return len(list(self.gate(name).glob("started-*")))

    def start_workers(self, new: dict[str, str] | None = None) -> tuple[Worker, Worker]:
        """The old release's worker, then this tree's once it runs: (old, new).

        As in an upgrade: the old fleet runs on its Redis (its layout stored) when the
        new release's first worker comes. `new`: settings of this tree's worker alone.
        """
        made = []
        for name, root in (("old", self.old_tree), ("new", ROOT)):
            env = {"REDIS_URL": self.redis_url, **SETTINGS,
                   "FAKE_GATE_DIR": str(self.gate(name)),
                   **((new or {}) if name == "new" else {})}
            worker = Worker(self.tmp_path / f"{name}.log", env, root=root)
            self.workers.append(worker)
            worker.spawn()
            worker.wait_until(partial(ready, worker), 90, "ready")
            made.append(worker)
        return made[0], made[1]

    def old_submit(self, *files: Path) -> list[str]:
        """The previous release's `submit.py --no-wait`: the ids of the jobs it sent."""
        sent = subprocess.run(
            [str(VENV_BIN / "python"), "submit.py", "--json", "--client", "old-release",
             "--redis-url", self.redis_url, "--no-wait", *map(str, files)],
            cwd=self.old_tree, capture_output=True, text=True, timeout=120,
            env={"PATH": f"{VENV_BIN}:/usr/bin:/bin", "HOME": str(self.tmp_path)})
        assert sent.returncode == 0, sent.stdout + sent.stderr
        return [json.loads(line)["id"] for line in sent.stdout.splitlines()]

    def usage(self) -> int:
        return sum(int(v) for v in self.store.hgetall(day_key(today())).values())

    def logs(self) -> str:
        return "".join(w.log() for w in self.workers)

    def close(self) -> None:
        kill_all(self.workers)
        self.client.close()


@pytest.fixture
def fleet(own_redis_url: str, old_tree: Path, tmp_path: Path) -> Iterator[Fleet]:
    started = Fleet(own_redis_url, old_tree, tmp_path)
    yield started
    started.close()


def side_by_side(fleet: Fleet) -> tuple[Worker, Worker, list[str]]:
    """Both releases' workers and clients with jobs running and queued: (old, new, jobs).

    The new worker is paused (SIGSTOP) while the old one takes the first jobs.
    """
    old, new = fleet.start_workers()
    assert str(fleet.old_tree) == old.env["PYTHONPATH"]
    pause(new, signal.SIGSTOP)
    try:
        first = fleet.client.submit(png(190), filename="new-1.png")
        eventually(lambda: fleet.started("old") >= 1, 60,
                   lambda: f"the old worker to run the new client's job: {old.log()[-2000:]}")
        image, pdf = fleet.tmp_path / "old-1.png", fleet.tmp_path / "old-2.pdf"
        image.write_bytes(png(180))
        pdf.write_bytes(image_pdf(plain_pages(2)))
        old_jobs = fleet.old_submit(image, pdf)
        assert len(old_jobs) == 2
        eventually(lambda: fleet.started("old") >= 2, 60,
                   lambda: f"the old worker to run two pages: {old.log()[-2000:]}")
    finally:
        pause(new, signal.SIGCONT)
    eventually(lambda: fleet.started("new") >= 1, 60,
               lambda: f"the new worker to run what the old client queued: {new.log()[-2000:]}")
    later = [fleet.client.submit(png(170 + i), filename=f"new-{i}.png") for i in (2, 3)]
    return old, new, [first, *old_jobs, *later]


def ready(worker: Worker) -> bool:
    return bool(re.search(r"@\S+ ready\.", worker.log()))


def pause(worker: Worker, sig: signal.Signals) -> None:
    """`sig` (SIGSTOP or SIGCONT) to the worker's parent and children at once."""
    assert worker.proc is not None
    os.killpg(worker.proc.pid, sig)


def ended_once(fleet: Fleet, jobs: list[str], pages: int, before: int) -> None:
    """Every job SUCCESS with one `ocr.job` line, each page counted once, queues empty."""
    results = fleet.client.wait(jobs, timeout=WAIT)
    assert {j: results[j]["status"] for j in jobs} == dict.fromkeys(jobs, "SUCCESS"), results
    for job in jobs:
        assert all(p["text"].startswith("fake") for p in results[job]["pages"]), results[job]
    eventually(lambda: all(re.search(rf"ocr\.job .*\"id\": \"{j}\"", fleet.logs())
                           for j in jobs), 30, "an ocr.job line for every job")
    lines = fleet.logs()
    doubled = {j: n for j in jobs
               if (n := len(re.findall(rf"ocr\.job .*\"id\": \"{j}\"", lines))) != 1}
    assert not doubled, f"jobs not ended exactly once: {doubled}"
    eventually(lambda: queues_idle(fleet.store), 60, "the queues empty and no message held")
    assert fleet.usage() - before == pages


def queues_idle(store: redis.Redis) -> bool:
    """No message waits or is held on the workers' queues (the broker's own depth figure)."""
    return QueueDepth(store, {}).depth(("ocr", "ocr-control")).value == 0


def test_the_previous_release_is_another_tree(old_tree: Path) -> None:
    """The old tree is the recorded commit's, not this checkout copied."""
    assert (old_tree / "Procfile").is_file() and (old_tree / "submit.py").is_file()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                          capture_output=True, text=True, check=True).stdout.strip()
    assert head != COMMIT


def test_a_warm_stop_of_the_old_worker_loses_and_doubles_nothing(fleet: Fleet) -> None:
    before = fleet.usage()
    old, new, jobs = side_by_side(fleet)
    # the old worker stored the layout both releases write
    assert fleet.store.get(LAYOUT_KEY) == str(LAYOUT_VERSION).encode()
    assert old.proc is not None
    old.proc.send_signal(signal.SIGTERM)  # warm: it finishes what it runs
    old.wait_until(lambda: "warm shutdown" in old.log().lower(), 60, "stopping warm")
    (fleet.gate("old") / "open").touch()
    assert old.proc.wait(WAIT) == 0, old.log()[-3000:]
    (fleet.gate("new") / "open").touch()
    ended_once(fleet, jobs, pages=6, before=before)
    late = fleet.client.submit(png(160), filename="new-late.png")
    assert fleet.client.wait([late], timeout=WAIT)[late]["status"] == "SUCCESS"


@pytest.mark.long  # the warm stop above is the short form (`make test`)
def test_a_killed_old_worker_loses_and_doubles_nothing(fleet: Fleet) -> None:
    before = fleet.usage()
    old, new, jobs = side_by_side(fleet)
    # both workers hold messages, each in the hash of the list it took them from
    assert len(holders(fleet.store)) == 2, holders(fleet.store)
    old.kill()  # parent and children at once, its pages held
    (fleet.gate("new") / "open").touch()
    ended_once(fleet, jobs, pages=6, before=before)
    assert "put back in their queues" in new.log()


def pages_change_hands(fleet: Fleet, splits: str, submit: Callable[[Path], str],
                       new: dict[str, str] | None = None) -> None:
    """A 4-page scanned PDF split by one release's worker, its pages read by the other's.

    The reader is paused while the splitter takes the job and starts two pages (held at
    its gate); the splitter is then stopped warm (it gives back the pages it had not
    started), and the reader takes the rest. `new`: settings of this release's worker.
    """
    before = fleet.usage()
    old, new_worker = fleet.start_workers(new)
    splitter, reader = (old, new_worker) if splits == "old" else (new_worker, old)
    reads = "new" if splits == "old" else "old"
    pdf = fleet.tmp_path / "split.pdf"
    pdf.write_bytes(image_pdf(plain_pages(4)))
    pause(reader, signal.SIGSTOP)
    try:
        job = submit(pdf)
        eventually(lambda: fleet.started(splits) >= 2, 60,
                   lambda: f"the splitter to start two pages: {splitter.log()[-2000:]}")
    finally:
        pause(reader, signal.SIGCONT)
    assert splitter.proc is not None
    splitter.proc.send_signal(signal.SIGTERM)  # warm: it gives back what it had not started
    (fleet.gate(reads) / "open").touch()
    eventually(lambda: fleet.started(reads) >= 1, 60,
               lambda: f"the other release to read a page: {reader.log()[-2000:]}")
    (fleet.gate(splits) / "open").touch()
    assert splitter.proc.wait(WAIT) == 0, splitter.log()[-3000:]
    ended_once(fleet, [job], pages=4, before=before)


def test_the_old_worker_reads_the_pages_this_release_sends(fleet: Fleet) -> None:
    """The page messages of this release (their descriptor in a header) on the old worker.

    The job escalates (this worker's OCR_ESCALATE_ENGINE): the old worker reads the
    document's meta, which holds none of the escalation's fields.
    """
    pages_change_hands(fleet, "new", lambda pdf: fleet.client.submit(
        pdf.read_bytes(), filename=pdf.name), new=ESCALATING)


@pytest.mark.long  # the direction above is the short form (`make test`)
def test_this_worker_reads_the_pages_the_old_release_sends(fleet: Fleet) -> None:
    """The previous release's page messages (no descriptor): read from the meta here."""
    pages_change_hands(fleet, "old", lambda pdf: fleet.old_submit(pdf)[0])


def holders(store: redis.Redis) -> set[str]:
    """The holders of the messages held now (`<node>|<pid>`)."""
    found = (unacked.parse(value) for value in held_items(store).values())
    return {record.holder for record in found if record is not None and record.holder}


def test_the_layout_version_is_stored_once_and_a_newer_one_refused(own_redis_url: str) -> None:
    """A new Redis gets this release's version, kept; a newer one is refused."""
    store = redis.Redis.from_url(own_redis_url)
    assert store.get(LAYOUT_KEY) is None
    assert stored_layout.settle(store) == LAYOUT_VERSION
    assert store.get(LAYOUT_KEY) == str(LAYOUT_VERSION).encode()
    assert stored_layout.settle(store) == LAYOUT_VERSION  # kept, not written again
    for stored in (LAYOUT_VERSION + 1, "v2"):
        store.set(LAYOUT_KEY, stored)
        with pytest.raises(stored_layout.LayoutNewer, match="broker_layout_newer"):
            stored_layout.settle(store)
        assert store.get(LAYOUT_KEY) == str(stored).encode()  # never overwritten


def test_a_worker_refuses_a_newer_key_layout(own_redis_url: str, tmp_path: Path) -> None:
    """A worker of this release on a Redis a newer release laid out stops (exit 2), unfed."""
    store = redis.Redis.from_url(own_redis_url)
    store.set(LAYOUT_KEY, LAYOUT_VERSION + 1)
    worker = Worker(tmp_path / "worker.log", {"REDIS_URL": own_redis_url, **SETTINGS})
    try:
        process = worker.spawn()
        assert process.wait(90) == 2, worker.log()[-3000:]
    finally:
        kill_all([worker])
    assert f"broker_layout_newer: the broker's key layout is version {LAYOUT_VERSION + 1}" \
        in worker.log()
    assert not re.search(r"@\S+ ready\.", worker.log())


def test_the_previous_release_starts_after_this_one(own_redis_url: str,
                                                    old_tree: Path) -> None:
    """A worker of the release before, started after one of this release, is not refused.

    Its start's check (its own tasks/broker/stored_layout.py, run from its tree) reads
    the version this release stored: its own (a rollback, a pod rescheduled).
    """
    store = redis.Redis.from_url(own_redis_url)
    assert stored_layout.settle(store) == LAYOUT_VERSION
    settled = subprocess.run(
        [str(VENV_BIN / "python"), "-c", "import sys, redis; from tasks.broker import "
         "stored_layout; print(stored_layout.settle(redis.Redis.from_url(sys.argv[1])))",
         own_redis_url], cwd=old_tree, capture_output=True, text=True, timeout=60,
        env={"PATH": f"{VENV_BIN}:/usr/bin:/bin", "PYTHONPATH": str(old_tree)})
    assert settled.returncode == 0 and settled.stdout.strip() == str(LAYOUT_VERSION), \
        settled.stdout + settled.stderr
