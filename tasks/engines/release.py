"""Engine release in worker pool children, and the registration of their loaded models.

Runs in each pool child; the worker parent only forwards unload requests
(`tasks/queue/control.py`).

How a release reaches the engines. The engines live in the pool children and are used
by each child's main thread, but remote-control commands run in the worker parent, and
an idle child sits blocked in billiard's loop waiting for its next task. So a release is
a signal, `RELEASE_SIGNAL` (SIGURG), handled in the child's main thread:

- `celery control unload_model`: the parent sends it to every pool child;
- idle release: the child's keeper thread sends it to its own main thread once
  OCR_IDLE_UNLOAD_SECONDS have passed since the last task.

The handler closes the engines at once when no task runs (it does no Redis or other I/O,
only logging), or, when a task runs, leaves the release to `task_postrun`. Engines
reload on the next task (`ResidentEngines.get`). SIGURG because its default action is to
ignore it: a child that has not installed the handler yet is not killed by a request;
billiard uses SIGUSR1 (soft time limit) and resets SIGUSR2 to its terminate handler in
its threaded mode. The handler interrupts system calls (Python's default, no
SA_RESTART): an idle child blocks in a read of its task pipe that would otherwise only
return with the next task. Python code retries interrupted calls (PEP 475), as it does
for billiard's soft-time-limit signal. The keeper thread blocks the signal, so it is
always delivered to the main thread.

Heartbeat. The keeper thread (a daemon thread started in `worker_process_init`, after
the fork, so no thread crosses a fork) writes a `loaded` registration per model-directory
entry the child holds (tasks/models/registry.py) every OCR_MODEL_HEARTBEAT_SECONDS, so
an idle child stays registered while its model is loaded; the main thread registers a
model itself before loading it. It also writes a `configured` registration of the
child's OCR_MODEL whether or not it is loaded, so an idle release never exposes the
configured model to a prune; that one outlives the child by up to 3 beats. The
thread wakes every 0.25 s to check for idleness and for a release to deregister.
Registrations expire after 3 missed beats when a child dies, and are deleted when it
unloads or exits.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis

from tasks.models.inventory import Holder
from tasks.models.locate import locate

if TYPE_CHECKING:
    from tasks.engines.resident import ResidentEngines
    from tasks.models.registry import ModelRegistry

log = logging.getLogger(__name__)

RELEASE_SIGNAL = signal.SIGURG
# The worker's node name, set in the parent by `celeryd_after_setup`; forked children
# inherit it (children started by spawn report their host name instead).
node_name = ""


def signal_children(pids: Iterable[int]) -> list[int]:
    """Ask pool children to release their engines (worker parent); returns those asked."""
    asked = []
    for pid in pids:
        try:
            os.kill(pid, RELEASE_SIGNAL)
        except ProcessLookupError:
            continue  # the child exited meanwhile
        asked.append(pid)
    return asked


class ChildKeeper:
    """Release and heartbeat of one pool child's engines (see the module docstring)."""

    def __init__(self, models: ModelRegistry | None, model_dir: Path,
                 idle_seconds: float, heartbeat_seconds: float,
                 configured_model: str = "") -> None:
        self._models = models
        self._model_dir = model_dir
        self._configured_model = configured_model
        self._paths: dict[str, str] = {}
        self._idle_seconds = idle_seconds
        self._heartbeat = heartbeat_seconds
        self._tick = min(heartbeat_seconds, 0.25)
        self._engines: ResidentEngines | None = None
        self._busy = True  # until start(): the engine is loading in worker_process_init
        self._pending: str | None = None
        self._idle_asked = False
        self._last_active = time.monotonic()
        self._registered: set[str] = set()
        self._changed = False  # set by a release; the thread then updates Redis
        self._sync_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._main_ident = threading.main_thread().ident
        self._pid = os.getpid()
        self._host = socket.gethostname()

    # --- main thread -------------------------------------------------------------

    def install(self) -> None:
        """Install the release signal handler (main thread, before the engine loads)."""
        signal.signal(RELEASE_SIGNAL, self._on_signal)

    def on_load(self, engines: ResidentEngines) -> None:
        """Before and after each load (main thread): registrations follow at once."""
        self._engines = engines
        self.sync()

    def start(self, engines: ResidentEngines) -> None:
        """Begin serving: apply a release asked for during the load, start the thread."""
        self._engines = engines
        self._last_active = time.monotonic()
        self.task_finished()
        self._thread = threading.Thread(target=self._run, name="ocr-model-keeper",
                                        daemon=True)
        self._thread.start()

    def task_started(self) -> None:
        self._busy = True

    def task_finished(self) -> None:
        """After a task (task_postrun): a release asked for during it happens now."""
        self._last_active = time.monotonic()
        self._busy = False
        reason, self._pending = self._pending, None
        if reason is not None:
            self._release(reason)

    def _on_signal(self, signum: int, frame: Any) -> None:
        reason = "idle" if self._idle_asked else "unload_model"
        self._idle_asked = False
        if not self._busy:
            self._release(reason)
        elif reason != "idle":  # a running task means the engine is not idle
            self._pending = reason

    def _release(self, reason: str) -> None:
        if self._engines is None:
            return
        names = self._engines.unload()
        if names:
            log.info("engines released (%s) in pid %d: %s", reason, os.getpid(),
                     ", ".join(names))
        # A flag, not an Event: this may run in the signal handler, which must not take
        # a lock the interrupted code may hold. The thread sees it within a tick.
        self._changed = True

    def sync(self) -> None:
        """Make this child's registrations match its loaded models (any thread)."""
        if self._models is None or self._engines is None:
            return
        with self._sync_lock:
            holders = [self._holder(engine, entry)
                       for engine, entry in self._engines.model_entries().items()]
            configured = [self._holder(self._engines.primary, self._configured_model)] \
                if self._configured_model else []
            try:
                keys = self._models.register(holders) | \
                    self._models.register_configured(configured)
                self._models.unregister(self._registered - keys)
            except redis.RedisError as exc:
                log.warning("could not update loaded-model registrations (pid %d): %s",
                            self._pid, type(exc).__name__)
                return
            self._registered = keys

    def record_use(self) -> None:
        """Record the models the finished task used (task_postrun)."""
        if self._models is None or self._engines is None:
            return
        used = self._engines.take_used_models()
        try:
            self._models.record_use(used)
        except redis.RedisError as exc:
            log.warning("could not record model use (pid %d): %s", self._pid,
                        type(exc).__name__)

    def stop(self) -> None:
        """At child shutdown, after the engines closed: stop the thread, deregister.

        The loaded-model registrations are deleted; the configured-model one is renewed
        and left to expire (3 beats), so a recycled child leaves no unprotected gap
        before its successor registers.
        """
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.sync()

    def _holder(self, engine: str, entry: str) -> Holder:
        if entry not in self._paths:  # what a load of it reads: found once per child
            found = locate(self._model_dir, entry)
            self._paths[entry] = str(found) if found is not None else ""
        path = self._paths[entry]
        return Holder(model=entry, path=path, worker=node_name,
                      host=node_name.partition("@")[2] or self._host,
                      pid=self._pid, engine=engine, since=time.time())

    # --- keeper thread -------------------------------------------------------------

    def _run(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {RELEASE_SIGNAL})
        next_beat = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if self._idle_due(now):
                self._idle_asked = True
                signal.pthread_kill(self._main_ident or 0, RELEASE_SIGNAL)
            if now >= next_beat or self._changed:
                self._changed = False
                self.sync()
                next_beat = now + self._heartbeat
            self._wake.wait(self._tick)  # set only by stop()

    def _idle_due(self, now: float) -> bool:
        return (bool(self._idle_seconds) and not self._busy and not self._idle_asked
                and self._engines is not None and bool(self._engines.engines)
                and now - self._last_active >= self._idle_seconds)
