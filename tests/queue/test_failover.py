"""Lose the Redis primary under load, lose nothing: through Sentinel and a moving endpoint.

One module-scoped Redis set (tests/ha.py): a real primary, two real replicas and three
real Sentinels on free loopback ports. Each failover test starts a fleet of its own (a
Procfile worker with the fake engine, the HTTP API, the metrics exporter, Flower; beat
behind Sentinel), sends 50 jobs (images and three-page PDFs, half by submit.py, half by
the API, each with a callback URL), SIGKILLs the primary while they are queued and
running, and then holds: every job ends SUCCESS with its pages' text, each page once,
one ending per job (one `ocr.job` line), one callback per job; the worker parent is the
same process and goes on consuming; 20 jobs sent after the switch succeed too; the API,
the exporter, Flower and the worker follow the new primary within 30 s of the switch,
beat sends its next schedule through it; the old primary rejoins as a replica. The
moving endpoint's fleet knows one fixed address only (a TCP proxy), which the test
points at the promoted replica after the kill, as a managed Redis does.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from PIL import Image

from devkit.receivers import CallbackReceiver
from tasks.errors import ReplicaMissing
from tasks.records.redis_target import RedisTarget
from tasks.settings import Settings
from tasks.state.connection import connect
from tasks.state.keys import job_ended_key, job_key, job_notice_key
from tests.api_server import ApiServer, create_token, session
from tests.ha import MASTER, MovingEndpoint, RedisHA, RedisNode
from tests.harness import (
    FAKE_PLUGINS,
    ROOT,
    ProcfileProcess,
    Worker,
    eventually,
    fake_env,
    free_port,
    kill_all,
    make_client,
    procfile_command,
)
from tests.held_records import held_count, held_items
from tests.image_fixtures import png
from tests.pdf_fixtures import image_pdf

pytestmark = pytest.mark.slow

SWITCH_BOUND = 30.0  # seconds after the switch within which every process follows it
PAGE_SECONDS = "0.25"
PDF_PAGES = 3
MARKER_QUEUE = "ocr-failover-marker"  # a list on the new primary the readers must see
FLOWER_AUTH = ("ops", "failover")
# What the primary executed in its last moments and never replicated (a fetch whose
# reply the worker never read) comes back after the visibility timeout: 60 s here.
LIMITS = {"OCR_VISIBILITY_TIMEOUT": "60", "OCR_SOFT_TIME_LIMIT": "40",
          "OCR_HARD_TIME_LIMIT": "45", "OCR_PAGE_SOFT_TIME_LIMIT": "40",
          "OCR_PAGE_HARD_TIME_LIMIT": "45"}


@dataclass
class Sent:
    """A job the test sent: how, its input's pages' expected shades, its id."""

    job_id: str
    via: str
    shades: list[int]
    after_switch: bool = False


@dataclass
class Fleet:
    """A worker, the HTTP API and the metrics exporter on one REDIS_URL."""

    env: dict[str, str]
    workdir: Path
    receiver: CallbackReceiver
    worker: Worker = field(init=False)
    control: Worker = field(init=False)
    api: ApiServer = field(init=False)
    exporter: ProcfileProcess = field(init=False)
    exporter_port: int = 0
    flower: ProcfileProcess = field(init=False)
    flower_port: int = 0
    with_beat: bool = False
    beat: ProcfileProcess = field(init=False)
    http: requests.Session = field(init=False)
    newcomer: requests.Session = field(init=False)  # a client with nothing queued
    sent: list[Sent] = field(default_factory=list)
    shade: int = 60

    def start(self) -> Fleet:
        self.env = {**self.env,
                    "OCR_CALLBACK_ALLOWED_HOSTS": f"127.0.0.1:{self.receiver.port}"}
        self.worker = Worker(self.workdir / "worker.log", {
            **self.env, **fake_env(), **LIMITS, "OCR_CONCURRENCY": "2",
            "FAKE_PAGE_SECONDS": PAGE_SECONDS, "OCR_PDF_DPI": "72",
            "OCR_DESKEW": "0"})
        self.worker.start()
        self.control = Worker(self.workdir / "control.log", {**self.env, **LIMITS},
                              "control")  # the callback outbox's sender
        self.control.start()
        self.api = ApiServer(self.workdir / "api.log", self.env)
        self.api.start()
        self.exporter_port = free_port()
        self.exporter = ProcfileProcess("metrics", self.workdir / "metrics.log", {
            **self.env, "METRICS_PORT": str(self.exporter_port)})
        self.exporter.spawn()
        self.flower_port = free_port()
        self.flower = ProcfileProcess("flower", self.workdir / "flower.log", {
            **self.env, "FLOWER_PORT": str(self.flower_port),
            "FLOWER_DB": str(self.workdir / "flower.db"),
            "FLOWER_BASIC_AUTH": ":".join(FLOWER_AUTH)}, drop=("FLOWER_",))
        self.flower.spawn()
        if self.with_beat:  # the model audit every minute: a publish after the switch
            self.beat = Beat(self.workdir / "beat.log", {**self.env,
                                                         "OCR_AUDIT_CRONTAB": "* * * * *"})
            self.beat.spawn()
        self.http = session(create_token(self.env["REDIS_URL"], f"ha-{uuid.uuid4().hex[:6]}"))
        self.newcomer = session(create_token(self.env["REDIS_URL"],
                                             f"ha-new-{uuid.uuid4().hex[:6]}"))
        eventually(self.depth, 30, "the metrics exporter")
        eventually(lambda: self.flower_lengths() is not None, 60, "Flower's queue view")
        return self

    def stop(self) -> None:
        """Kill what was started (all at once; a fleet that failed to start too)."""
        kill_all([p for p in (getattr(self, name, None) for name in
                              ("beat", "flower", "exporter", "api", "worker", "control"))
                  if p is not None])

    def inputs(self, count: int) -> list[tuple[str, bytes, list[int]]]:
        """Images and three-page PDFs, each page of a shade of its own (its text)."""
        made = []
        for i in range(count):
            if i % 3 == 2:
                shades = [self.next_shade() for _ in range(PDF_PAGES)]
                pages = [Image.new("L", (120, 90), s) for s in shades]
                made.append((f"doc-{i}.pdf", image_pdf(pages, dpi=72), shades))
            else:
                shade = self.next_shade()
                made.append((f"scan-{i}.png", png(shade, (64, 48)), [shade]))
        return made

    def next_shade(self) -> int:
        self.shade = 60 + (self.shade - 59) % 190  # 60..249: never dark, never blank
        return self.shade

    def submit_py(self, count: int, after_switch: bool = False) -> None:
        """`submit.py --no-wait --json` with a callback URL: prints each job's id.

        A file refused as `transient` (no replica confirmed it in time: while the
        Sentinels re-point the replicas after a switch, or on a starved host) is sent
        again, as its sender is told to, for up to 60 s, as `api_submit` sends a 503
        again. A refused job was withdrawn (it never runs) and is not counted.
        """
        folder = self.workdir / f"inputs-{uuid.uuid4().hex[:6]}"
        folder.mkdir()
        made = self.inputs(count)
        shades_of = {name: shades for name, _, shades in made}
        for name, data, _ in made:
            (folder / name).write_bytes(data)
        left = [name for name, _, _ in made]
        until = time.monotonic() + 60
        while left:
            done = subprocess.run(
                [sys.executable, "submit.py", "--json", "submit", "--no-wait",
                 "--callback-url", self.receiver.url(), *(str(folder / name) for name in left)],
                cwd=ROOT, capture_output=True, text=True, timeout=120,
                env={**os.environ, **self.env, "PYTHONPATH": str(ROOT)})
            records = [json.loads(line) for line in done.stdout.splitlines()]
            assert [r["filename"] for r in records] == left, done.stdout + done.stderr
            refused = []
            for record in records:
                if record["status"] == "PENDING":
                    self.sent.append(Sent(record["id"], "submit.py",
                                          shades_of[record["filename"]], after_switch))
                else:
                    assert record["error"]["code"] == "transient", record
                    refused.append(record["filename"])
            assert (done.returncode == 0) == (not refused), done.stderr
            assert not refused or time.monotonic() < until, done.stderr
            left = refused
            time.sleep(0.5 if left else 0)

    def api_submit(self, count: int, after_switch: bool = False,
                   http: requests.Session | None = None) -> None:
        """POST /v1/jobs with a callback URL; a 503 is sent again (same Idempotency-Key).

        As the fleet's API client (`http`: another client's session instead).
        """
        http = http or self.http
        for name, data, shades in self.inputs(count):
            key = uuid.uuid4().hex

            last: list[str] = []

            def accepted(name: str = name, data: bytes = data, key: str = key,
                         last: list[str] = last) -> requests.Response | None:
                answer = http.post(
                    f"{self.api.url}/v1/jobs", files={"file": (name, data)},
                    data={"callback_url": self.receiver.url()},
                    headers={"Idempotency-Key": key}, timeout=30)
                last[:] = [f"{answer.status_code} {answer.text[:300]}"]
                return answer if answer.status_code == 202 else None

            answer = eventually(accepted, 60, lambda name=name, last=last: f"the API to accept "
                                f"{name} (last answer: {last})", interval=0.5)
            self.sent.append(Sent(answer.json()["id"], "api", shades, after_switch))

    def flower_lengths(self) -> dict[str, int] | None:
        """Flower's own view of the queues' lengths (`/api/queues/length`)."""
        try:
            answer = requests.get(f"http://127.0.0.1:{self.flower_port}/api/queues/length",
                                  auth=FLOWER_AUTH, timeout=5)
        except requests.RequestException:
            return None
        if answer.status_code != 200:
            return None
        return {q["name"]: q["messages"] for q in answer.json()["active_queues"]}

    def depth(self) -> dict[str, Any] | None:
        try:
            answer = requests.get(f"http://127.0.0.1:{self.exporter_port}/v1/queues/ocr/depth",
                                  timeout=5)
        except requests.RequestException:
            return None
        return answer.json() if answer.status_code == 200 else None


class Beat(ProcfileProcess):
    """The Procfile's `beat` line with its schedule file in the test's folder, not var/."""

    def __init__(self, log_path: Path, env: dict[str, str]) -> None:
        super().__init__("beat", log_path, env)
        self.schedule = log_path.with_name("celerybeat-schedule")

    def spawn(self) -> subprocess.Popen[bytes]:
        self.spawned_at = time.monotonic()
        command = procfile_command("beat").replace("var/celerybeat-schedule",
                                                   str(self.schedule))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(["sh", "-c", f"exec {command}"], cwd=ROOT,
                                         env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        return self.proc


def audits_received(worker: Worker) -> int:
    return worker.log().count("Task ocr.audit_models[")


def run_failover(ha: RedisHA, fleet: Fleet, switch: Callable[[RedisNode], None],
                 then: Callable[[Fleet], None] = lambda fleet: None) -> None:
    """50 jobs, the primary SIGKILLed while they run, `switch` to the new one, 20 more.

    `then` runs last, while the fleet still runs.
    """
    try:
        fleet.start()
        client = make_client(fleet.env["REDIS_URL"], **fleet.env)
        parent = fleet.worker.proc.pid if fleet.worker.proc else None
        fleet.submit_py(25)
        fleet.api_submit(25)
        first = [s.job_id for s in fleet.sent]
        eventually(lambda: sum(1 for j in first if client.status(j).final) >= 3, 60,
                   "the first jobs to end")
        running = [j for j in first if not client.status(j).final]
        assert len(running) > 20, "the kill must find jobs queued and running"
        old = ha.kill_primary()
        switch(old)
        switched = time.monotonic()
        audits = audits_received(fleet.worker)
        # Every process follows the new primary within SWITCH_BOUND seconds of the switch.
        # The worker's proof: a job of a client with nothing queued, whose lane has the
        # next turn of the ring. (The fleet's own clients have some 40 jobs queued from
        # before the kill; a job of theirs waits for those in its lane, for as long as
        # the backlog takes, which says nothing of the failover.)
        fleet.api_submit(2, after_switch=True, http=fleet.newcomer)
        assert time.monotonic() - switched < SWITCH_BOUND
        # The primary the Sentinels agree on now: a loaded host can see a second switch.
        eventually(lambda: _reads_new(fleet, ha.agreed_primary()),
                   SWITCH_BOUND - (time.monotonic() - switched), "the exporter and Flower to "
                   "read the new primary")
        eventually(lambda: _received(fleet.worker, fleet.sent[-1].job_id),
                   SWITCH_BOUND - (time.monotonic() - switched) + 5,
                   lambda: "the worker to take a job sent after the switch; where it sat:\n"
                   + _sat(fleet, ha.agreed_primary() or ha.primary, fleet.sent[-1].job_id,
                          switched))
        eventually(lambda: _healthy(fleet), SWITCH_BOUND - (time.monotonic() - switched) + 5,
                   "the worker's readiness probe (scripts/health.py) on the new primary")
        fleet.submit_py(8, after_switch=True)
        fleet.api_submit(10, after_switch=True)
        ha.rejoin(old)
        ids = [s.job_id for s in fleet.sent]
        results = client.wait(ids, timeout=240)
        client.close()
        check_endings(fleet, results, parent)
        if fleet.with_beat:  # beat's next minute goes through the new primary
            eventually(lambda: audits_received(fleet.worker) > audits, 90,
                       lambda: f"beat's audit after the switch: {fleet.beat.log()[-1500:]}")
        then(fleet)
    finally:
        fleet.stop()


def _reads_new(fleet: Fleet, primary: RedisNode | None) -> bool:
    """The exporter's and Flower's figures read the new primary: a list there is counted.

    None (the Sentinels disagree: a switch under way), or a primary demoted meanwhile
    (READONLY): not yet.
    """
    if primary is None:
        return False
    db = Settings.from_env(fleet.env).redis_target.db
    marker = primary.client(db)
    try:
        marker.lpush(MARKER_QUEUE, b"{}", b"{}", b"{}")
    except redis.RedisError:
        return False
    try:
        depth = requests.get(f"http://127.0.0.1:{fleet.exporter_port}/v1/queues/"
                             f"{MARKER_QUEUE}/depth", timeout=5)
        if depth.status_code != 200 or depth.json()["waiting"] != 3:
            return False
        flower = fleet.flower_lengths()
        return flower is not None  # (Flower lists the queues its workers consume)
    except requests.RequestException:
        return False
    finally:
        with contextlib.suppress(redis.RedisError):  # demoted meanwhile: the next look
            marker.delete(MARKER_QUEUE)


def _healthy(fleet: Fleet) -> bool:
    """`python -m scripts.health worker ready`, as the worker's probe runs it."""
    done = subprocess.run([sys.executable, "-m", "scripts.health", "worker", "ready"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, **fleet.env, "WORKER_NAME": fleet.worker.name})
    return done.returncode == 0


def _received(worker: Worker, job_id: str) -> bool:
    return f"[{job_id}] received" in worker.log()


def _sat(fleet: Fleet, primary: RedisNode, job: str, switched: float) -> str:
    """The new primary's broker keys, its clients and the worker's log after the switch."""
    store = primary.client(Settings.from_env(fleet.env).redis_target.db)
    keys: dict[bytes, Any] = {}
    for key in store.scan_iter(count=1000):
        kind = store.type(key)
        if kind == b"list":
            keys[key] = [m[:120] for m in store.lrange(key, 0, -1)]
        elif kind == b"hash":
            keys[key] = {f: v[:80] for f, v in store.hgetall(key).items()}
        elif kind == b"zset":
            keys[key] = store.zrange(key, 0, -1, withscores=True)
        else:
            keys[key] = kind
    clients = store.execute_command("CLIENT LIST")
    log = fleet.worker.log()
    return (f"{time.monotonic() - switched:.1f} s after the switch; job {job}\n"
            f"keys: {keys}\nclients:\n{clients}\nworker log tail:\n{log[-6000:]}")


def _whereabouts(fleet: Fleet, jobs: list[str]) -> str:
    """Where each unfinished job's messages are: lanes, lists, rings, unacked, log lines."""
    store = connect(Settings.from_env(fleet.env).redis_target)
    told = []
    for job in jobs:
        found = [f"{k!r}[{i}]" for k in store.scan_iter(count=1000)
                 if store.type(k) == b"list"
                 for i, m in enumerate(store.lrange(k, 0, -1)) if job.encode() in m]
        held = [repr(tag) for tag, m in held_items(store).items()
                if job.encode() in m]
        # every list's held hash, named in the set of lists or not
        held += [f"{k!r}: {tag!r}" for k in store.scan_iter(match="{*}:held", count=1000)
                 for tag, m in store.hgetall(k).items() if job.encode() in m]
        # its ending: the end claim (its holder, or done), the stored result, the notice
        result = store.get(f"celery-task-meta-{job}")
        ending = {"claim": store.get(job_ended_key(job)),
                  "claim ttl": store.ttl(job_ended_key(job)),
                  "result": result[:160] if result else None,
                  "notice": store.exists(job_notice_key(job)),
                  "record": store.hgetall(job_key(job))}
        lines = [line for line in fleet.worker.log().splitlines() if job in line]
        sent = [line for line in fleet.api.log().splitlines() if job in line]
        told.append(f"{job}: in lists {found}, held {held}, ending {ending}; worker:\n" +
                    "\n".join(lines[-20:]) + "\napi:\n" + "\n".join(sent[-10:]))
    rings = {repr(k): store.lrange(k, 0, -1) if store.type(k) == b"list"
             else store.hgetall(k) for pattern in ("ocr:lanes:*", "{ocr*}:ring*")
             for k in store.scan_iter(pattern)}
    return "\n".join(told) + f"\nrings: {rings}"


def check_endings(fleet: Fleet, results: dict[str, dict[str, Any]], parent: int | None) -> None:
    """Every job SUCCESS with its text, pages once, one ending, one callback; no leftovers."""
    assert len(fleet.sent) == 70
    wrong = {s.job_id: r.get("status") for s in fleet.sent
             if (r := results[s.job_id])["status"] != "SUCCESS"}
    assert wrong == {}, _whereabouts(fleet, list(wrong))
    for sent in fleet.sent:
        pages = results[sent.job_id]["pages"]
        assert [p["number"] for p in pages] == list(range(1, len(sent.shades) + 1))
        for page, shade in zip(pages, sent.shades, strict=True):
            assert page["text"].startswith("fake ") and f"mean={shade}.0" in page["text"], \
                (sent.job_id, page)

    def callbacks_missing() -> list[str]:
        return [s.job_id for s in fleet.sent if not fleet.receiver.by_job().get(s.job_id)]

    eventually(lambda: not callbacks_missing(), 60, lambda: "a callback of every job; "
               f"none for {callbacks_missing()}:\n{_whereabouts(fleet, callbacks_missing())}")
    # A result is stored before its ending's `ocr.job` line is written.
    fleet.worker.job_records([s.job_id for s in fleet.sent], timeout=30)
    time.sleep(2)  # a second ending or delivery would follow the first within moments
    endings = re.findall(r"ocr\.job (\{.*\})$", fleet.worker.log(), re.M)
    ended = [json.loads(line)["id"] for line in endings]
    assert sorted(ended) == sorted(s.job_id for s in fleet.sent)  # each ended once
    by_job = fleet.receiver.by_job()
    doubled = {s.job_id: by_job[s.job_id] for s in fleet.sent if len(by_job[s.job_id]) != 1}
    assert doubled == {}
    assert fleet.worker.proc is not None and fleet.worker.proc.pid == parent
    assert fleet.worker.proc.poll() is None  # the same worker parent, still consuming
    # ... through the project's transport, before and after the switch (kombu's own,
    # which a failed connection used to fall back to, pops before it records)
    connected = re.findall(r"Connected to (\S+?)://", fleet.worker.log())
    assert len(connected) >= 2 and all(t.startswith("tasks.broker.") for t in connected), \
        connected
    store = connect(Settings.from_env(fleet.env).redis_target)

    def unacked() -> str:
        held = [json.loads(record)[0] for v in held_items(store).values()
                if (record := v.split(b"\n", 5)[-1])]
        return "messages left unacknowledged: " + ", ".join(
            f"{m['headers']['task']}[{m['headers']['id']}]" for m in held)

    eventually(lambda: held_count(store) == 0, 30, unacked)


def test_a_job_no_replica_confirms_is_refused(ha: RedisHA, tmp_path: Path) -> None:
    """Replicas silent (frozen): submit.py, OcrClient and the API say so; nothing lost.

    The job that was sent is withdrawn (it would end CANCELLED unread); its sender is
    told to send it again: a retryable `transient`, the API's 503.
    """
    env = {**ha.env(3), "OCR_REDIS_REPLICA_TIMEOUT": "0.3"}
    api = ApiServer(tmp_path / "api.log", env).start()
    http = session(create_token(env["REDIS_URL"], "frozen"))
    client = make_client(env["REDIS_URL"], **env)
    replicas = [node for node in ha.nodes if node is not ha.primary]
    for node in replicas:
        assert node.proc is not None
        os.kill(node.proc.pid, signal.SIGSTOP)
    try:
        with pytest.raises(ReplicaMissing) as refused:
            client.submit(png(90))
        assert refused.value.code == "transient" and refused.value.retryable
        (tmp_path / "a.png").write_bytes(png(91))
        done = subprocess.run([sys.executable, "submit.py", "--no-wait", str(tmp_path / "a.png")],
                              cwd=ROOT, capture_output=True, text=True, timeout=60,
                              env={**os.environ, **env, "PYTHONPATH": str(ROOT)})
        assert done.returncode != 0 and "transient" in done.stderr + done.stdout
        assert "replica" in done.stderr + done.stdout
        answer = http.post(f"{api.url}/v1/jobs", files={"file": ("a.png", png(92))},
                           timeout=30)
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["code"] == "transient"
        assert answer.json()["error"]["retryable"] is True
        node = shutil.which("node")
        if node is not None:  # the Node client waits for replicas too, when told to
            done = subprocess.run([node, str(ROOT / "clients" / "node" / "ocr_client.js"),
                                   "--no-wait", "--redis", ha.primary.url(3),
                                   str(tmp_path / "a.png")], capture_output=True, text=True,
                                  timeout=60, env={"PATH": os.environ["PATH"],
                                                   "OCR_REDIS_MIN_REPLICAS": "1",
                                                   "OCR_REDIS_REPLICA_TIMEOUT": "0.3"})
            assert done.returncode != 0 and "transient" in done.stderr, done.stderr
            assert "reached 0 of the 1 Redis replica(s)" in done.stderr
        store = ha.primary.client(3)
        sent = [k for k in store.scan_iter("ocr:job:*") if k.count(b":") == 2]
        assert sent and all(store.hget(k, "cancelled") == b"1" for k in sent)  # withdrawn
    finally:
        for node in replicas:
            assert node.proc is not None
            os.kill(node.proc.pid, signal.SIGCONT)
        client.close()
        api.stop()
    ha.wait_replicas(len(replicas))
    client = make_client(env["REDIS_URL"], **env)
    assert client.submit(png(93))  # replicas back: accepted
    client.close()


def test_sentinel_failover_loses_no_job(ha: RedisHA, receiver: CallbackReceiver,
                                        tmp_path: Path) -> None:
    """REDIS_URL=sentinel://...: the fleet asks the Sentinels, and follows their switch."""
    fleet = Fleet(ha.env(1), tmp_path, receiver, with_beat=True)
    run_failover(ha, fleet, lambda old: ha.wait_promoted(old), then=plugin_reads_a_page)


def plugin_reads_a_page(fleet: Fleet) -> None:
    """The OCRmyPDF plugin's broker mode takes the same sentinel:// URL (OCR_QUEUE_URL)."""
    sys.path.insert(0, str(ROOT / "integrations" / "ocrmypdf"))
    try:  # the plugin's broker side imports no OCRmyPDF (its own venv has that)
        from ocrmypdf_ocr_queue.broker import Broker
        from ocrmypdf_ocr_queue.pages import PageJob
    finally:
        sys.path.remove(str(ROOT / "integrations" / "ocrmypdf"))
    broker = Broker(fleet.env["REDIS_URL"])
    try:
        broker.check(None)
        page = fleet.workdir / "page.png"
        page.write_bytes(png(123, (64, 48)))
        read = broker.read(page, PageJob(output="text", lang="auto", engine=None, deadline=60))
        assert read.text == "fake 64x48 mean=123.0"
    finally:
        broker.close()


@pytest.mark.long  # the second failover under load: test_sentinel_failover_loses_no_job's
def test_moving_endpoint_failover_loses_no_job(ha: RedisHA, receiver: CallbackReceiver,
                                               tmp_path: Path) -> None:
    """REDIS_URL is one fixed address (a managed Redis's endpoint) that moves on failover.

    The proxy keeps forwarding to the dead primary's port until the replica is
    promoted, then is pointed at it: what the primary had not replicated is lost. It
    follows the primary the Sentinels agree on, as a managed endpoint does, so a second
    switch on a loaded machine (a live primary taken for dead) moves it too.
    """
    endpoint = MovingEndpoint(ha.primary.port)
    endpoint.follow(ha)
    try:
        env = {"REDIS_URL": endpoint.url(2), "OCR_REDIS_MIN_REPLICAS": "1"}

        def switch(old: RedisNode) -> None:
            ha.wait_promoted(old)

            def followed() -> bool:
                # the primary the Sentinels agree on now: a second switch on a loaded
                # host moves the endpoint again
                node = ha.agreed_primary()
                if node is None or node.port == old.port or endpoint.upstream != node.port:
                    return False
                ha.primary = node
                return True

            eventually(followed, 10, lambda: "the endpoint to point at the promoted replica "
                       f"(it points at {endpoint.upstream}; the Sentinels name "
                       f"{ha.named_primaries()}, the old primary {old.port})")

        run_failover(ha, Fleet(env, tmp_path, receiver), switch)
    finally:
        endpoint.close()


def test_urls_name_the_database_on_every_sentinel() -> None:
    """Kombu and Celery's backend read the database from the first Sentinel URL only."""
    from tasks.state.connection import celery_url

    target = Settings.from_env({"REDIS_URL": "sentinel://:pw@s1:26379;sentinel://s2/4",
                                "OCR_REDIS_SENTINEL_MASTER": MASTER}).redis_target
    assert celery_url(target) == "sentinel://:pw@s1:26379/4;sentinel://:pw@s2:26379/4"
    assert celery_url(RedisTarget("redis://h:1/2")) == "redis://h:1/2"


def test_a_primary_killed_during_an_ending_loses_no_callback(
        ha: RedisHA, receiver: CallbackReceiver, tmp_path: Path) -> None:
    """The primary SIGKILLed while a job's ending is under way: it ends once, called back once.

    The OCR child has stored the job's result and its callbacks in the claim's step and
    stalls there 2 s (tests/slow_ending.py, `stored`), its claim naming it. The primary
    is killed at once, and the child goes on while the Sentinels promote a replica
    (they wait 1 s to call it down, then elect): its ending and
    callbacks on the new primary (replicated), or given back and ended again there (lost
    with the old one). The control worker's sender follows the switch and sends each
    callback once.
    """
    env = {**ha.env(3), **fake_env(), **LIMITS,
           "OCR_ENGINE": "slow-ending", "OCR_ENGINE_PLUGINS":
           f"{FAKE_PLUGINS},slow-ending=tests.slow_ending:SlowEndingEngine",
           "OCR_CALLBACK_ALLOWED_HOSTS": f"127.0.0.1:{receiver.port}",
           "FAKE_ENDING_STALL": "stored", "FAKE_ENDING_SECONDS": "2"}
    worker = Worker(tmp_path / "worker.log", env)
    control = Worker(tmp_path / "control.log", env, "control")
    client = make_client(env["REDIS_URL"], **env)
    try:
        worker.start()
        control.start()
        job = client.submit(png(97), filename="failover.png", callback_task="billing.ocr_done",
                            callback_queue="failover-callbacks",
                            callback_url=receiver.url("/failover"))
        store = connect(Settings.from_env(env).redis_target)
        # stored, the claim still naming its holder: the ending is under way
        eventually(lambda: b":" in (store.get(job_ended_key(job)) or b""), 60,
                   lambda: f"the ending under way: {worker.log()[-2000:]}")
        old = ha.kill_primary()
        ha.wait_promoted(old)
        assert client.wait([job], timeout=120)[job]["status"] == "SUCCESS"
        eventually(lambda: receiver.by_job().get(job), 90,
                   lambda: f"the callback: {control.log()[-3000:]}")
        with client.app.connection() as conn:
            queue = conn.SimpleQueue("failover-callbacks")
            message = queue.get(timeout=60)
            assert message.decode()[0][0]["id"] == job
            message.ack()
            with pytest.raises(queue.Empty):
                queue.get(timeout=3)  # once
            queue.close()
        ha.rejoin(old)
        assert receiver.by_job()[job] == [f"{job}.SUCCESS"]  # once
        assert len(re.findall(rf"ocr\.job .*\"id\": \"{job}\"", worker.log())) == 1
        eventually(lambda: f"callback {job}.SUCCESS.http sent by control@" in control.log(),
                   10, lambda: control.log()[-3000:])
    finally:
        client.close()
        kill_all([worker, control])
