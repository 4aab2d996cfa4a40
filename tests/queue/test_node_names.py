"""Node names are unique: the Procfile's worker line named from a shell prefix, no twin.

Real redis-server and real workers: the Procfile's `worker` line run from a shell as a
user types it, `WORKER_NAME=x LINE`, with no WORKER_NAME exported. The worker names
itself `x@<host>`; a second one under that name while the first lives exits 2; one
restarted under it after the first was killed starts.
"""

from __future__ import annotations

import json
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tasks.state.keys import WORKERS_KEY
from tasks.state.liveness import WorkerPresence
from tests.harness import ProcfileProcess, kill_all, procfile_command

pytestmark = pytest.mark.slow

START_BOUND = 120.0  # seconds: a worker loading its engine on a loaded machine


class TypedWorker(ProcfileProcess):
    """The Procfile's worker line after a `WORKER_NAME=<name>` prefix, run by `sh -c`."""

    def __init__(self, log_path: Path, name: str, redis_url: str) -> None:
        super().__init__("worker", log_path, {"REDIS_URL": redis_url, "OCR_ENGINE":
                                              "tesseract", "OCR_CONCURRENCY": "1"},
                         drop=("WORKER_NAME",))
        self.name = name

    def spawn(self) -> subprocess.Popen[bytes]:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                ["sh", "-c", f"WORKER_NAME={self.name} {procfile_command('worker')}"],
                cwd=self.root, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        return self.proc

    def ready(self) -> TypedWorker:
        self.spawn()
        self.wait_until(lambda: " ready." in self.log(), START_BOUND, "ready")
        return self


@pytest.fixture
def typed(tmp_path: Path, redis_url: str) -> Iterator[list[TypedWorker]]:
    started: list[TypedWorker] = []
    yield started
    kill_all(started)


def record(redis_url: str, node: str) -> dict[str, Any] | None:
    raw = redis.Redis.from_url(redis_url).hget(WORKERS_KEY, node)
    return None if raw is None else dict(json.loads(raw))


def test_a_shell_prefix_names_the_worker_and_its_twin_exits_2(
        typed: list[TypedWorker], redis_url: str, tmp_path: Path) -> None:
    name = f"typed-{uuid.uuid4().hex[:6]}"
    node = f"{name}@{socket.gethostname()}"
    first = TypedWorker(tmp_path / "first.log", name, redis_url)
    typed.append(first)
    first.ready()
    assert f"{node} ready." in first.log(), first.log()[-2000:]
    live = WorkerPresence(redis.Redis.from_url(redis_url)).live_record(node)
    assert live is not None and live["host"] == socket.gethostname(), live
    # A second worker under the live one's name refuses to start.
    twin = TypedWorker(tmp_path / "twin.log", name, redis_url)
    typed.append(twin)
    assert twin.spawn().wait(START_BOUND) == 2, twin.log()[-2000:]
    (line,) = [x for x in twin.log().splitlines() if "refused to start" in x]
    assert node in line and "WORKER_NAME" in line, line
    assert f"pid {live['pid']}" in line and f"host {socket.gethostname()}" in line, line
    assert (record(redis_url, node) or {}).get("pid") == live["pid"]  # the first's, kept
    # The first one killed (its record still live): one restarted under its name starts.
    kill_all([first])
    assert WorkerPresence(redis.Redis.from_url(redis_url)).live_record(node) is not None
    again = TypedWorker(tmp_path / "again.log", name, redis_url)
    typed.append(again)
    again.ready()
    assert f"{node} ready." in again.log()
