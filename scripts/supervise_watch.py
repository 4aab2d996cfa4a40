"""What `make run`'s supervisor watches besides its children: make itself, and readiness.

Runs in `make run`'s foreground process (scripts/supervise.py imports it).

`ParentWatch`: `kill -INT <make's pid>` reaches make alone. GNU make, told to stop,
waits for its recipe's process to end and tells it nothing (SIGTERM it passes on;
SIGINT and SIGHUP it does not), so the supervisor watches its parent when that is
make: make's handler resets the signal it took to its default, which shows in
/proc/<pid>/status (`SigCgt` loses it), and a make that is gone leaves the supervisor
with another parent. Either stops the whole service, as Ctrl-C does. Where make
started with SIGINT ignored, as `make run &` in a script starts it (a non-interactive
shell's background jobs ignore SIGINT, and make keeps an ignored signal ignored), the
kernel drops a SIGINT sent to make before any process sees it: `ignores_sigint` tells
the supervisor, which says at start that `kill -TERM` is the way to stop it.

`Readiness`: one line once every process is up: Redis answering, each Celery worker's
`ready.`, the API, Flower and the metrics exporter accepting connections on their
ports, the rest once started; the line names the three URLs.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
MAKES = ("make", "gmake")


def signal_mask(pid: int, field: str = "SigCgt") -> int | None:
    """A signal mask of /proc/<pid>/status; None where /proc does not say.

    `SigCgt`: the signals `pid` handles; `SigIgn`: those it ignores.
    """
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1], 16)
    return None


def caught_signals(pid: int) -> int | None:
    """The mask of signals `pid` handles (`SigCgt`); None where /proc does not say."""
    return signal_mask(pid, "SigCgt")


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


class ParentWatch:
    """Whether the `make` that started this process was told to stop, or is gone."""

    def __init__(self) -> None:
        self.pid = os.getppid()
        self.is_make = _command(self.pid) in MAKES
        self.caught = caught_signals(self.pid) if self.is_make else None

    def ignores_sigint(self) -> bool:
        """Whether the make that started this process ignores SIGINT (`make run &`)."""
        ignored = signal_mask(self.pid, "SigIgn") if self.is_make else None
        return ignored is not None and bool(ignored & 1 << (signal.SIGINT - 1))

    def stopped(self) -> str | None:
        """Why make wants the service stopped ("make got SIGINT"); None: it does not."""
        if not self.is_make:
            return None
        if os.getppid() != self.pid:
            return "make is gone"
        now = caught_signals(self.pid)
        if self.caught is None or now is None:
            return None
        for signum in STOP_SIGNALS:
            bit = 1 << (signum - 1)
            if self.caught & bit and not now & bit:
                return f"make got {signal.Signals(signum).name}"
        return None


def accepts(address: str, port: int) -> bool:
    """Whether something accepts a TCP connection at address:port."""
    try:
        with socket.create_connection((address, port), timeout=0.5):
            return True
    except OSError:
        return False


# The listening processes: their address and port variables, defaults, and the path shown.
LISTENERS = {"api": ("API", 8000, "/docs"), "flower": ("FLOWER", 5555, ""),
             "metrics": ("METRICS", 9808, "/metrics")}
SHOWN = {"api": "API", "flower": "Flower", "metrics": "metrics"}
# Processes that say when they are ready, and how (a line of their output).
READY_LINES: dict[str, tuple[str, ...]] = {"worker": (" ready.",), "control": (" ready.",),
               "redis": ("Ready to accept connections", "using the server already")}


def url_of(name: str, env: Mapping[str, str]) -> tuple[str, int, str]:
    """The address, port and URL a listening process serves (its *_ADDRESS, *_PORT)."""
    prefix, default, path = LISTENERS[name]
    address = env.get(f"{prefix}_ADDRESS") or "127.0.0.1"
    port = int(env.get(f"{prefix}_PORT") or default)
    shown = "127.0.0.1" if address in ("0.0.0.0", "::", "") else address
    host = f"[{shown}]" if ":" in shown else shown
    return address, port, f"http://{host}:{port}{path}"


class Readiness:
    """The one `ready` line: said once, when every process is up."""

    def __init__(self, names: list[str], env: Mapping[str, str],
                 said: Callable[[str, str], bool]) -> None:
        self.names = names
        self.env = env
        self.said = said  # whether a process's output held a line with a text
        self.up: set[str] = set()
        self.done = False
        self.next_check = 0.0

    def check(self) -> str | None:
        """The ready line the first time every process is up; None otherwise."""
        if self.done or time.monotonic() < self.next_check:
            return None
        self.next_check = time.monotonic() + 0.5
        for name in self.names:
            if name not in self.up and self._up(name):
                self.up.add(name)
        if len(self.up) < len(self.names):
            return None
        self.done = True
        where = [f"{SHOWN[name]} {url_of(name, self.env)[2]}" for name in LISTENERS
                 if name in self.names]
        return "ready: every process is up" + (f"; {', '.join(where)}" if where else "")

    def _up(self, name: str) -> bool:
        if name in LISTENERS:
            address, port, _ = url_of(name, self.env)
            return accepts(address, port)
        marks = READY_LINES.get(name)
        if marks is None:
            return True  # started: it says nothing more when it is ready
        return any(self.said(name, mark) for mark in marks)
