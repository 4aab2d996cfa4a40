"""The chaos soak: a real fleet under mixed load and random faults, then a checker.

`python -m bench.chaos --minutes 38` (the long form: 32 minutes of load, at least
2,000 jobs; `--minutes 10` a medium one) runs the fleet of bench/chaos_fleet.py on this
machine, sends a mixed load through both API processes at random (uploads and
documents by URL; images, multi-page image PDFs and a born-digital PDF; text, markdown,
pdf and hOCR outputs; the tesseract and the vlm-api engine; priorities, cancels and
deadlines; a signed callback for every job; a fifth of the jobs followed by their
Server-Sent Events on either API process, opened again after a cut) and injects
faults at random while it runs: SIGKILL a pool child, SIGKILL a worker parent (the
host's other processes then die with it, and it starts again), SIGKILL a whole worker
host at once (parent and children: a preempted node; its jobs go to another worker, or
to the host started again later, through the sweep of dead holders), SIGTERM a worker and
start it again (a scale-down), restart the Redis primary (append-only file), SIGKILL
the Redis primary (the Sentinels promote a replica; the old one rejoins as a replica),
restart an API process, stop the inference server for a while, and make the webhook
receiver fail for a while. `--broker rabbitmq` runs the same fleet on a three-node
RabbitMQ cluster of quorum queues, and adds a fault: SIGKILL the node that leads the
busiest queue, start it again later. When the load stops the fleet is healed and every
job is awaited (by its callback, then its status), and bench/chaos_checker.py holds each
promise over the
recorded history. The short form (`run(minutes=1.5)`, tests/queue/test_chaos.py in
`make test`) injects each kind of fault at least once.

Runs in its own process, which starts every part of the fleet as subprocesses (the
direct reads load tesseract here first; no MLX anywhere, so forking stays safe).
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import queue
import random
import re
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import requests
from PIL import Image, ImageDraw, ImageFont

from bench.chaos_checker import check
from bench.chaos_fleet import BUCKET, READ_ENV, Fleet
from bench.chaos_history import Fault, Input, Job
from bench.common import CORPUS, RESULTS, Direct, machine_info
from devkit.inference_server import SimulatedInferenceServer
from devkit.pdf_fixtures import image_pdf

WORDS = ("invoice", "ledger", "harbour", "quartz", "meadow", "lantern", "ribbon",
         "saddle", "timber", "violet", "walnut", "yonder", "zephyr", "amber", "bridge",
         "candle", "dolphin", "ember", "falcon", "garnet", "hollow", "island", "jasper",
         "kettle", "lemon", "marble", "nectar", "orchid", "pepper", "quiver", "river",
         "silver", "thistle", "umber", "velvet", "willow")
OUTPUTS = ("text", "text", "markdown", "pdf", "hocr")  # a VLM's words placed on boxes too
WATCHED = 0.2  # the share of jobs followed by their events
PRIORITIES = ("interactive", "normal", "normal", "batch")
FAULTS = ("kill_child", "kill_parent", "kill_host", "term_worker", "restart_redis",
          "failover_redis", "restart_api", "inference_down", "webhook_failing")
# On a RabbitMQ fleet (`--broker rabbitmq`) too: SIGKILL the node that leads the busiest
# job queue, start it again after a while (it rejoins its cluster).
RABBIT_FAULTS = ("stop_rabbit_leader",)
FINAL = ("SUCCESS", "PARTIAL", "FAILURE", "CANCELLED")


def text_image(rng: random.Random, lines: int = 3) -> tuple[Image.Image, str]:
    """A page of printed words (what tesseract reads near perfectly)."""
    text = [" ".join(rng.choice(WORDS) for _ in range(5)) for _ in range(lines)]
    image = Image.new("L", (1100, 70 * lines + 40), 255)
    font = ImageFont.load_default(size=34)
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(text):
        draw.text((30, 25 + 70 * i), line, fill=0, font=font)
    return image, "\n".join(text)


def make_inputs(seed: int) -> list[tuple[str, bytes, str]]:
    rng = random.Random(seed)
    made: list[tuple[str, bytes, str]] = []
    for i in range(4):
        image, _ = text_image(rng)
        out = io.BytesIO()
        image.save(out, "PNG")
        made.append((f"words-{i}.png", out.getvalue(), "image"))
    for i in range(2):
        pages = [text_image(rng)[0] for _ in range(3)]
        made.append((f"pages-{i}.pdf", image_pdf(pages, dpi=150), "pdf"))
    made.append(("dig_multicolumn_3p.pdf", (CORPUS / "dig_multicolumn_3p.pdf").read_bytes(),
                 "digital"))
    return made


def direct_reads(made: list[tuple[str, bytes, str]]) -> list[Input]:
    """Each input read once in this process by the worker's engine and pipeline."""
    direct = Direct(READ_ENV)
    try:
        inputs = []
        for name, data, kind in made:
            result = direct.run(data, name)
            inputs.append(Input(name, data, kind, [p.get("text", "") for p in result["pages"]]))
        return inputs
    finally:
        direct.close()


class Soak:
    """The load, the faults and the history of one run."""

    def __init__(self, fleet: Fleet, inputs: list[Input], seed: int, minutes: float) -> None:
        self.fleet = fleet
        self.inputs = {i.name: i for i in inputs}
        self.rng = random.Random(seed)
        self.minutes = minutes
        self.jobs: list[Job] = []
        self.faults: list[Fault] = []
        self.rss: dict[str, float] = {}  # the largest RSS seen per worker process
        self.deaths: list[Fault] = []  # a worker that exited when no fault aimed at it
        self.faulting: set[str] = set()  # hosts a fault is stopping or starting now
        self.lock = threading.Lock()
        self.loading = threading.Event()
        self.stopped = threading.Event()
        self.http = threading.local()
        self.started = time.monotonic()
        self.kinds = FAULTS + (RABBIT_FAULTS if fleet.rabbit is not None else ())
        self.to_watch: queue.Queue[Job] = queue.Queue()
        self.watching_until = float("inf")  # set when the drain ends

    # --- clients --------------------------------------------------------------------

    def session(self) -> requests.Session:
        http: requests.Session | None = getattr(self.http, "session", None)
        if http is None:
            http = self.http.session = requests.Session()
            http.headers["Authorization"] = f"Bearer {self.fleet.token}"
        return http

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response | None:
        """One request to an API process chosen at random; None when none answered."""
        api = self.rng.choice(self.fleet.apis)
        try:
            return self.session().request(method, f"{api.url}{path}", timeout=30, **kwargs)
        except requests.RequestException:
            return None

    def new_job(self) -> Job:
        name = self.rng.choice(sorted(self.inputs))
        kind = self.inputs[name].kind
        engine = "vlm-api" if kind != "digital" and self.rng.random() < 0.3 else None
        roll = self.rng.random()
        return Job(key=uuid.uuid4().hex, input=name,
                   transport="url" if self.rng.random() < 0.3 else "upload",
                   output=self.rng.choice(OUTPUTS),
                   engine=engine,
                   priority=self.rng.choice(PRIORITIES),
                   deadline=time.time() + self.rng.uniform(2, 8) if roll < 0.05 else None,
                   cancel_at=time.monotonic() + self.rng.uniform(0, 4)
                   if 0.05 <= roll < 0.12 else None)

    def submit(self, job: Job, give_up: float) -> None:
        """Send the job until an API process accepts it (same Idempotency-Key each try)."""
        fields: dict[str, Any] = {"output": job.output, "priority": job.priority,
                                  "callback_url": self.fleet.receiver.url(
                                      self.fleet.client_name)}
        if job.engine:
            fields["engine"] = job.engine
        if job.deadline:
            fields["deadline"] = job.deadline
        headers = {"Idempotency-Key": job.key}
        while True:
            job.tries += 1
            if job.transport == "url":
                answer = self.call("POST", "/v1/jobs", headers=headers, json={
                    **fields, "url": f"s3://{BUCKET}/{job.input}"})
            else:
                answer = self.call("POST", "/v1/jobs", headers=headers, data={
                    k: str(v) for k, v in fields.items()},
                    files={"file": (job.input, self.inputs[job.input].data)})
            if answer is not None and answer.status_code == 202:
                job.job_id = answer.json()["id"]
                job.submitted = time.monotonic()
                return
            if answer is not None and answer.status_code < 500 and answer.status_code != 429:
                job.refused = f"{answer.status_code} {answer.text[:200]}"
                return
            if time.monotonic() > give_up:
                job.refused = ("no answer" if answer is None else
                               f"{answer.status_code} {answer.text[:200]}")
                return
            time.sleep(1)  # an API process or Redis restarting: try again, another one

    def submitter(self, rate: float, most_open: int) -> None:
        while self.loading.is_set():
            with self.lock:
                open_jobs = sum(1 for j in self.jobs if j.job_id and j.final is None)
            if open_jobs >= most_open:
                time.sleep(0.5)
                continue
            job = self.new_job()
            self.submit(job, time.monotonic() + 120)
            with self.lock:
                self.jobs.append(job)
            if job.job_id and self.rng.random() < WATCHED:
                job.watched = True
                self.to_watch.put(job)
            time.sleep(self.rng.expovariate(rate))

    # --- following the jobs ----------------------------------------------------------

    def tracker(self) -> None:
        """Cancels when due; a job's end is read once its callback came, or on a sweep."""
        last_sweep = 0.0
        while not self.stopped.is_set():
            now = time.monotonic()
            called = {d.job_id for d in self.fleet.receiver.deliveries if d.answered < 300}
            sweep = now - last_sweep > 10
            last_sweep = now if sweep else last_sweep
            with self.lock:
                open_jobs = [j for j in self.jobs if j.job_id and j.final is None]
            for job in open_jobs:
                if job.cancel_at is not None and job.cancel_answer is None and \
                        now >= job.cancel_at:
                    answer = self.call("DELETE", f"/v1/jobs/{job.job_id}")
                    if answer is not None and answer.status_code < 300:
                        job.cancel_answer = answer.status_code
                if job.job_id in called or sweep:
                    self.read_end(job)
            self.stopped.wait(0.5)

    def watcher(self) -> None:
        """Follow jobs by their events until each one's `end` (a cut stream reopened)."""
        while time.monotonic() < self.watching_until:
            try:
                job = self.to_watch.get(timeout=0.5)
            except queue.Empty:
                if self.stopped.is_set():
                    return
                continue
            while job.event_end is None and time.monotonic() < self.watching_until:
                job.event_streams += 1
                job.event_end = self.read_events(job)
                if job.event_end is None:
                    time.sleep(0.5)

    def read_events(self, job: Job) -> str | None:
        """The status of the job's `end` event on one stream, or None when it was cut."""
        api = self.rng.choice(self.fleet.apis)
        try:
            with self.session().get(f"{api.url}/v1/jobs/{job.job_id}/events",
                                    stream=True, timeout=(5, 40)) as answer:
                if answer.status_code != 200:
                    return None
                event = None
                for raw in answer.iter_lines():  # a keepalive comes every few seconds
                    if time.monotonic() > self.watching_until:
                        return None  # the drain is over: a job never ended (checked)
                    line = raw.decode("utf-8", "replace")
                    if line.startswith("event: "):
                        event = line[len("event: "):]
                    elif line.startswith("data: ") and event == "end":
                        return str(json.loads(line[len("data: "):])["status"])
        except (requests.RequestException, ValueError):
            return None
        return None

    def read_end(self, job: Job) -> None:
        answer = self.call("GET", f"/v1/jobs/{job.job_id}")
        if answer is None or answer.status_code != 200:
            return
        status = answer.json()
        if status["status"] not in FINAL:
            return
        if status["status"] in ("SUCCESS", "PARTIAL"):
            result = self.call("GET", f"/v1/jobs/{job.job_id}/result",
                               params={"format": "json"})
            if result is None or result.status_code != 200:
                return
            job.result = result.json()
            if job.output in ("pdf", "hocr", "markdown"):
                rendered = self.call("GET", f"/v1/jobs/{job.job_id}/result",
                                     params={"format": job.output})
                if rendered is None or rendered.status_code != 200:
                    return
                job.rendered[job.output] = len(rendered.content)
        job.final = status
        job.ended = time.monotonic()

    def sample_memory(self) -> None:
        """The largest RSS of each worker process; a worker that died unasked is noted.

        A worker that exited when no fault aimed at it breaks `workers_survive`; it is
        started again so that the soak goes on.
        """
        while not self.stopped.is_set():
            for key, mb in self.fleet.worker_rss_mb().items():
                self.rss[key] = max(mb, self.rss.get(key, 0.0))
            for name, host in self.fleet.hosts.items():
                with self.lock:
                    if name in self.faulting or host.worker is None or \
                            host.worker.proc is None or host.worker.proc.poll() is None:
                        continue
                    self.faulting.add(name)
                self.deaths.append(Fault(round(time.monotonic() - self.started, 1), "died",
                                         f"{name}: exit {host.worker.proc.returncode}, "
                                         f"log {host.worker.log_path.name}"))
                host.kill_group()
                host.start()
                with self.lock:
                    self.faulting.discard(name)
            self.stopped.wait(2)

    # --- faults ------------------------------------------------------------------------

    def injector(self, gap: tuple[float, float], down: float) -> None:
        """Faults one after another at random gaps; every kind once first, in random order."""
        order = list(self.kinds)
        self.rng.shuffle(order)
        while self.loading.is_set():
            if self.stopped.wait(self.rng.uniform(*gap)) or not self.loading.is_set():
                return
            kind = order.pop(0) if order else self.rng.choice(self.kinds)
            began = time.monotonic()
            detail = self.inject(kind, down)
            self.faults.append(Fault(round(began - self.started, 1), kind, detail,
                                     round(time.monotonic() - began, 1)))

    def inject(self, kind: str, down: float) -> str:
        fleet = self.fleet
        if kind == "kill_child":
            host = fleet.hosts["cpu"]
            children = host.processes()[1:]
            if not children:
                return "no pool child"
            victim = self.rng.choice(children)
            victim.kill()
            return f"pid {victim.pid}"
        if kind == "kill_host":
            return self.kill_host(down)
        if kind in ("kill_parent", "term_worker"):
            name = self.rng.choice(sorted(fleet.hosts))
            host = fleet.hosts[name]
            with self.lock:
                if name in self.faulting:
                    return f"{name}: already restarting"
                self.faulting.add(name)
            try:
                assert host.worker is not None
                if kind == "kill_parent":
                    parent = host.parent()
                    if parent is not None:
                        parent.kill()
                    time.sleep(1)
                    host.kill_group()  # what the dead parent leaves dies with its host
                else:
                    host.worker.stop()  # SIGTERM: a warm shutdown, then it starts again
                host.start()
            finally:
                with self.lock:
                    self.faulting.discard(name)
            return name
        if kind == "restart_redis":
            fleet.redis.restart_primary(down_seconds=1.0)
            return "1 s down"
        if kind == "failover_redis":
            # SIGKILL the primary: the Sentinels promote a replica, the fleet follows
            # them; the old primary then starts again and rejoins as a replica.
            old = fleet.redis.kill_primary()
            new = fleet.redis.wait_promoted(old, timeout=60)
            fleet.redis.rejoin(old)
            return f"{old.port} -> {new.port}"
        if kind == "stop_rabbit_leader":
            return self.stop_rabbit_leader(down / 2)
        if kind == "restart_api":
            index = self.rng.randrange(len(fleet.apis))
            fleet.restart_api(index)
            return f"api {index}"
        if kind == "inference_down":
            port = fleet.inference.port
            fleet.inference.stop()
            self.stopped.wait(down)
            fleet.inference = SimulatedInferenceServer(
                port=port, text=fleet.inference.text).start()
            return f"{down:.0f} s down"
        if kind == "webhook_failing":
            fleet.receiver.failing_until = time.monotonic() + down / 2
            self.stopped.wait(down / 2)
            return f"{down / 2:.0f} s of 503"
        raise ValueError(kind)

    def kill_host(self, down: float) -> str:
        """SIGKILL a worker host's parent and children at once; start it `down` s later.

        Its held jobs go back through the sweep of dead holders (tasks/broker/holders.py)
        once it is silent for OCR_WORKER_LIVENESS_SECONDS, or as soon as it starts again
        (a new pid under its node name).
        """
        name = self.rng.choice(sorted(self.fleet.hosts))
        host = self.fleet.hosts[name]
        with self.lock:
            if name in self.faulting:
                return f"{name}: already restarting"
            self.faulting.add(name)
        try:
            host.kill_group()
            self.stopped.wait(down)
            host.start()
        finally:
            with self.lock:
                self.faulting.discard(name)
        return f"{name}, {down:.0f} s down"

    def stop_rabbit_leader(self, down: float) -> str:
        """SIGKILL the node leading `ocr` (the busiest job queue); start it again later."""
        cluster = self.fleet.rabbit
        assert cluster is not None
        leader = cluster.leader_of(self.fleet.vhost, "ocr")
        cluster.kill(leader)
        self.stopped.wait(down)
        cluster.restart(leader)
        return f"{leader.short}, leader of ocr, {down:.0f} s down"

    # --- the run -------------------------------------------------------------------------

    def run(self, load_seconds: float, drain_seconds: float, rate: float, most_open: int,
            gap: tuple[float, float], down: float) -> None:
        self.loading.set()
        threads = [threading.Thread(target=self.submitter, args=(rate / 2, most_open // 2),
                                    daemon=True) for _ in range(2)]
        injector = threading.Thread(target=self.injector, args=(gap, down), daemon=True)
        background = [threading.Thread(target=self.tracker, daemon=True),
                      threading.Thread(target=self.sample_memory, daemon=True)]
        watchers = [threading.Thread(target=self.watcher, daemon=True) for _ in range(6)]
        for thread in (*threads, injector, *background, *watchers):
            thread.start()
        # The load runs for its time, and until every kind of fault was injected once.
        until = time.monotonic() + load_seconds
        while time.monotonic() < until or (injector.is_alive() and
                                           len({f.kind for f in self.faults}) < len(self.kinds)):
            time.sleep(1)
        self.loading.clear()
        for thread in threads:
            thread.join()
        injector.join()
        self.fleet.receiver.failing_until = 0.0
        # Drain: every accepted job is awaited, its ending and its callback (generously:
        # a task lost with a killed worker comes back after the visibility timeout, and
        # a refused callback is retried on the retry policy's backoff).
        deadline = time.monotonic() + drain_seconds
        while time.monotonic() < deadline:
            called = {d.job_id for d in self.fleet.receiver.deliveries if d.answered < 300}
            with self.lock:
                if all(j.final is not None and j.job_id in called
                       and (j.event_end is not None or not j.watched)
                       for j in self.jobs if j.job_id):
                    break
            time.sleep(1)
        self.stopped.set()
        self.watching_until = time.monotonic()
        for thread in (*background, *watchers):
            thread.join()


SIZES = {  # load seconds per minute of the run, jobs a second, open jobs, fault gaps, downtime
    "short": (0.5, 0.5, 12, (3.0, 6.0), 16.0),
    "long": (0.85, 1.4, 40, (15.0, 40.0), 60.0),
}


def run(minutes: float, workdir: Path, seed: int = 43, drain_seconds: float = 900.0,
        broker: str = "redis") -> dict[str, Any]:
    """One soak of about `minutes`; its report (jobs, faults by kind, promises).

    `broker`: `redis`, or `rabbitmq` (a three-node cluster, quorum queues).
    """
    share, rate, most_open, gap, down = SIZES["long" if minutes >= 10 else "short"]
    inputs = direct_reads(make_inputs(seed))
    fleet = Fleet(workdir, broker=broker)
    started = time.monotonic()
    try:
        fleet.start()
        for item in inputs:
            fleet.s3.client().put_object(Bucket=BUCKET, Key=item.name, Body=item.data)
        soak = Soak(fleet, inputs, seed, minutes)
        soak.run(minutes * 60 * share, drain_seconds, rate, most_open, gap, down)
        store = fleet.redis_client()
        promises = check(soak.jobs, soak.inputs, fleet.receiver.deliveries, store,
                         soak.rss, fleet)
        promises["workers_survive"] = {"held": not soak.deaths,
                                       "died": [asdict(d) for d in soak.deaths]}
    finally:
        fleet.stop()
    leftovers = fleet.leftover_files()
    promises.update(check_files(leftovers, soak.jobs))
    for promise in promises.values():
        if not promise["held"]:
            promise["log"] = promise_log(fleet.workdir / "logs", promise)
    jobs = [j for j in soak.jobs if j.job_id]
    return {
        "broker": broker,
        "minutes": round((time.monotonic() - started) / 60, 2),
        "jobs_sent": len(soak.jobs), "jobs_accepted": len(jobs),
        "not_accepted": Counter((j.refused or "")[:40] for j in soak.jobs if not j.job_id),
        "endings": Counter(j.final["status"] for j in jobs if j.final),
        "failure_codes": Counter((j.final.get("error") or {}).get("code", "")
                                 for j in jobs if j.final and j.final["status"] == "FAILURE"),
        "pages": sum(len((j.result or {}).get("pages", [])) for j in jobs),
        "by_engine": Counter(j.engine or "tesseract" for j in jobs),
        "by_transport": Counter(j.transport for j in jobs),
        "by_output": Counter(j.output for j in jobs),
        "cancels_sent": sum(1 for j in jobs if j.cancel_answer),
        "deadlines": sum(1 for j in jobs if j.deadline),
        "callbacks": len(fleet.receiver.deliveries),
        "faults": Counter(f.kind for f in soak.faults),
        "fault_log": [asdict(f) for f in soak.faults],
        "worker_rss_max_mb": round(max(soak.rss.values(), default=0.0), 1),
        "promises": promises,
        "broken": sorted(k for k, v in promises.items() if not v["held"]),
        "machine": {k: machine_info()[k] for k in ("cpu_count", "memory_gb", "loadavg")},
        "history": {"jobs": [asdict(j) for j in soak.jobs],
                    "deliveries": [asdict(d) for d in fleet.receiver.deliveries]},
    }


JOB_ID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")
LOG_NAME = re.compile(r"[\w.-]+\.log\b")


def promise_log(logs: Path, promise: dict[str, Any], tail: int = 60,
                most: int = 200) -> list[str]:
    """The fleet's log lines behind a broken promise, each after its file's name.

    The last `tail` lines of each log it names (a worker that died), then the lines of
    every log that name one of its jobs; `most` lines in all.
    """
    said = json.dumps(promise, default=str)
    lines = []
    for name in dict.fromkeys(LOG_NAME.findall(said)):
        if (logs / name).is_file():
            text = (logs / name).read_text(errors="replace").splitlines()
            lines += [f"{name}: {line}" for line in text[-tail:]]
    ids = set(JOB_ID.findall(said))
    for path in sorted(logs.glob("*.log")) if ids else []:
        lines += [f"{path.name}: {line}" for line in
                  path.read_text(errors="replace").splitlines()
                  if any(job in line for job in ids)]
    return lines[:most]


def check_files(leftovers: dict[str, list[str]], jobs: list[Job]) -> dict[str, Any]:
    """No temporary file left behind; the URL spool keeps only what the docs allow.

    A host's copy of a fanned-out URL document is removed when the document is merged;
    a document ended otherwise (cancelled, failed, a lost host) leaves its copy until
    the next fetch prunes copies untouched for OCR_BLOB_TTL (docs/object-storage.md).
    Anything else (a `.part` of an interrupted write, a stray temporary file) breaks it.
    """
    stray = [p for files in leftovers.values() for p in files
             if ("/ocr-url-spool/" not in f"/{p}" or p.endswith(".part"))
             and not p.endswith("/.ses")]  # a library's marker, once per folder (/tmp too)
    spool = [p for files in leftovers.values() for p in files if p not in stray]
    return {"no_temporary_files": {"held": not stray, "stray": stray[:20],
                                   "spool_copies_awaiting_prune": len(spool)}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=38.0,
                        help="length of the run, 85 %% of it load (38: the long form, "
                             "over 30 minutes of load; 1.5: the short form)")
    parser.add_argument("--seed", type=int, default=43)
    parser.add_argument("--broker", choices=("redis", "rabbitmq"), default="redis",
                        help="rabbitmq: a three-node cluster of quorum queues of its own "
                             "(and the fault stop_rabbit_leader)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp") / "ocr-chaos")
    parser.add_argument("--out", type=Path, default=RESULTS / "chaos.json")
    args = parser.parse_args(argv)
    report = run(args.minutes, args.workdir / uuid.uuid4().hex[:8], args.seed,
                 broker=args.broker)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # The history (every call, ending and callback: ~20 MB for the long form) beside
    # the report, compressed and not committed; the report keeps the fault log.
    history = args.out.with_name(args.out.stem + "-history.json.gz")
    history.write_bytes(gzip.compress(json.dumps(report.pop("history", []),
                                                 default=str).encode()))
    args.out.write_text(json.dumps(report, indent=1, default=str))
    print(json.dumps({k: v for k, v in report.items() if k not in ("fault_log", "history")},
                     indent=1, default=str))
    return 1 if report["broken"] else 0


if __name__ == "__main__":
    sys.exit(main())
