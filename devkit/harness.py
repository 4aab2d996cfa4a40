"""The tests' and benchmarks' process harness: real Redis, Procfile processes, `eventually()`.

`RedisServer` (a redis-server of its own on a free loopback port), `Broker` (Redis, or
a RabbitMQ vhost of devkit/rabbitmq.py), `ProcfileProcess` and `Worker` (a Procfile
line run as a Procfile runner runs it), the fault-injecting fake engines' wiring
(`FAKE_PLUGINS`, `fake_env`: the engines themselves are in devkit/fake_engines.py), and
`eventually()`, the one way a test waits for something to happen; the corpus is
devkit/corpus.py's. Tests reach it through the fixtures of tests/conftest.py or
through tests/harness.py, which re-exports it; benchmarks (bench/) import it from
here, never from tests/.

Runs in the test or benchmark process; everything it starts runs in processes (process
groups) of their own, stopped by `stop_group`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import redis

from devkit.ports import free_port
from devkit.rabbitmq import RabbitVhost
from tasks.client import OcrClient
from tasks.queue.routing import job_queue
from tasks.records.jobs import Job, Reservation
from tasks.records.request import JobRequest
from tasks.settings import Settings

T = TypeVar("T")

# Start-ups recorded in this process since the last report took them (tests/start_ups.py
# puts them on the test's report, for the time summary).
_PENDING: list[tuple[str, float]] = []


def record_start_up(process: str, seconds: float) -> None:
    """Count one start-up of the test running now (its report takes it)."""
    _PENDING.append((process, seconds))


def take_pending() -> list[tuple[str, float]]:
    """The start-ups recorded since the last call, to go onto the current test's report."""
    taken = list(_PENDING)
    _PENDING.clear()
    return taken


ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
FAKE_PLUGINS = ",".join(f"{name}=devkit.fake_engines:{cls}" for name, cls in (
    ("fake", "FakeEngine"), ("broken", "BrokenEngine"), ("fake-model", "FakeModelEngine"),
    ("slow-on-dark", "SlowOnDarkEngine"), ("stuck-on-dark", "StuckOnDarkEngine"),
    ("killer", "KillerEngine"), ("flaky-on-dark", "FlakyOnDarkEngine"),
    ("raising-on-dark", "RaisingOnDarkEngine"), ("transient-on-dark", "TransientOnDarkEngine")))
# PDFs rendered small and unturned: fake engines describe pages, they do not read them.
FAST_PAGES = {"OCR_PDF_DPI": "72", "OCR_DESKEW": "0"}


def fake_env(*engines: str, cache: bool = False, **extra: str) -> dict[str, str]:
    """A worker's settings with the fake engines (devkit/fake_engines.py), `fake` its own.

    Results are not cached unless `cache`; `engines` are other fake engines whose
    queues (`ocr-<name>`) the worker serves beside `ocr` (jobs that name them go there).
    """
    env = {"OCR_ENGINE": "fake", "OCR_ENGINE_PLUGINS": FAKE_PLUGINS}
    if not cache:
        env["OCR_CACHE_RESULTS"] = "0"
    if engines:
        env["OCR_QUEUES"] = ",".join(["ocr", *(f"ocr-{e}" for e in engines)])
    return {**env, **extra}


def eventually(predicate: Callable[[], T | None], timeout: float, what: str | Callable[[], str],
               interval: float = 0.1) -> T:
    """Call `predicate` until it returns something true, and return that.

    Mind what is false: 0, an empty list, and a `requests.Response` of an error status
    (wrap such a value in a tuple).

    Fails the test (AssertionError) naming `what` (a text, or a function that gives one,
    such as a log's tail, called only then) when `timeout` seconds pass first. An
    exception the predicate raises ends the wait at once (a process that exited early).
    The one wait loop of the tests: a bound for a loaded machine, never a measurement.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            told = what() if callable(what) else what
            raise AssertionError(f"not within {timeout:g} s: {told}")
        time.sleep(interval)


def stop_group(proc: subprocess.Popen[bytes] | None, grace: float) -> None:
    """SIGTERM `proc` (a session leader), then SIGKILL its process group after `grace` s.

    No child of a stopped service outlives the test that started it.
    """
    stop_groups([(proc, grace)])


def stop_groups(procs: Sequence[tuple[subprocess.Popen[bytes] | None, float]]) -> None:
    """`stop_group` for several processes at once: each one's warm shutdown overlaps."""
    live = [(proc, grace) for proc, grace in procs if proc is not None and proc.poll() is None]
    signalled = time.monotonic()
    for proc, _ in live:
        proc.send_signal(signal.SIGTERM)
    for proc, grace in live:
        try:
            proc.wait(max(0.0, signalled + grace - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)


def waits_for_a_signal(pid: int) -> bool:
    """Whether process `pid` sleeps in `sigwait` (Linux: the kernel function it waits in).

    The event of a process that idles until it is stopped: once it is in the wait, a
    check need not wait a while to see it still up. False when the process is gone.
    """
    try:
        return "sigtimedwait" in Path(f"/proc/{pid}/wchan").read_text()
    except FileNotFoundError:
        return False


def procfile_command(name: str, root: Path = ROOT) -> str:
    """The command line of one Procfile process (of the checkout at `root`), as honcho runs it."""
    for line in (root / "Procfile").read_text().splitlines():
        key, sep, command = line.partition(":")
        if sep and key.strip() == name:
            return command.strip()
    raise KeyError(name)


class ProcfileProcess:
    """One Procfile line run as any Procfile runner runs it: `sh -c` from the repository root.

    In a session of its own, logging to a file. Its environment is the test runner's
    with the venv's `bin` first on PATH, without the service's settings (`OCR_*`,
    `REDIS_*`, `CELERY*` and the prefixes in `drop`) and without `PYTHONPATH` (which
    only `make` sets), plus `env`. `root`: the checkout whose Procfile line runs, from
    its top (another release's, devkit/previous_release.py); this one by default.
    """

    stop_grace = 30.0

    def __init__(self, process: str, log_path: Path, env: dict[str, str],
                 drop: tuple[str, ...] = (), root: Path = ROOT) -> None:
        self.process = process
        self.log_path = log_path
        self.root = root
        inherited = {k: v for k, v in os.environ.items()
                     if not k.startswith(("OCR_", "REDIS_", "CELERY", "PYTHONPATH", *drop))}
        self.env = {**inherited, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
                    "PYTHONUNBUFFERED": "1", **env}
        self.proc: subprocess.Popen[bytes] | None = None
        self.spawned_at: float | None = None  # until its start-up is counted

    def spawn(self) -> subprocess.Popen[bytes]:
        self.spawned_at = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                ["sh", "-c", f"exec {procfile_command(self.process, self.root)}"],
                cwd=self.root,
                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self.proc

    def failed(self, why: str) -> RuntimeError:
        return RuntimeError(f"{self.process} {why}:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_until(self, predicate: Callable[[], T], timeout: float, what: str) -> T:
        """`eventually(predicate)` while the process lives.

        RuntimeError with the log's tail when it exits first, or when `timeout` passes
        (`not <what> in N s`).
        """

        def alive() -> T:
            value = predicate()
            if not value and self.proc is not None and self.proc.poll() is not None:
                raise self.failed("exited early")
            return value

        try:
            value = eventually(alive, timeout, what)
        except AssertionError:
            raise self.failed(f"not {what} in {timeout:g} s") from None
        if self.spawned_at is not None:  # the first wait after a spawn: its start-up
            record_start_up(self.process, time.monotonic() - self.spawned_at)
            self.spawned_at = None
        return value

    def stop(self) -> None:
        """SIGTERM (as the supervisor stops it), then its whole group is killed."""
        stop_group(self.proc, grace=self.stop_grace)


def stop_all(processes: Sequence[ProcfileProcess]) -> None:
    """Stop each as `ProcfileProcess.stop` does, all at once (a module's workers)."""
    stop_groups([(p.proc, p.stop_grace) for p in processes])


def kill_all(processes: Sequence[ProcfileProcess]) -> None:
    """SIGKILL each one's process group at once, and reap them.

    For workers whose tests are all done (a module's end): nothing is asserted of their
    shutdown any more, and a warm shutdown costs a prefork worker 2-3 s (billiard's
    pool threads wind down on 1 s polls). Tests of warm shutdown stop workers themselves.
    """
    live = [p.proc for p in processes if p.proc is not None and p.proc.poll() is None]
    for proc in live:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for proc in live:
        proc.wait(10)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


# Each test module gets a database of its own (more modules than Redis's default 16).
DATABASES = 128


class RedisServer:
    """A redis-server of the tests' own, on a free loopback port."""

    def __init__(self, workdir: Path, appendonly: bool = False,
                 max_bulk_bytes: int | None = None) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.appendonly = appendonly  # an append-only file, fsynced: data survives restarts
        # proto-max-bulk-len as the project's Redis sets it (scripts/run_redis.py): from
        # the default settings unless a test gives its own
        self.max_bulk_bytes = max_bulk_bytes or Settings.from_env({}).redis_max_bulk_bytes
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port),
             "--bind", "127.0.0.1", "--dir", str(self.workdir), "--save", "",
             "--databases", str(DATABASES), "--proto-max-bulk-len", str(self.max_bulk_bytes),
             *(["--appendonly", "yes", "--appendfsync", "always"] if self.appendonly
               else ["--appendonly", "no"])],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port)
        eventually(lambda: _pings(client), 10, f"redis-server on port {self.port} to start",
                   interval=0.05)

    def restart(self, down_seconds: float = 1.0) -> None:
        self.stop()
        time.sleep(down_seconds)
        self.start()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


class Broker:
    """The broker of a test: `redis` (REDIS_URL itself) or `amqp` (a vhost of its own)."""

    def __init__(self, kind: str, redis_server: RedisServer,
                 vhost: RabbitVhost | None = None) -> None:
        self.kind = kind
        self.redis_server = redis_server
        self.vhost = vhost

    @property
    def env(self) -> dict[str, str]:
        """Extra environment of workers and clients: BROKER_URL for RabbitMQ."""
        return {"BROKER_URL": self.vhost.url()} if self.vhost is not None else {}

    def restart(self, down_seconds: float = 1.0) -> None:
        if self.vhost is not None:
            self.vhost.restart(down_seconds)
        else:
            self.redis_server.restart(down_seconds)


class Worker(ProcfileProcess):
    """A real worker process, started with a Procfile line (`worker:` or `control:`)."""

    def __init__(self, log_path: Path, env: dict[str, str], process: str = "worker",
                 root: Path = ROOT) -> None:
        self.name = f"test-{uuid.uuid4().hex[:8]}"
        super().__init__(process, log_path, {"WORKER_NAME": self.name, **env}, root=root)
        if "OCR_ENGINE_PLUGINS" in env:
            # A plugin's module must be importable, as for any Python plugin (installed,
            # or on PYTHONPATH): the fake engines are in devkit/, outside the service.
            self.env.setdefault("PYTHONPATH", str(root))
            # Fake-engine tests feed uniform pages (fault triggers) that are blank pages:
            # they must reach the engine. Tests of blank pages set it to 1 themselves.
            self.env.setdefault("OCR_SKIP_BLANK_PAGES", "0")

    def start(self, timeout: float = 90) -> Worker:
        self.spawn()
        return self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 90) -> Worker:
        """Wait for a spawned worker's `ready.` line (several spawned first start together)."""
        self.wait_until(lambda: re.search(r"@\S+ ready\.", self.log()), timeout, "ready")
        return self

    def languages(self, client: OcrClient, timeout: float = 60) -> dict[str, Any]:
        """The worker's reply to the `languages` broadcast, asked until it answers.

        A loaded worker may answer past one broadcast's wait, so one empty round is
        not an answer.
        """
        from tasks.operator_console import OperatorConsole

        console = OperatorConsole(client)

        def reply() -> dict[str, Any] | None:
            replies = console.languages(timeout=2)
            return next((r for node, r in replies.items() if node.startswith(self.name)),
                        None)

        return eventually(reply, timeout, f"{self.name}'s languages reply")

    def job_records(self, wait_for: Sequence[str] = (),
                    timeout: float = 10) -> dict[str, dict[str, Any]]:
        """The log's `ocr.job` records by job id, once the jobs of `wait_for` have theirs.

        A job's result is stored before its ending logs the line, so a test that has
        just read a result waits here for the line instead of reading the log once.
        """
        def records() -> dict[str, dict[str, Any]]:
            return {r["id"]: r for r in (json.loads(m) for m in re.findall(
                r"ocr\.job (\{.*\})$", self.log(), re.M))}

        def when_all_logged() -> dict[str, dict[str, Any]] | None:
            now = records()
            return now if set(wait_for) <= set(now) else None

        if not wait_for:
            return records()
        return eventually(when_all_logged, timeout, lambda: "no ocr.job line for some of "
                          f"{list(wait_for)}: {self.log()[-2000:]}")

    def kill(self) -> None:
        """SIGKILL the parent and its children at once, as when the host dies."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


def make_client(redis_url: str, **env: str) -> OcrClient:
    return OcrClient(Settings.from_env({"REDIS_URL": redis_url, **env}))


def sent_past_the_gate(by: OcrClient, kwargs: dict[str, Any], job_id: str = "",
                       deadline: float | None = None, **job: Any) -> str:
    """Send a job as any Celery client may: past the gate, by `by`'s sender alone.

    `deadline`: seconds from now; `job`: the rest of the `Job` (its client is `by`'s
    unless given).
    """
    sent_as = job.pop("client", by.client)
    request = replace(JobRequest.for_door(kwargs), client=sent_as,
                      deadline=None if deadline is None else time.time() + deadline)
    job_id = job_id or str(uuid.uuid4())
    reservation = Reservation(job_id, sent_as, job_queue(request.engine), "normal")
    return by.sender.send(Job(job_id, request, reservation=reservation, **job))
