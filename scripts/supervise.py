#!/usr/bin/env python3
"""`make run`'s foreground process: start the Procfile's processes, stop them all.

    python scripts/supervise.py [--procfile Procfile] [--grace SECONDS] [NAME...]

Runs every Procfile line (or the NAMEd ones) with `/bin/sh -c "exec LINE"` (without
`exec` when the line has `;`, `&` or `|`), each in a session of its own, and prints
their output as `HH:MM:SS name | line`. It stops them all when it gets SIGINT (Ctrl-C),
SIGTERM or SIGHUP, or when one of them exits: SIGTERM to each process (a warm shutdown
for the worker), then, after `--grace` seconds or a second Ctrl-C, SIGKILL to each
one's whole process group (pool children included); the `redis` process last (below).

Redis: with a `redis` process and no REDIS_URL in the environment, the project's own
Redis runs on a loopback port of its own (the one it had last time when still free,
else a free one, never a server someone else runs) with a password (generated on the
first run, then kept), every process gets that URL, and it is written to
`var/redis-url` (mode 0600), where `submit.py` and `ocr_admin.py` find it without an
exported variable: a client without the password is refused. `var/starting` (make's
pid, which the Makefile writes before its installs) is removed once that Redis is up:
until then those commands wait for it. With REDIS_URL set,
that Redis is used as told (the `redis` process starts the project's own there only
when nothing answers on loopback). One line at start says which. On the stop the
`redis` process goes last, once the others (the workers' warm shutdown) are gone;
when they outlive the grace, Redis still gets its SIGTERM (a clean stop: its
append-only file written) before any SIGKILL is sent.

Once per checkout: the supervisor holds an exclusive lock on `var/run.lock` (flock)
while it runs, with its pid and the API's and Flower's URLs in it. A second one in
the same checkout reads them, says them in one line, exits 3 and changes nothing:
not `var/`, not the first one's Redis. The lock dies with its holder, so a `var/`
left by a crashed run is taken over. Before it, `make run`'s first step
(`--starting PID`) refuses the same way, and also while another make's pid in
`var/starting` is alive; otherwise it writes its own there. A busy API, Flower or
metrics port is named at start in one line with the setting that moves it
(`API_PORT`, `FLOWER_PORT`, `METRICS_PORT`), and nothing starts.

`make run`'s own stop: `kill -TERM` on make's pid stops every process too, and so does
`kill -INT` where make started with SIGINT at its default (make passes SIGTERM on, never
SIGINT: scripts/supervise_watch.py's `ParentWatch`). A make started with SIGINT ignored
(`make run &` in a script) never gets a SIGINT: one line at start says so, and names
`kill -TERM`. One line says when every process is ready, with the API's, Flower's and
the metrics' URLs.

Why not honcho: when `make run 2>&1 | tee log` is interrupted, Ctrl-C also kills
`tee`, honcho dies writing to the broken pipe and never stops its children. Here the
output is best effort: a closed stdout is dropped and the stop goes on.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO
from urllib.parse import urlsplit

# Run as a script (`python scripts/supervise.py`): the checkout's root, for its sibling.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scripts.supervise_watch import (  # noqa: E402
    LISTENERS,
    READY_LINES,
    SHOWN,
    ParentWatch,
    Readiness,
    url_of,
)


def read_procfile(path: Path) -> dict[str, str]:
    """`name: command` lines, in order (blank lines and `#` comments skipped)."""
    processes: dict[str, str] = {}
    for line in path.read_text().splitlines():
        name, sep, command = line.partition(":")
        if sep and name.strip() and not name.lstrip().startswith("#"):
            processes[name.strip()] = command.strip()
    return processes


RUN_URL_FILE = Path("var") / "redis-url"  # read by submit.py (tasks/cli/core.py)
# make's pid, written by `make run` before its installs: while it is there, submit.py
# waits for this run's Redis (tasks/cli/core.py); removed once Redis is up.
STARTING_FILE = Path("var") / "starting"
LAST = "redis"  # stopped after every other process
# Held (flock) by the running supervisor: its pid, then a line per URL it serves.
LOCK_FILE = Path("var") / "run.lock"
REFUSED = 3  # the exit code of a `make run` refused: one already runs, or a port is busy


class RunLock:
    """The checkout's one `make run`: an exclusive lock on LOCK_FILE, held while it runs.

    The kernel drops a flock when its holder dies, so a crashed run's file is stale
    and the next run takes it over. Only its holder writes the file.
    """

    def __init__(self, path: Path = LOCK_FILE) -> None:
        self.path = path
        self.fd: int | None = None
        self.stale = ""  # the pid a crashed run left in the file, once taken over

    def holder(self) -> str | None:
        """The line naming the live run that holds the lock; None: no run holds it."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return self._refusal(os.read(fd, 4096).decode(errors="replace"))
        finally:
            os.close(fd)  # also lets a shared lock go
        return None

    def take(self, urls: list[str]) -> str | None:
        """Take the lock and write this run's pid and URLs; the refusal line if held."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # never truncated unlocked
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            said = os.read(fd, 4096).decode(errors="replace")
            os.close(fd)
            return self._refusal(said)
        self.fd = fd
        self.stale = os.read(fd, 64).decode(errors="replace").partition("\n")[0]
        os.ftruncate(fd, 0)
        os.pwrite(fd, "\n".join([str(os.getpid()), *urls, ""]).encode(), 0)
        return None

    def release(self) -> None:
        """Empty the file (a clean stop leaves no pid to take over) and let the lock go."""
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            os.close(self.fd)
            self.fd = None

    @staticmethod
    def _refusal(said: str) -> str:
        pid, *urls = said.splitlines() or ["?"]
        serves = f"; {', '.join(urls)}" if urls else ""
        return (f"make run: already running in this checkout (supervisor pid {pid}{serves}); "
                f"nothing was started or changed. Stop it with `kill -TERM {pid}`, or run "
                "another from another checkout")


def starting(make_pid: int, lock: RunLock | None = None) -> str | None:
    """`make run`'s first step: write make's pid to var/starting unless a run is there.

    The refusal line when a supervisor holds the lock, or another live make is starting.
    """
    refusal = (lock or RunLock()).holder()
    if refusal is not None:
        return refusal
    try:
        other = int(STARTING_FILE.read_text().strip())
        if other != make_pid:
            os.kill(other, 0)
            return (f"make run: another `make run` (pid {other}) is starting in this "
                    "checkout; nothing was started or changed")
    except PermissionError:
        return f"make run: another `make run` (pid {other}) is starting in this checkout"
    except (OSError, ValueError):  # none, or a make that is gone
        pass
    STARTING_FILE.parent.mkdir(parents=True, exist_ok=True)
    STARTING_FILE.write_text(f"{make_pid}\n")
    return None


def busy_ports(names: list[str], env: dict[str, str]) -> list[str]:
    """A line per listening process whose port is taken: the setting that moves it."""
    lines = []
    for name in LISTENERS:
        if name not in names:
            continue
        address, port, _ = url_of(name, env)
        if not port_free(port, address):
            setting = f"{LISTENERS[name][0]}_PORT"
            lines.append(f"make run: {SHOWN[name]}'s port {address}:{port} is in use by "
                         f"another program; set {setting} to move it "
                         f"({setting}={port + 1} make run)")
    return lines


def port_free(port: int, address: str = "127.0.0.1") -> bool:
    """Whether nothing listens on address:`port` (a bind succeeds, as a server's would)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind
        try:
            probe.bind((address, port))
        except OSError:
            return False
    return True


def project_redis_url(url_file: Path = RUN_URL_FILE) -> str:
    """The project's own Redis: last run's port when still free, else a free one.

    Its password is the one last run's URL holds, or a new random one: generated once,
    kept in `url_file` (mode 0600) with the URL.
    """
    try:
        last = urlsplit(url_file.read_text().strip())
        port, password = last.port or 0, last.password or ""
    except (OSError, ValueError):
        port, password = 0, ""
    if not port or not port_free(port):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
    password = password or secrets.token_urlsafe(24)
    return f"redis://:{password}@127.0.0.1:{port}/0"


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path`, readable by this user alone (0600, also when it existed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text)


def shown_url(url: str) -> str:
    """A Redis URL as it may be printed: without its password."""
    parts = urlsplit(url)
    return url if not parts.password else url.replace(f":{parts.password}@", ":***@", 1)


def choose_redis(env: dict[str, str], names: list[str]) -> str:
    """Set REDIS_URL in `env` when the project's own Redis runs; the line that says so."""
    told = env.get("REDIS_URL")
    if told:
        shown = told.split("@")[-1]
        return (f"redis: REDIS_URL={shown} as told (the `redis` process starts the "
                "project's own there only if nothing answers)")
    if LAST not in names:
        return "redis: no `redis` process and no REDIS_URL: the processes use their default"
    url = project_redis_url()
    env["REDIS_URL"] = url
    write_private(RUN_URL_FILE, url + "\n")
    return (f"redis: the project's own at {shown_url(url)} (data in var/redis; its "
            f"password and URL in {RUN_URL_FILE}, mode 0600, where submit.py and "
            "ocr_admin.py find it; set REDIS_URL to use another)")


def shell_line(command: str) -> str:
    """`exec COMMAND` for a simple command, so SIGTERM reaches it and not a shell."""
    return command if any(c in command for c in ";&|\n") else f"exec {command}"


class Output:
    """Prefixed lines on stdout; once stdout is gone (EPIPE), lines are dropped."""

    def __init__(self, fd: int, width: int) -> None:
        self.fd = fd
        self.width = width
        self.lock = threading.Lock()
        self.closed = False

    def line(self, name: str, text: str) -> None:
        data = f"{time.strftime('%H:%M:%S')} {name.ljust(self.width)} | {text}\n".encode(
            errors="replace")
        with self.lock:
            if self.closed:
                return
            try:
                while data:
                    data = data[os.write(self.fd, data):]
            except OSError:  # EPIPE (the reader is gone), EIO (the terminal is gone)
                self.closed = True


@dataclass
class Child:
    name: str
    command: str
    proc: subprocess.Popen[bytes] = field(init=False)
    reader: threading.Thread = field(init=False)
    seen: set[str] = field(default_factory=set)  # its ready marks its output showed

    def start(self, output: Output, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            ["/bin/sh", "-c", shell_line(self.command)], env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        self.reader = threading.Thread(target=self._pump, args=(self.proc.stdout, output),
                                       daemon=True)
        self.reader.start()
        output.line("system", f"{self.name} started (pid {self.proc.pid})")

    def _pump(self, stream: IO[bytes] | None, output: Output) -> None:
        assert stream is not None
        marks = READY_LINES.get(self.name, ())
        for raw in iter(stream.readline, b""):
            text = raw.decode(errors="replace").rstrip("\r\n")
            self.seen.update(mark for mark in marks if mark in text)
            output.line(self.name, text)

    def group_alive(self) -> bool:
        """Whether any process of this child's group (it leads its session) is left."""
        try:
            os.killpg(self.proc.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def signal_leader(self, signum: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def kill_group(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Supervisor:
    """Starts the children and stops every one of them, whatever ends the run."""

    def __init__(self, processes: dict[str, str], grace: float,
                 lock: RunLock | None = None) -> None:
        self.lock = lock
        self.children = [Child(name, command) for name, command in processes.items()]
        self.grace = grace
        self.output = Output(sys.stdout.fileno(), max(len(n) for n in [*processes,
                                                                          "system"]))
        self.signals: list[int] = []
        self.stopped: set[str] = set()  # children whose group is gone, said once

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signals.append(signum)

    def run(self) -> int:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        parent = ParentWatch()
        if self.lock is not None and self.lock.stale:
            self.output.line("system", f"var/ taken over from a run that ended without "
                             f"stopping (supervisor pid {self.lock.stale})")
        self.output.line("system", choose_redis(env, [c.name for c in self.children]))
        if parent.ignores_sigint():
            self.output.line("system", f"make (pid {parent.pid}) ignores SIGINT, as a "
                             "script's `make run &` starts it: `kill -TERM "
                             f"{parent.pid}` stops every process")
        by_name = {c.name: c for c in self.children}
        ready = Readiness(list(by_name), env, lambda name, mark: mark in by_name[name].seen)
        if os.geteuid() == 0 and any(" worker" in c.command for c in self.children):
            self.output.line("system", "running as root: each Celery worker says so once "
                             "(SecurityWarning, below); they take JSON messages only, and "
                             "`make run` as another user has no such warning")
        code = 0
        try:
            for child in self.children:
                if self.signals or parent.stopped():
                    break
                child.start(self.output, env)
            while not self.signals:
                ended = next((c for c in self.children if c.proc.poll() is not None), None)
                if ended is not None:
                    code = ended.proc.returncode or 1
                    self.output.line("system", f"{ended.name} exited (code "
                                               f"{ended.proc.returncode}): stopping all")
                    break
                why = parent.stopped()
                if why is not None:
                    self.output.line("system", f"{why}: stopping all")
                    break
                line = ready.check()
                if line is not None:
                    self.output.line("system", line)
                if LAST not in by_name or LAST in ready.up or ready.done:
                    STARTING_FILE.unlink(missing_ok=True)  # its Redis is up (or not ours)
                time.sleep(0.1)
            else:
                name = signal.Signals(self.signals[0]).name
                self.output.line("system", f"{name}: stopping all")
        finally:
            STARTING_FILE.unlink(missing_ok=True)
            self.stop()
        return code

    def stop(self) -> None:
        """SIGTERM to each process, Redis last; SIGKILL only to what outlives its grace.

        The others first (the workers' warm shutdown needs Redis), then Redis. When
        they outlive the grace (or a second Ctrl-C comes), Redis still gets its SIGTERM
        (it writes its append-only file and exits) before any SIGKILL: then the groups
        left of the others are killed, and Redis only if it outlives a grace of its own.
        """
        started = [c for c in self.children if hasattr(c, "proc")]
        first = [c for c in started if c.name != LAST]
        last = [c for c in started if c.name == LAST]
        for child in first:
            child.signal_leader(signal.SIGTERM)
        cut_short = self._wait(first, len(self.signals))
        if last:
            self.output.line("system", f"SIGTERM to {LAST}, last")
        for child in last:
            child.signal_leader(signal.SIGTERM)
        if cut_short:
            self._kill(first)
        if self._wait(last, len(self.signals)):
            self._kill(last)
        for child in started:
            child.kill_group()  # a leader gone early: its group goes with it
            child.proc.wait()
            self._gone(child)

    def _wait(self, children: list[Child], asked: int) -> bool:
        """Wait for their groups to go; True when the grace ran out (or Ctrl-C again)."""
        deadline = time.monotonic() + self.grace
        while True:
            alive = []
            for child in children:
                if child.group_alive():
                    alive.append(child)
                else:
                    self._gone(child)
            if not alive:
                return False
            if time.monotonic() >= deadline or len(self.signals) > asked:
                return True
            for child in alive:  # a leader gone early: its group goes with it
                if child.proc.poll() is not None:
                    child.kill_group()
            time.sleep(0.1)

    def _gone(self, child: Child) -> None:
        """Say once that a child's process group is gone, with its exit code."""
        if child.name not in self.stopped:
            self.stopped.add(child.name)
            self.output.line("system", f"{child.name} stopped (exit code "
                                       f"{child.proc.wait()})")

    def _kill(self, children: list[Child]) -> None:
        """SIGKILL to each of their groups still there, saying which."""
        left = [c for c in children if c.group_alive()]
        if left:
            self.output.line("system", "killing what is left (SIGKILL): "
                             + ", ".join(c.name for c in left))
        for child in left:
            child.kill_group()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the Procfile's processes; Ctrl-C "
                                                 "stops every one of them.")
    parser.add_argument("names", nargs="*", metavar="NAME", help="only these processes")
    parser.add_argument("--procfile", type=Path, default=Path("Procfile"))
    parser.add_argument("--grace", type=float, default=10.0,
                        help="seconds between SIGTERM and SIGKILL (default 10)")
    parser.add_argument("--starting", type=int, metavar="PID",
                        help="only write make's PID to var/starting, unless a run is there")
    args = parser.parse_args(argv)
    if args.starting is not None:
        refusal = starting(args.starting)
        if refusal is not None:
            print(refusal, file=sys.stderr, flush=True)
            return REFUSED
        return 0
    processes = read_procfile(args.procfile)
    unknown = [n for n in args.names if n not in processes]
    if unknown:
        parser.error(f"not in {args.procfile}: {', '.join(unknown)}")
    if args.names:
        processes = {n: processes[n] for n in args.names}
    try:
        urls = [f"{SHOWN[n]} {url_of(n, os.environ)[2]}" for n in LISTENERS if n in processes]
    except ValueError as exc:
        print(f"make run: a *_PORT setting is not a port number: {exc}", file=sys.stderr)
        return 2
    lock = RunLock()
    refusal = lock.take(urls)
    if refusal is not None:
        print(refusal, file=sys.stderr, flush=True)
        return REFUSED
    try:
        busy = busy_ports(list(processes), dict(os.environ))
        if busy:
            STARTING_FILE.unlink(missing_ok=True)  # this run's own: it holds the lock
            print("\n".join(busy), file=sys.stderr, flush=True)
            return REFUSED
        return Supervisor(processes, args.grace, lock).run()
    finally:
        lock.release()


if __name__ == "__main__":
    sys.exit(main())
