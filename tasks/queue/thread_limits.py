"""A thread-pool worker's limits: a page's whole time, and recycling by memory.

Runs in a vlm-api worker's process (its thread pool: tasks/queue/celery_config.py).
Celery enforces no time limit in a thread pool, and billiard's recycling of a child by
memory has no child to recycle. So, in such a worker:

- `bounded(seconds, read)`: a page's whole read (rendering, the inference server's
  answer, a tesseract fallback) runs in a helper thread, and the task waits at most
  `seconds` for it; past them it raises `SoftTimeLimitExceeded`, as a prefork child's
  soft limit does, and the page is recorded failed (`timeout`). A thread cannot be
  stopped: the read runs on to its end and its result is dropped. Such reads still
  running are counted (`runaways`).
- `after_task(...)`: the process's RSS growth since its engine was loaded against
  OCR_MAX_MEMORY_PER_CHILD_MB, and the runaway reads against the pool's size; past
  either, the worker is recycled: a warm shutdown (running tasks finish, prefetched
  messages go back to the broker), then the process runs its own command again
  (`os.execv`), fresh, as billiard replaces a prefork child.
"""

from __future__ import annotations

import atexit
import contextvars
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import TypeVar

from billiard.compat import mem_rss
from billiard.exceptions import SoftTimeLimitExceeded

log = logging.getLogger(__name__)
T = TypeVar("T")


class _Limits:
    """The process's state: its RSS baseline (KB), reads running past their limit."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.baseline_kb = 0
        self.runaways = 0
        self.recycling = False


_limits = _Limits()


def rss_kb() -> int:
    """The process's resident memory now, in KB.

    From /proc where there is one: billiard's `mem_rss` is the *peak* (ru_maxrss), which
    a long-lived process's start-up may have set above what it holds later, hiding its
    growth.
    """
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return int(mem_rss())
    return pages * os.sysconf("SC_PAGE_SIZE") // 1024


def set_baseline() -> None:
    """The RSS the memory limit counts from: the worker's, its engine loaded."""
    _limits.baseline_kb = rss_kb()


def runaways() -> int:
    """Reads that ran past their limit and still run."""
    return _limits.runaways


def bounded(seconds: float, read: Callable[[], T]) -> T:
    """`read()`'s value, or `SoftTimeLimitExceeded` once `seconds` have passed."""
    outcome: list[tuple[bool, object]] = []
    done = threading.Event()
    abandoned = threading.Event()

    def run() -> None:
        try:
            outcome.append((True, read()))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting task
            outcome.append((False, exc))
        finally:
            with _limits.lock:
                done.set()
                if abandoned.is_set():
                    _limits.runaways -= 1

    # In the task's context: the read's spans belong to the task's trace (tasks/tracing.py).
    threading.Thread(target=contextvars.copy_context().run, args=(run,), name="page-read",
                     daemon=True).start()
    if not done.wait(seconds):
        with _limits.lock:
            if not done.is_set():
                abandoned.set()
                _limits.runaways += 1
        if abandoned.is_set():
            raise SoftTimeLimitExceeded(f"the read ran past {seconds:g} s")
    ok, value = outcome[0]
    if ok:
        return value  # type: ignore[return-value]
    assert isinstance(value, BaseException)
    raise value


def after_task(max_memory_mb: int, most_runaways: int) -> None:
    """Recycle the worker when it grew past its memory limit or too many reads run away."""
    if _limits.recycling:
        return
    reason = ""
    grown_kb = rss_kb() - _limits.baseline_kb
    if max_memory_mb > 0 and _limits.baseline_kb > 0 and grown_kb > max_memory_mb * 1024:
        reason = (f"it grew by {grown_kb // 1024} MB since its engine was loaded, past "
                  f"OCR_MAX_MEMORY_PER_CHILD_MB={max_memory_mb}")
    elif _limits.runaways >= most_runaways > 0:
        reason = f"{_limits.runaways} page reads ran past their time limit and still run"
    if reason:
        recycle(reason)


def recycle(reason: str) -> None:
    """A warm shutdown, then this process runs its own command again (once)."""
    _limits.recycling = True
    argv = [sys.executable, *sys.argv]
    log.warning("worker process %d recycled: %s; a warm shutdown, then %s again",
                os.getpid(), reason, " ".join(sys.argv[:3]))
    atexit.register(os.execv, sys.executable, argv)
    from celery.worker import state

    state.should_stop = 0  # EX_OK: the consumer's loop stops, running tasks finish
