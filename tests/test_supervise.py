"""`make run` stops cleanly: Ctrl-C ends every process it started, also through `tee`.

The real Procfile (redis, worker, beat, Flower, metrics) under scripts/supervise.py, as
`make run` starts it, its output piped to `tee` in a session of its own; SIGINT goes
to that foreground process group as a terminal's Ctrl-C would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from tests.conftest import ROOT, VENV_BIN, free_port

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
               METRICS_PORT=str(free_port()), WORKER_NAME=f"stop-{uuid.uuid4().hex[:6]}",
               OCR_CONCURRENCY="1", OCR_ENGINE="tesseract")
    run = f"{sys.executable} {ROOT}/scripts/supervise.py --procfile {ROOT}/Procfile"
    # SIGINT as in a terminal's foreground job, even when pytest runs with it ignored
    # (started in the background): tee then dies of it and the pipe breaks.
    shell = subprocess.Popen(["bash", "-c", f"{run} 2>&1 | tee {log}"], cwd=tmp_path,
                             env=env, stdout=subprocess.DEVNULL, start_new_session=True,
                             preexec_fn=_default_sigint)
    try:
        deadline = time.monotonic() + 180
        while " ready." not in (log.read_text() if log.exists() else ""):
            assert shell.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        time.sleep(2)  # Flower and the exporter are up too
        text = log.read_text()
        for name in procfile_names():
            assert f" {name} started (pid " in text, name
        session = psutil.Process(shell.pid)
        procs = [session, *session.children(recursive=True)]
        names = {p.name() for p in procs}
        assert {"tee", "redis-server"} <= names, names
        assert len(procs) >= 9, [p.cmdline() for p in procs]  # + the worker's pool child
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
    assert time.monotonic() - start < 30
    assert not [p for p in psutil.process_iter(["cmdline", "create_time"])
                if p.info["cmdline"] == ["sleep", "300"]
                and p.info["create_time"] >= time.time() - (time.monotonic() - start) - 1]
