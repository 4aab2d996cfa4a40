"""`make run` as a script or a service manager runs it: detached, stopped through make's pid.

The real Makefile's `run` target in a checkout of links (its var/ of its own), started
in a session of its own with SIGINT at its default (as a service manager starts it),
with a few of the Procfile's processes (redis, worker, flower, metrics, api). The
recipe's install steps are taken as done (`-o`: the tests' own set-up installed them).
It says once that it is ready, with the three URLs; its Redis has a password kept in
var/redis-url (0600) and refuses a client without it; `kill -INT` or `kill -TERM` on
make's own pid ends every process it started. Started as a script's `make run &`
(SIGINT ignored), it says so and names `kill -TERM`, which ends every process. A bad
setting ends it with one clear line, no traceback.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
from pathlib import Path

import httpx
import psutil
import pytest
import redis

from tests.harness import ROOT, VENV_BIN, eventually, free_port

pytestmark = pytest.mark.slow
STOP_BOUND = 60  # seconds: the supervisor's 10 s grace, on a loaded machine
PROCESSES = "redis worker flower metrics api"
READY = "ready: every process is up"


def checkout_of_links(base: Path) -> Path:
    checkout = base / "checkout"
    checkout.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in ("var", ".git", ".pytest_cache", ".mypy_cache", ".ruff_cache"):
            (checkout / entry.name).symlink_to(entry)
    return checkout


def run_env() -> dict[str, str]:
    """The environment of a user's shell: no settings of the tests' own, fresh ports."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OCR_", "REDIS_", "API_", "FLOWER_", "METRICS_", "MAKE"))}
    env.update(PATH=f"{VENV_BIN}{os.pathsep}{env['PATH']}", OCR_CONCURRENCY="1",
               **{name: str(free_port()) for name in ("API_PORT", "FLOWER_PORT",
                                                      "METRICS_PORT")})
    return env


MAKE_RUN = ["make", "-o", ".venv/.runtime", "-o", ".venv/.rapidocr", "run"]


def start_run(checkout: Path, env: dict[str, str], log: Path,
              processes: str) -> subprocess.Popen[bytes]:
    """`make run PROCESSES=...` in its own group, its output in `log`."""
    with log.open("wb") as out:
        return subprocess.Popen([*MAKE_RUN, f"PROCESSES={processes}"], cwd=checkout,
                                env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=_default_sigint)


def wait_ready(make: subprocess.Popen[bytes], log: Path) -> None:
    """Until `make run` prints its ready line; fails at once when make exits first."""

    def ready() -> bool:
        assert make.poll() is None, log.read_text()[-3000:]
        return READY in log.read_text()

    eventually(ready, 300, lambda: "the ready line:\n" + log.read_text()[-3000:],
               interval=0.5)


def kill_run(make: subprocess.Popen[bytes], procs: list[psutil.Process]) -> None:
    """Kill what a test's `make run` left: the processes seen under it, then make's group."""
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    if make.poll() is None:
        os.killpg(make.pid, signal.SIGKILL)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
def test_a_signal_to_makes_pid_stops_every_process(tmp_path: Path, signum: int) -> None:
    checkout = checkout_of_links(tmp_path)
    ports = {name: str(free_port()) for name in ("API_PORT", "FLOWER_PORT", "METRICS_PORT")}
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OCR_", "REDIS_", "API_", "FLOWER_", "METRICS_", "MAKE"))}
    env.update(PATH=f"{VENV_BIN}{os.pathsep}{env['PATH']}", **ports, OCR_CONCURRENCY="1")
    log = tmp_path / "make-run.log"
    make = start_run(checkout, env, log, PROCESSES)
    procs: list[psutil.Process] = []
    try:
        wait_ready(make, log)
        lines = [line for line in log.read_text().splitlines() if READY in line]
        assert len(lines) == 1, lines
        for url in (f"API http://127.0.0.1:{ports['API_PORT']}/docs",
                    f"Flower http://127.0.0.1:{ports['FLOWER_PORT']}",
                    f"metrics http://127.0.0.1:{ports['METRICS_PORT']}/metrics"):
            assert url in lines[0], lines[0]
        # The project's own Redis: its password kept for this user alone, and needed.
        url_file = checkout / "var" / "redis-url"
        # make's pid was kept in var/starting while it started; gone once Redis is up
        assert not (checkout / "var" / "starting").exists()
        assert stat.S_IMODE(url_file.stat().st_mode) == 0o600
        url = url_file.read_text().strip()
        port = redis.Redis.from_url(url).connection_pool.connection_kwargs["port"]
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=port, socket_timeout=5).ping()
        assert redis.Redis.from_url(url).ping()
        assert url.split("@")[0] not in log.read_text()  # the password is never printed
        top = psutil.Process(make.pid)
        procs = [top, *top.children(recursive=True)]
        names = {p.name() for p in procs}
        assert "redis-server" in names and len(procs) >= 7, [p.cmdline() for p in procs]
        os.kill(make.pid, signum)  # make's own pid, not its group
        _, alive = psutil.wait_procs(procs, timeout=STOP_BOUND)
        assert not alive, ([p.cmdline() for p in alive], log.read_text()[-3000:])
    finally:
        kill_run(make, procs)


def test_a_bad_setting_ends_make_run_with_one_clear_line(tmp_path: Path) -> None:
    checkout = checkout_of_links(tmp_path)
    done = subprocess.run([*MAKE_RUN, "PROCESSES=redis"], cwd=checkout,
                          env={**run_env(), "OCR_CONCURRENCY": "two"},
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode != 0, done.stdout
    said = done.stdout + done.stderr
    assert "Traceback" not in said, said
    assert ("settings: OCR_CONCURRENCY='two': invalid literal for int() with base 10: "
            "'two' (docs/settings.md)") in done.stderr.splitlines(), said


def test_make_run_started_by_a_script_says_sigterm_stops_it(tmp_path: Path) -> None:
    """A non-interactive shell's `make run &`: make ignores SIGINT; `kill -TERM` stops all."""
    checkout = checkout_of_links(tmp_path)
    log = tmp_path / "make-run.log"
    started = subprocess.run(
        ["sh", "-c", f'{" ".join(MAKE_RUN)} PROCESSES=redis >"$1" 2>&1 & echo $!', "sh",
         str(log)], cwd=checkout, env=run_env(), stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=60, start_new_session=True,
        preexec_fn=_default_sigint)
    pid = int(started.stdout)
    procs = [psutil.Process(pid)]
    try:
        said = f"make (pid {pid}) ignores SIGINT, as a script's `make run &` starts it: " \
            f"`kill -TERM {pid}` stops every process"
        eventually(lambda: READY in log.read_text(), 300,
                   lambda: "the ready line:\n" + log.read_text()[-3000:], interval=0.5)
        assert said in log.read_text(), log.read_text()[-3000:]
        top = psutil.Process(pid)
        procs = [top, *top.children(recursive=True)]
        assert "redis-server" in {p.name() for p in procs}, [p.cmdline() for p in procs]
        os.kill(pid, signal.SIGTERM)
        _, alive = psutil.wait_procs(procs, timeout=STOP_BOUND)
        assert not alive, ([p.cmdline() for p in alive], log.read_text()[-3000:])
    finally:
        for proc in procs:
            try:
                procs += proc.children(recursive=True)
                proc.kill()
            except psutil.NoSuchProcess:
                pass


def var_files(checkout: Path) -> dict[str, tuple[bytes, int]]:
    """What a `make run` could write in var/: each file's bytes and mtime.

    Left out: what the first service's own processes keep writing (Redis's append-only
    files, Flower's state).
    """
    var = checkout / "var"
    return {str(path.relative_to(var)): (path.read_bytes(), path.stat().st_mtime_ns)
            for path in sorted(var.rglob("*")) if path.is_file()
            and "appendonlydir" not in path.parts and not path.name.startswith("flower.db")}


def dead_pid() -> int:
    done = subprocess.Popen(["true"])
    done.wait()
    return done.pid


def test_a_second_make_run_leaves_the_first_serving(tmp_path: Path) -> None:
    """Once per checkout: a second run names the first and changes nothing.

    The first takes over the var/ a crashed run left (its pid dead).
    """
    checkout = checkout_of_links(tmp_path)
    var = checkout / "var"
    var.mkdir()
    crashed = dead_pid()
    (var / "run.lock").write_text(f"{crashed}\nAPI http://127.0.0.1:1/docs\n")
    (var / "starting").write_text(f"{dead_pid()}\n")
    env = run_env()
    log = tmp_path / "make-run.log"
    make = start_run(checkout, env, log, "redis flower api")
    procs: list[psutil.Process] = []
    try:
        wait_ready(make, log)
        assert (f"var/ taken over from a run that ended without stopping (supervisor pid "
                f"{crashed})") in log.read_text()
        top = psutil.Process(make.pid)
        procs = [top, *top.children(recursive=True)]
        supervisor = next(p for p in procs if "scripts/supervise.py" in p.cmdline())
        redis_servers = [p for p in procs if p.name() == "redis-server"]
        assert len(redis_servers) == 1, [p.cmdline() for p in procs]
        before = var_files(checkout)
        assert "redis-url" in before and "run.lock" in before, sorted(before)
        api = f"API http://127.0.0.1:{env['API_PORT']}/docs"
        flower = f"Flower http://127.0.0.1:{env['FLOWER_PORT']}"
        # make run again, as a user would in another shell (other ports too), and the
        # supervisor alone (as if it had passed make's first step in a race)
        for second in ([*MAKE_RUN, "PROCESSES=redis flower api"],
                       [str(VENV_BIN / "python"), "scripts/supervise.py", "redis", "api"]):
            for second_env in (env, run_env()):
                done = subprocess.run(second, cwd=checkout, env=second_env, timeout=120,
                                      stdin=subprocess.DEVNULL, capture_output=True,
                                      text=True)
                said = done.stdout + done.stderr
                assert done.returncode != 0, said
                assert "Traceback" not in said, said
                line = next((ln for ln in said.splitlines() if "already running" in ln), said)
                assert f"supervisor pid {supervisor.pid};" in line, said
                assert api in line and flower in line, said
                assert var_files(checkout) == before
        # the first serves on: its one Redis at the URL it wrote, its API
        assert [p for p in top.children(recursive=True) if p.name() == "redis-server"] \
            == redis_servers
        assert redis.Redis.from_url((var / "redis-url").read_text().strip()).ping()
        assert httpx.get(f"http://127.0.0.1:{env['API_PORT']}/docs", timeout=30) \
            .status_code == 200
        os.kill(make.pid, signal.SIGTERM)
        _, alive = psutil.wait_procs(procs, timeout=STOP_BOUND)
        assert not alive, ([p.cmdline() for p in alive], log.read_text()[-3000:])
        # a clean stop leaves no pid to take over
        assert (var / "run.lock").read_text() == ""
    finally:
        kill_run(make, procs)


def test_make_run_waits_for_no_other_starting_make(tmp_path: Path) -> None:
    """While another make of this checkout is starting (var/starting names it, alive)."""
    checkout = checkout_of_links(tmp_path)
    (checkout / "var").mkdir()
    (checkout / "var" / "starting").write_text(f"{os.getpid()}\n")
    done = subprocess.run([*MAKE_RUN, "PROCESSES=redis"], cwd=checkout, env=run_env(),
                          timeout=120, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True)
    said = done.stdout + done.stderr
    assert done.returncode != 0, said
    assert (f"make run: another `make run` (pid {os.getpid()}) is starting in this "
            "checkout; nothing was started or changed") in said.splitlines(), said
    assert sorted(p.name for p in (checkout / "var").iterdir()) == ["starting"]
    assert (checkout / "var" / "starting").read_text() == f"{os.getpid()}\n"


@pytest.mark.parametrize("name", ["API", "FLOWER", "METRICS"])
def test_a_busy_port_is_named_with_the_setting_that_moves_it(tmp_path: Path,
                                                             name: str) -> None:
    checkout = checkout_of_links(tmp_path)
    env = run_env()
    port = int(env[f"{name}_PORT"])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        done = subprocess.run([*MAKE_RUN, f"PROCESSES={PROCESSES}"], cwd=checkout, env=env,
                              timeout=120, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True)
    said = done.stdout + done.stderr
    assert done.returncode != 0, said
    assert "Traceback" not in said, said
    lines = [line for line in said.splitlines() if "in use" in line]
    assert len(lines) == 1, said
    assert f"127.0.0.1:{port} is in use by another program; set {name}_PORT to move it" \
        in lines[0], said
    assert not (checkout / "var" / "redis-url").exists()  # nothing started


def test_the_metrics_exporter_names_its_busy_port() -> None:
    """Started by another runner than `make run`: one line, no traceback."""
    port = free_port()
    env = {**run_env(), "METRICS_PORT": str(port), "REDIS_URL": "redis://127.0.0.1:1/0"}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        done = subprocess.run([str(VENV_BIN / "python"), "-m", "scripts.metrics_exporter"],
                              cwd=ROOT, env=env, timeout=120, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True)
    said = done.stdout + done.stderr
    assert done.returncode != 0, said
    assert "Traceback" not in said, said
    assert f"metrics: cannot listen on 127.0.0.1:{port} (Address already in use); set " \
        "METRICS_PORT (or METRICS_ADDRESS) to move it" in said.splitlines(), said
