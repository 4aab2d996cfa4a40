"""`make run` stops cleanly: Ctrl-C ends every process it started, also through `tee`.

The real Procfile (redis, worker, beat, Flower, metrics) under scripts/supervise.py, as
`make run` starts it, its output piped to `tee` in a session of its own; SIGINT goes
to that foreground process group as a terminal's Ctrl-C would. Redis stops last: the
worker's warm shutdown ends while it still answers, and Redis gets SIGTERM (never only
SIGKILL) also when another process outlives the grace.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import redis

from tests.harness import ROOT, VENV_BIN, RedisServer, eventually, fake_env, free_port

pytestmark = pytest.mark.slow
STOP_BOUND = 60  # seconds: the supervisor's 10 s grace, on a loaded machine


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def procfile_names() -> list[str]:
    return [line.partition(":")[0] for line in (ROOT / "Procfile").read_text().splitlines()
            if ":" in line and not line.startswith("#")]


def test_make_run_recipe_is_the_supervisor() -> None:
    recipe = (ROOT / "Makefile").read_text().split("\nrun:", 1)[1].split("\n\n", 1)[0]
    assert "scripts/supervise.py" in recipe and "honcho" not in recipe


def test_ctrl_c_through_tee_stops_every_process(tmp_path: Path) -> None:
    (tmp_path / "scripts").symlink_to(ROOT / "scripts")  # var/ goes under tmp_path
    log = tmp_path / "log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OCR_", "REDIS_"))}
    env.update(PATH=f"{VENV_BIN}{os.pathsep}{env['PATH']}", PYTHONPATH=str(ROOT),
               REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", FLOWER_PORT=str(free_port()),
               METRICS_PORT=str(free_port()), API_PORT=str(free_port()),
               WORKER_NAME=f"stop-{uuid.uuid4().hex[:6]}", OCR_CONCURRENCY="1",
               OCR_ENGINE="tesseract")
    run = f"{sys.executable} {ROOT}/scripts/supervise.py --procfile {ROOT}/Procfile"
    # SIGINT as in a terminal's foreground job, even when pytest runs with it ignored
    # (started in the background): tee then dies of it and the pipe breaks.
    shell = subprocess.Popen(["bash", "-c", f"{run} 2>&1 | tee {log}"], cwd=tmp_path,
                             env=env, stdout=subprocess.DEVNULL, start_new_session=True,
                             preexec_fn=_default_sigint)
    try:
        def text() -> str:
            return log.read_text() if log.exists() else ""

        def worker_ready() -> bool:
            assert shell.poll() is None, text()
            return " ready." in text()

        eventually(worker_ready, 180, lambda: f"the worker ready:\n{text()}", interval=0.2)
        for name in procfile_names():
            eventually(lambda name=name: f" {name} started (pid " in text(), 30,
                       f"{name} started")
        session = psutil.Process(shell.pid)

        def every_process() -> list[psutil.Process]:  # + the worker's pool child
            procs = [session, *session.children(recursive=True)]
            return procs if len(procs) >= 9 else []

        procs = eventually(every_process, 30, lambda: "9 processes in the session: " + str(
            [p.cmdline() for p in [session, *session.children(recursive=True)]]))
        names = {p.name() for p in procs}
        assert {"tee", "redis-server"} <= names, names
        os.killpg(shell.pid, signal.SIGINT)  # Ctrl-C: the whole foreground group
        _, alive = psutil.wait_procs(procs, timeout=STOP_BOUND)
        assert not alive, [p.cmdline() for p in alive]
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)


def test_one_process_exiting_stops_the_others(tmp_path: Path) -> None:
    procfile = tmp_path / "Procfile"
    procfile.write_text("sleeper: sleep 300\nfails: sleep 0.5; exit 3\n")
    start = time.monotonic()
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "supervise.py"),
                           "--procfile", str(procfile)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 3
    assert "fails exited (code 3): stopping all" in done.stdout
    assert not [p for p in psutil.process_iter(["cmdline", "create_time"])
                if p.info["cmdline"] == ["sleep", "300"]
                and p.info["create_time"] >= time.time() - (time.monotonic() - start) - 1]


def run_env(**extra: str) -> dict[str, str]:
    """The environment `make run` gives its processes: no OCR_ or REDIS_ variable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OCR_", "REDIS_"))}
    env.update(PATH=f"{VENV_BIN}{os.pathsep}{env['PATH']}", PYTHONPATH=str(ROOT), **extra)
    return env


def supervise(tmp_path: Path, *args: str, **extra: str) -> tuple[subprocess.Popen[bytes], Path]:
    """scripts/supervise.py as `make run` runs it, its output in a log.

    No REDIS_URL (the project's own Redis), from `tmp_path` (its var/ goes there);
    SIGINT to its process group is a terminal's Ctrl-C.
    """
    (tmp_path / "scripts").symlink_to(ROOT / "scripts")
    env = run_env(**extra)
    log = tmp_path / "log"
    with log.open("wb") as out:
        run = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "supervise.py"), *args],
                               cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                               start_new_session=True, preexec_fn=_default_sigint)
    return run, log


def ctrl_c_once(run: subprocess.Popen[bytes], log: Path, ready: Callable[[], bool],
                timeout: float, what: str) -> None:
    """Once `ready`, Ctrl-C: the supervisor must exit 0 within STOP_BOUND.

    Whatever happens, it is SIGKILLed (its group) if it is still there at the end.
    """
    try:
        eventually(lambda: run.poll() is None and ready(), timeout,
                   lambda: f"{what}:\n{log.read_text()}", interval=0.2)
        os.killpg(run.pid, signal.SIGINT)  # Ctrl-C
        assert run.wait(STOP_BOUND) == 0, log.read_text()
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)


def said(log: Path, *texts: str) -> list[int]:
    """The number of the first line of `log` holding each of `texts` (-1: none)."""
    lines = log.read_text().splitlines()
    return [next((i for i, line in enumerate(lines) if text in line), -1) for text in texts]


def test_ctrl_c_ends_the_workers_warm_shutdown_before_redis_stops(tmp_path: Path) -> None:
    """Redis and a worker: Ctrl-C, the worker's warm shutdown ends, then Redis stops.

    The worker's stop is done (its exit code 0 said) before Redis gets SIGTERM, it
    never lost its connection on the way, Redis stops cleanly on its SIGTERM, and
    nothing is SIGKILLed.
    """
    run, log = supervise(tmp_path, "--procfile", str(ROOT / "Procfile"), "redis", "worker",
                         **fake_env(OCR_CONCURRENCY="1"),
                         WORKER_NAME=f"stop-{uuid.uuid4().hex[:6]}")
    ctrl_c_once(run, log, lambda: " ready." in log.read_text(), 180, "the worker ready")
    text = log.read_text()
    warm, worker_done, asked, redis_told, redis_done = said(
        log, "Warm shutdown", "worker stopped (exit code 0)", "SIGTERM to redis, last",
        "Received SIGTERM", "redis stopped (exit code 0)")
    assert -1 < warm < worker_done < asked < redis_told < redis_done, text
    assert "SIGKILL" not in text and "ready to exit" in text.lower(), text
    worker_lines = [line for line in text.splitlines() if " worker " in line[:20]]
    assert not [line for line in worker_lines if "Cannot connect" in line
                or "Connection refused" in line or "Error 111" in line], worker_lines


def test_redis_gets_sigterm_when_another_process_outlives_the_grace(tmp_path: Path) -> None:
    """A process that ignores SIGTERM: Redis still stops on its SIGTERM, before any SIGKILL.

    The stubborn process's group is killed once its grace has run out; Redis is told
    to stop first and exits on its own, never killed.
    """
    procfile = tmp_path / "Procfile"
    procfile.write_text("redis: python -m scripts.run_redis\n"
                        "stubborn: trap '' TERM; sleep 300\n")
    run, log = supervise(tmp_path, "--procfile", str(procfile), "--grace", "3")
    ctrl_c_once(run, log, lambda: "Ready to accept connections" in log.read_text()
                and "stubborn started" in log.read_text(), 60, "Redis ready")
    text = log.read_text()
    asked, killing, redis_told, redis_done = said(
        log, "SIGTERM to redis, last", "killing what is left (SIGKILL): stubborn",
        "Received SIGTERM", "redis stopped (exit code 0)")
    assert -1 < asked < killing and -1 < redis_told < redis_done, text
    assert "stubborn stopped (exit code -9)" in text
    assert [line for line in text.splitlines() if "SIGKILL" in line] == [
        text.splitlines()[killing]], text  # one kill, naming only the stubborn process


def test_make_run_starts_its_own_redis_and_leaves_another_untouched(tmp_path: Path) -> None:
    """Another service's Redis where the last run's port was: `make run` takes another.

    The foreign server stands on a free port the test picked, named in var/redis-url as
    if an earlier run had used it; the supervisor (REDIS_URL unset, as `make run` starts
    it) must start the project's own elsewhere, and `submit.py` must find that one
    through var/redis-url without an exported variable.
    """
    foreign = RedisServer(tmp_path)
    foreign.start()
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "redis-url").write_text(foreign.url() + "\n")
    run, log = supervise(tmp_path, "--procfile", str(ROOT / "Procfile"), "redis")
    env = run_env()
    try:
        eventually(lambda: "starting the project's own server" in log.read_text(), 60,
                   "the project's own Redis to start")
        own = (tmp_path / "var" / "redis-url").read_text().strip()
        assert own != foreign.url()
        lines = [line for line in log.read_text().splitlines() if "redis: the project's" in line]
        assert len(lines) == 1 and own.split("@")[-1] in lines[0], log.read_text()
        assert own.split("@")[0] not in log.read_text()  # its password is never printed
        eventually(lambda: _pings(own), 30, "the project's own Redis to answer")
        done = subprocess.run([sys.executable, str(ROOT / "submit.py"), "tokens", "create",
                               "found", "--json"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert redis.Redis.from_url(own).hexists("ocr:api:clients", "found")
        assert redis.Redis.from_url(foreign.url()).dbsize() == 0
    finally:
        os.killpg(run.pid, signal.SIGINT)
        run.wait(STOP_BOUND)
        foreign.stop()


def _pings(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.ConnectionError:
        return False


def test_the_api_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    """Redis and the HTTP API: Ctrl-C, and the api process exits 0 (not -15).

    uvicorn raises the signal it stopped on again once it has stopped gracefully: the
    process's own handler (scripts/run_api.py) makes that a clean exit.
    """
    port = free_port()
    run, log = supervise(tmp_path, "--procfile", str(ROOT / "Procfile"), "redis", "api",
                         API_PORT=str(port))
    ctrl_c_once(run, log, lambda: "Application startup complete" in log.read_text(), 120,
                "the API up")
    text = log.read_text()
    assert "api stopped (exit code 0)" in text, text
    assert "Traceback" not in text, text
